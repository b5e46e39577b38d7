//! The request head: what nginx parsed, encoded for the pool, and the request's context.

use super::*;

/// The request's headers, in order, repeated ones included (borrowed from the request pool).
pub(super) fn request_headers(req: &Request) -> Vec<(&[u8], &[u8])> {
    req.headers_in_iterator()
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect()
}

pub(super) fn ngx_bytes(s: &ngx_str_t) -> &[u8] {
    if s.data.is_null() || s.len == 0 {
        return &[];
    }
    // SAFETY: an ngx_str_t with non-null data points at `len` readable bytes.
    unsafe { std::slice::from_raw_parts(s.data, s.len) }
}

/// Room for a local address as text: nginx's `NGX_SOCKADDR_STRLEN` (`unix:` and a 108-byte
/// path, the longest; an IPv6 address without its port is shorter).
const SOCKADDR_STRLEN: usize = 5 + 108;

/// What the pool worker cannot know of request `r`: `$server_name`, `$server_port`,
/// `$server_addr`, `$scheme` and `$document_uri`, read from nginx's structures as those
/// variables do.
pub(super) fn server_side<'a>(r: *mut ngx_http_request_t, req: &'a Request) -> ServerSide<'a> {
    let name = ngx::http::NgxHttpCoreModule::server_conf(req)
        .map_or(&[][..], |cscf| ngx_bytes(&cscf.server_name));
    // SAFETY: a live request and its connection; nginx fills the local address on demand (a
    // getsockname only for a wildcard listener, then cached on the connection). The text is
    // in the request's pool, which outlives `'a`.
    let (port, addr, https, document_uri) = unsafe {
        let c = (*r).connection;
        // The address as text, in the request's pool (it is encoded before the pool goes): as
        // `$server_addr` makes it.
        let mut text = ngx_str_t {
            len: SOCKADDR_STRLEN,
            data: nginx_sys::ngx_pnalloc((*r).pool, SOCKADDR_STRLEN) as *mut u8,
        };
        let (port, addr) = if !text.data.is_null()
            && nginx_sys::ngx_connection_local_sockaddr(c, &mut text, 0)
                == nginx_sys::NGX_OK as ngx_int_t
        {
            (
                nginx_sys::ngx_inet_get_port((*c).local_sockaddr),
                // The request's pool holds it as long as the request (`'a`); nginx wrote
                // `text.len` bytes of it.
                std::slice::from_raw_parts(text.data, text.len.min(SOCKADDR_STRLEN)),
            )
        } else {
            (0, &[][..])
        };
        #[cfg(ngx_feature = "http_ssl")]
        let https = !(*c).ssl.is_null();
        #[cfg(not(ngx_feature = "http_ssl"))]
        let https = false;
        (port, addr, https, ngx_bytes(&(*r).uri))
    };
    ServerSide {
        name,
        port,
        addr,
        https,
        document_uri,
    }
}

/// Encodes the request head and makes the request's context. `Err(status)` to answer at once.
pub(super) fn begin(r: *mut ngx_http_request_t) -> Result<CtxRef, Refused> {
    let i = pool_index(r).ok_or(Failure::Internal)?;
    match runtime::ensure_attached(i) {
        State::Attached => {}
        State::Pending => return Err(Refused::Wait(i)),
        State::Down => return Err(Refused::Failed(Failure::Unavailable, unattached(i))),
    }
    let (region, timeout_ms, queue_timeout_ms) = with_pool(i, |p| {
        let region = p.attached.as_ref()?.region.clone();
        Some((region, p.timeout_ms, p.queue_timeout_ms))
    })
    .ok()
    .flatten()
    .ok_or_else(|| Refused::Failed(Failure::Unavailable, unattached(i)))?;
    // SAFETY: `r` is a live request nginx handed us.
    let req = unsafe { Request::from_ngx_http_request(r) };
    let loc = Module::location_conf(req).ok_or(Failure::Internal)?;
    let buffering = loc.effective.ok_or(Failure::Internal)?;
    let own_timeout = loc.timeout_ms;
    let timeout_ms = own_timeout.unwrap_or(timeout_ms);
    // SAFETY: fields of a live request.
    let (method, uri, version, client, client_port) = unsafe {
        let v = (*r).http_version;
        let c = (*r).connection;
        (
            ngx_bytes(&(*r).method_name),
            ngx_bytes(&(*r).unparsed_uri),
            ((v / 1000) as u8, (v % 1000) as u8),
            ngx_bytes(&(*c).addr_text),
            nginx_sys::ngx_inet_get_port((*c).sockaddr),
        )
    };
    let configured = loc.params.as_deref().unwrap_or_default();
    let mut headers = request_headers(req);
    // A client's header gives way to a `pool_param HTTP_...` of its name; most locations have
    // none, and skip the look (two hundred instructions a request, in callgrind).
    if configured.iter().any(|p| p.name.starts_with(b"HTTP_")) {
        headers.retain(|(name, _)| !crate::params::replaced_by(configured, name));
    }
    let params = crate::params::evaluate(req, configured);
    let server = server_side(r, req);
    // SAFETY: reading flags and the parsed length of a live request.
    let (arriving, announced) =
        unsafe { ((*r).reading_body() != 0, (*r).headers_in.content_length_n) };
    let tunnel = tunnel::wants_tunnel(r, i, req);
    if tunnel {
        let (open, most) = (slot::open_tunnels(&region), region.geometry().max_tunnels());
        if open >= most {
            return Err(Refused::Failed(
                Failure::Full,
                format!(
                    "pool \"{}\": {open} WebSockets are open, the most its arena carries (a third of it); 503 (a larger arena= carries more)",
                    pool_name(i)
                ),
            ));
        }
    }
    let parts = body_parts(r, arriving);
    let body: u64 = if tunnel {
        ngx_pool_channel::message::OPEN_BODY
    } else if arriving {
        announced.max(0) as u64
    } else {
        parts.iter().map(BodyPart::len).sum()
    };
    let head = RequestHead {
        method,
        uri,
        version,
        client,
        client_port,
        server,
        headers: &headers,
        params: &params,
    };
    // Sized for the whole head, so encoding never grows it.
    let pairs = |l: &[(&[u8], &[u8])]| l.iter().map(|(n, v)| 6 + n.len() + v.len()).sum::<usize>();
    let mut bytes = Vec::with_capacity(
        64 + method.len()
            + uri.len()
            + client.len()
            + server.name.len()
            + server.document_uri.len()
            + pairs(&headers)
            + pairs(&params),
    );
    if let Err(e) = encode_request_head(&mut bytes, &head, body) {
        log_request(r, &format!("pool \"{}\": request head: {e}", pool_name(i)));
        return Err(Failure::BadHead.into());
    }
    if bytes.len() as u64 > region.geometry().message_limit() {
        log_request(
            r,
            &format!(
                "pool \"{}\": request head of {} bytes exceeds the pool's limit (a quarter of its arena)",
                pool_name(i),
                bytes.len()
            ),
        );
        return Err(Failure::HeadTooLarge.into());
    }
    suspend(
        r,
        Ctx {
            pool: i,
            slot: None,
            active: true,
            r,
            // SAFETY: an all-zero ngx_event_t is nginx's own initial state for events.
            timer: unsafe { std::mem::zeroed() },
            // SAFETY: as above.
            retry: unsafe { std::mem::zeroed() },
            queue_phase: queue_timeout_ms
                .filter(|q| *q < timeout_ms)
                .map(|q| (q, timeout_ms - q)),
            region,
            upload: Some(Upload::new(bytes, parts, body, arriving || tunnel)),
            download: None,
            buffered: None,
            buffering,
            timeout_ms,
            own_timeout,
            outcome: Outcome::default(),
            tunnel: tunnel.then_some(Tunnel::Offered),
        },
    )
    .ok_or(Refused::Failed(Failure::Internal, String::new()))
}
