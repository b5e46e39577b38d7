//! `native-backend ADDR [THREADS]`: answers `/hello` with "hello" and `/cpu?n=N` with the same
//! SHA-256 chaining kernel as poold's `builtin:cpu`; the proxy_pass baseline of scripts/bench.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use std::convert::Infallible;

fn cpu(n: u64) -> String {
    let mut state: [u8; 32] = Sha256::digest(b"").into();
    for _ in 0..n {
        state = Sha256::digest(state).into();
    }
    state.iter().map(|b| format!("{b:02x}")).collect()
}

async fn handle(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match req.uri().path() {
        "/cpu" => {
            let n = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("n=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000u64);
            // CPU-bound work off the reactor, as a real service would.
            let digest = tokio::task::spawn_blocking(move || cpu(n))
                .await
                .unwrap_or_default();
            format!("{{\"rounds\":{n},\"digest\":\"{digest}\"}}\n")
        }
        _ => "hello".to_string(),
    };
    Ok(Response::new(Full::new(Bytes::from(body))))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9001".into());
    let threads: usize = args.next().and_then(|t| t.parse().ok()).unwrap_or(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
        eprintln!("native-backend listening on {addr}");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .await;
            });
        }
    });
}
