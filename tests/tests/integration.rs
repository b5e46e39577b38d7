//! The integration tests, one module a file, in one binary: a real nginx (built from
//! nginx-src) with the real module, real poolds and real apps, on loopback ports they choose
//! (the harness is `tests/src/`). Run one file's tests with
//! `cargo test --release -p ngx-pool-tests --test integration FILE::`.

#[path = "asgi.rs"]
mod asgi;
#[path = "buffering.rs"]
mod buffering;
#[path = "config.rs"]
mod config;
#[path = "django_site.rs"]
mod django_site;
#[path = "e2e.rs"]
mod e2e;
#[path = "edge.rs"]
mod edge;
#[path = "fanout.rs"]
mod fanout;
#[path = "handlers.rs"]
mod handlers;
#[path = "isolation.rs"]
mod isolation;
#[path = "lifecycle.rs"]
mod lifecycle;
#[path = "log_flood.rs"]
mod log_flood;
#[path = "lost.rs"]
mod lost;
#[path = "metrics.rs"]
mod metrics;
#[path = "orphans.rs"]
mod orphans;
#[path = "peers.rs"]
mod peers;
#[path = "status_page.rs"]
mod status_page;
#[path = "streaming.rs"]
mod streaming;
#[path = "variables.rs"]
mod variables;
#[path = "websocket.rs"]
mod websocket;
#[path = "wsgi.rs"]
mod wsgi;
