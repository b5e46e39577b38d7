//! Attaching an nginx worker to a pool without ever waiting on poold: the handshake runs in
//! nginx's event loop (the development guide's "Events" and "Timers").
//!
//! A non-blocking `connect` and HELLO (with our eventfd) go out at once; the socket joins the
//! event loop as a connection whose read handler takes poold's WELCOME (with the region's
//! memfd), bounded by a timer. Meanwhile the worker serves everything else; requests for the
//! pool wait for the attachment a short while ([`crate::request`]), then get 503. A poold that
//! does not answer (frozen by SIGSTOP, a debugger, swapped out) costs a timer, never a stalled
//! worker, and the next attempt waits a second, so a frozen poold's backlog does not fill up.

use crate::runtime::{self, with_pool, Attached};
use nginx_sys::{ngx_connection_t, ngx_event_t, NGX_LOG_ERR, NGX_LOG_NOTICE};
use ngx_pool_channel::handshake::{self, recv_frame, send_hello, Frame};
use ngx_pool_channel::layout::LAYOUT_VERSION;
use ngx_pool_channel::Region;
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{connect, socket, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How long poold has to answer a HELLO.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a worker tries again to attach to a pool that is down (one quick local connect).
const RETRY_EVERY: Duration = Duration::from_millis(20);
/// ...and after poold let a handshake time out (it is frozen or overloaded).
const RETRY_AFTER_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a failure to attach is logged, at most.
const LOG_EVERY: Duration = Duration::from_secs(1);
/// How long a pool this worker never attached to may leave the handshake unanswered before
/// that is an error: its poold may still be loading the app (a Django import takes seconds).
const STARTING_GRACE: Duration = Duration::from_secs(10);
/// How soon a worker that is not attached tries again on its own, with no request asking:
/// so it is attached when the first request comes, even if poold came up after the worker.
const RETRY_UNASKED: Duration = Duration::from_millis(200);

/// A pool's timer that retries the attachment while nobody asks for it (leaked: one per pool
/// for the process's life, so its address is stable while in nginx's timer tree).
pub(crate) fn new_retry_timer(i: usize) -> *mut ngx_event_t {
    // SAFETY: a zeroed ngx_event_t is nginx's idle event.
    let ev: &'static mut ngx_event_t = Box::leak(Box::new(unsafe { std::mem::zeroed() }));
    ev.handler = Some(on_retry);
    ev.data = i as *mut std::ffi::c_void;
    ev.log = crate::log::cycle_log();
    // A pending retry never holds up a graceful shutdown.
    ev.set_cancelable(1);
    ev
}

/// Arms pool `i`'s retry timer for `after`, unless it is armed or the worker is exiting.
fn arm_retry(i: usize, after: Duration) {
    let Ok(ev) = with_pool(i, |p| p.retry_timer) else {
        return;
    };
    // SAFETY: the pool's leaked timer event (see `new_retry_timer`); nginx's globals are read
    // in its only thread.
    unsafe {
        if ev.is_null() || (*ev).timer_set() != 0 || nginx_sys::ngx_exiting != 0 {
            return;
        }
        nginx_sys::ngx_add_timer(ev, after.as_millis() as nginx_sys::ngx_msec_t);
    }
}

/// Disarms pool `i`'s retry timer (the worker exits).
pub(crate) fn cancel_retry(i: usize) {
    if let Ok(ev) = with_pool(i, |p| p.retry_timer) {
        // SAFETY: as in `arm_retry`.
        unsafe {
            if !ev.is_null() && (*ev).timer_set() != 0 {
                nginx_sys::ngx_del_timer(ev);
            }
        }
    }
}

unsafe extern "C" fn on_retry(ev: *mut ngx_event_t) {
    // SAFETY: our retry timer; its data is the pool index.
    let i = unsafe { (*ev).data as usize };
    crate::edge::guard(
        "timer",
        || (),
        || {
            // SAFETY: nginx's global, read in its only thread.
            if unsafe { nginx_sys::ngx_exiting } != 0 || ensure(i) != State::Down {
                return;
            }
            // Not due yet: nginx's timers run on its cached clock, which may lag the
            // `Instant` the attempt was scheduled by. Wait for the rest.
            let now = Instant::now();
            if let Ok(Some(due)) = with_pool(i, |p| p.next_attempt) {
                arm_retry(
                    i,
                    due.saturating_duration_since(now)
                        .max(Duration::from_millis(1)),
                );
            }
        },
    );
}

/// poold went away: attach again as soon as it is back, not at the next request.
pub(crate) fn retry_soon(i: usize) {
    arm_retry(i, RETRY_UNASKED);
}

/// A handshake under way.
pub struct Attaching {
    /// The socket, an nginx connection whose read events complete the handshake.
    conn: *mut ngx_connection_t,
    /// Our eventfd, sent with the HELLO; becomes a connection once attached.
    eventfd: Option<OwnedFd>,
    /// The handshake's deadline (leaked while armed: see `Drop`; data: the pool index).
    timer: *mut ngx_event_t,
}

impl Drop for Attaching {
    fn drop(&mut self) {
        // SAFETY: our timer event (a leaked box) and the connection we registered; both are
        // ours alone and released exactly once, here.
        unsafe {
            if (*self.timer).timer_set() != 0 {
                nginx_sys::ngx_del_timer(self.timer);
            }
            drop(Box::from_raw(self.timer));
        }
        runtime::close_connection(self.conn);
    }
}

/// Where a pool's attachment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Attached,
    /// A handshake is under way: requests may wait for it.
    Pending,
    /// Not attached, and no attempt now (poold not there, or a retry not due yet).
    Down,
}

/// Where pool `i`'s attachment stands, starting a handshake if one is due.
pub fn ensure(i: usize) -> State {
    let now = Instant::now();
    let due = with_pool(i, |p| {
        if p.attached.is_some() {
            State::Attached
        } else if p.attaching.is_some() {
            State::Pending
        } else if p.next_attempt.is_none_or(|t| now >= t) {
            // Marked before starting: a failure below sets the real next attempt.
            p.next_attempt = Some(now + RETRY_EVERY);
            State::Pending
        } else {
            State::Down
        }
    });
    match due {
        Ok(State::Pending) => {}
        Ok(state) => return state,
        Err(_) => return State::Down,
    }
    if with_pool(i, |p| p.attaching.is_some()) == Ok(true) {
        return State::Pending;
    }
    let Ok(socket) = with_pool(i, |p| p.socket.clone()) else {
        return State::Down;
    };
    match start(i, &socket) {
        Ok(attaching) => {
            if with_pool(i, |p| p.attaching = Some(attaching)).is_ok() {
                State::Pending
            } else {
                State::Down
            }
        }
        Err(e) => {
            failed(i, &e, RETRY_EVERY);
            State::Down
        }
    }
}

/// Connects and says HELLO, without waiting: the WELCOME comes through [`on_event`].
fn start(i: usize, path: &std::path::Path) -> Result<Attaching, String> {
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    let addr = UnixAddr::new(path).map_err(|e| e.to_string())?;
    // A local socket connects at once or not at all (EAGAIN: its backlog is full).
    connect(sock.as_raw_fd(), &addr).map_err(|e| format!("connect: {e}"))?;
    let efd: OwnedFd =
        EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| format!("eventfd: {e}"))?
            .into();
    // A managed pool's poold admits only the workers of the master that started it: they
    // present the secret it was given (see `managed`); an external pool has none.
    let secret = crate::managed::secret_for(path);
    if let Err(e) = send_hello(
        &sock,
        LAYOUT_VERSION,
        std::process::id(),
        secret.as_ref(),
        &efd,
    ) {
        // poold refuses a user it does not admit as it accepts, perhaps before our Hello went
        // (then EPIPE): its reason is waiting on the socket.
        return Err(match recv_frame(&sock, MsgFlags::MSG_DONTWAIT) {
            Ok(Some((w, _))) if w.kind == handshake::WELCOME => {
                refusal(&w).unwrap_or_else(|| format!("hello: {e}"))
            }
            _ => format!("hello: {e}"),
        });
    }
    let conn = runtime::register(sock, i, on_event);
    if conn.is_null() {
        return Err("no free nginx connection for the pool's socket".into());
    }
    // SAFETY: a zeroed ngx_event_t is nginx's idle event; boxed so its address stays put
    // while it is in the timer tree, and freed by `Attaching::drop` after leaving it.
    let timer: *mut ngx_event_t = Box::into_raw(Box::new(unsafe { std::mem::zeroed() }));
    // SAFETY: the event we just made; armed once.
    unsafe {
        (*timer).handler = Some(on_timeout);
        (*timer).data = i as *mut std::ffi::c_void;
        (*timer).log = crate::log::cycle_log();
        (*timer).set_cancelable(1);
        nginx_sys::ngx_add_timer(
            timer,
            HANDSHAKE_TIMEOUT.as_millis() as nginx_sys::ngx_msec_t,
        );
    }
    Ok(Attaching {
        conn,
        eventfd: Some(efd),
        timer,
    })
}

/// The handshake failed: drop it, try again after `retry`, and say so (at most once a second).
fn failed(i: usize, reason: &str, retry: Duration) {
    failed_as(i, reason, retry, false)
}

/// As [`failed`]; `maybe_starting`: a pool this worker never attached to, within
/// [`STARTING_GRACE`] of its first failure, is said at `notice` (its poold may be loading the
/// app), not as an error.
fn failed_as(i: usize, reason: &str, retry: Duration, maybe_starting: bool) {
    let now = Instant::now();
    let said = with_pool(i, |p| {
        let attaching = p.attaching.take();
        p.next_attempt = Some(now + retry);
        let since = *p.failing_since.get_or_insert(now);
        let starting = maybe_starting && !p.ever_attached && now < since + STARTING_GRACE;
        let due = p.last_failure_logged.is_none_or(|t| now >= t + LOG_EVERY);
        if due {
            p.last_failure_logged = Some(now);
        }
        (
            attaching,
            due.then(|| (p.name.clone(), p.socket.clone(), starting)),
        )
    });
    // Dropped outside the borrow: closing a connection calls into nginx.
    if let Ok((attaching, say)) = said {
        drop(attaching);
        arm_retry(i, retry.max(RETRY_UNASKED));
        if let Some((name, socket, starting)) = say {
            let (level, why) = match (maybe_starting, starting) {
                (_, true) => (NGX_LOG_NOTICE, " (still starting?)"),
                (true, false) => (NGX_LOG_ERR, " (frozen or overloaded?)"),
                (false, false) => (NGX_LOG_ERR, ""),
            };
            crate::log::log(
                level,
                &format!(
                    "pool \"{name}\": cannot attach to {}: {reason}{why}",
                    socket.display()
                ),
            );
        }
    }
}

unsafe extern "C" fn on_timeout(ev: *mut ngx_event_t) {
    // SAFETY: our handshake timer; its data is the pool index.
    let i = unsafe { (*ev).data as usize };
    crate::edge::guard(
        "timer",
        || (),
        || {
            failed_as(
                i,
                &format!("poold did not answer within {HANDSHAKE_TIMEOUT:?}"),
                RETRY_AFTER_TIMEOUT,
                true,
            )
        },
    );
}

unsafe extern "C" fn on_event(ev: *mut ngx_event_t) {
    // SAFETY: nginx calls this with the read event of the socket `start` registered.
    let (i, c) = unsafe { runtime::pool_of(ev) };
    crate::edge::guard(
        "attach",
        || failed(i, "internal error", RETRY_EVERY),
        || {
            // SAFETY: the descriptor is open while the connection is.
            let fd = unsafe { BorrowedFd::borrow_raw((*c).fd) };
            let (welcome, memfd) = match recv_frame(fd, MsgFlags::MSG_DONTWAIT) {
                Ok(Some(x)) => x,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return,
                Ok(None) => {
                    return failed(
                        i,
                        "poold closed the connection during the handshake",
                        RETRY_EVERY,
                    )
                }
                Err(e) => return failed(i, &format!("welcome: {e}"), RETRY_EVERY),
            };
            // SAFETY: still our event; the frame is taken: clear `ready` (edge-triggered).
            unsafe { (*ev).set_ready(0) };
            match complete(i, c, welcome, memfd) {
                Ok(()) => {}
                Err(e) => failed(i, &e, RETRY_EVERY),
            }
        },
    );
}

/// Why poold refused, as its WELCOME says; `None` if it did not.
fn refusal(welcome: &Frame) -> Option<String> {
    Some(match welcome.a {
        handshake::WELCOME_OK => return None,
        handshake::WELCOME_BAD_VERSION => {
            format!("poold speaks another layout version than {LAYOUT_VERSION}: rebuild both")
        }
        handshake::WELCOME_FULL => {
            "poold has no room for another nginx worker (--max-conns)".into()
        }
        handshake::WELCOME_BAD_USER => format!(
            "poold refused this worker: its user (uid {}) is not one poold admits (an external poold admits the user it runs the pool as and root, or those its --allow names)",
            welcome.b
        ),
        handshake::WELCOME_BAD_SECRET => "poold refused this worker: not a worker of the nginx master that started that poold (no matching attachment secret; another nginx's poold on this socket?)".into(),
        other => format!("poold refused with status {other}"),
    })
}

/// poold answered: checks the WELCOME, maps the region, and turns the attempt into an
/// attachment (the socket connection stays, now watched for poold going away).
fn complete(
    i: usize,
    c: *mut ngx_connection_t,
    welcome: Frame,
    memfd: Option<OwnedFd>,
) -> Result<(), String> {
    if welcome.kind != handshake::WELCOME {
        return Err("poold sent no welcome".into());
    }
    if let Some(why) = refusal(&welcome) {
        return Err(why);
    }
    let region = Region::attach(memfd.ok_or("poold sent no region")?).map_err(|e| e.to_string())?;
    let Ok(Some(mut attaching)) = with_pool(i, |p| p.attaching.take()) else {
        return Err("the attempt was dropped meanwhile".into());
    };
    let Some(efd) = attaching.eventfd.take() else {
        return Err("no eventfd".into());
    };
    let eventfd_c = runtime::register(efd, i, runtime::on_eventfd_event);
    if eventfd_c.is_null() {
        return Err("no free nginx connection for the pool's eventfd".into());
    }
    // The socket connection is the attachment's now: not closed with the attempt.
    attaching.conn = std::ptr::null_mut();
    drop(attaching);
    // SAFETY: our connection's read event: from now on it only ever reports poold leaving.
    unsafe { (*(*c).read).handler = Some(runtime::on_socket_event) };
    let (conn, conn_gen) = (welcome.b, welcome.c);
    let stored = with_pool(i, |p| {
        p.ever_attached = true;
        p.failing_since = None;
        p.attached = Some(Attached {
            region: Rc::new(region),
            conn,
            conn_gen,
            wakes_owed: 0,
            socket_c: c,
            eventfd_c,
            reported_corrupt: false,
        });
        p.next_attempt = None;
        (p.name.clone(), p.socket.clone())
    });
    match stored {
        Ok((name, socket)) => {
            crate::log::log(
                NGX_LOG_NOTICE,
                &format!(
                    "pool \"{name}\": attached to {} as connection {conn}",
                    socket.display()
                ),
            );
            Ok(())
        }
        Err(_) => {
            runtime::close_connection(c);
            runtime::close_connection(eventfd_c);
            Err("the pools' state was in use".into())
        }
    }
}

/// Tells poold, on the attachment's socket `c`, that its region is corrupt (see
/// [`runtime::suspect_corruption`]). Best effort: if poold is gone, so is the region.
pub fn report_corrupt(c: *mut ngx_connection_t) {
    // SAFETY: `c` is the live connection of an attachment; its descriptor stays open while the
    // attachment does, and is only borrowed for this one send.
    let fd = unsafe { BorrowedFd::borrow_raw((*c).fd) };
    let _ = handshake::send_frame(fd, Frame::new(handshake::CORRUPT, 0, 0, 0), None::<OwnedFd>);
}
