//! An ngx-pool handler library on the Rust SDK (`handler=dylib:.../libngx_pool_example_handler.so`).
//!
//! | request | answer |
//! |---|---|
//! | `GET /hello` (any other path too) | `hello` (or the `greeting=` of `handler_args`), then `, NAME` if the `X_USER` pool_param is set |
//! | `POST /sum` with `{"numbers":[1,2,3]}` | `{"count":3,"sum":6.0,"worker":PID}`; 400 with a reason on bad JSON |
//! | `GET /lines?n=N&ms=M` | N lines, one every M ms, each flushed to the client as it is written (chunked) |
//! | `GET /squares?n=N&ms=M` | fan-out: N tasks on the pool's workers, each squaring its number after M ms of work; `{"sum":S,"workers":W}` (W = distinct worker pids that ran them) |
//! | `GET /error` | an `Err` from the handler: 500, the error in error_log |
//! | `GET /panic` | a panic in the handler: 500, the panic in error_log, the worker goes on |

use ngx_pool_sdk::{export_handler, Handler, Level, Request, Response, Result, Status, Task};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::time::Duration;

pub struct Example {
    greeting: String,
}

#[derive(Deserialize)]
struct SumIn {
    numbers: Vec<f64>,
}

#[derive(Serialize)]
struct SumOut {
    count: usize,
    sum: f64,
    worker: u32,
}

/// One fan-out task of `/squares`: "N MS" in, "N*N PID" out, after MS ms of busy work.
fn square(input: &[u8]) -> Result<Vec<u8>> {
    let text = std::str::from_utf8(input).map_err(|_| "task input is not UTF-8")?;
    let mut it = text.split(' ').map(str::parse::<u64>);
    let (Some(Ok(n)), Some(Ok(ms))) = (it.next(), it.next()) else {
        return Err("task input is not \"N MS\"".into());
    };
    let until = std::time::Instant::now() + Duration::from_millis(ms);
    while std::time::Instant::now() < until {
        std::hint::spin_loop();
    }
    Ok(format!("{} {}", n * n, std::process::id()).into_bytes())
}

/// Query argument `name` as a number (at most 10 000), or `default`.
fn number_arg(req: &Request<'_>, name: &str, default: u64) -> u64 {
    req.arg(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .min(10_000)
}

impl Example {
    fn squares(&self, req: &Request<'_>, resp: &mut Response<'_>) -> Result {
        let (n, ms) = (number_arg(req, "n", 8), number_arg(req, "ms", 0));
        let inputs: Vec<String> = (1..=n).map(|i| format!("{i} {ms}")).collect();
        let outputs = req.fanout().map(&inputs, square)?;
        let (mut sum, mut pids) = (0u64, std::collections::BTreeSet::new());
        for out in outputs {
            let out = String::from_utf8(out?).map_err(|_| "task output is not UTF-8")?;
            let (sq, pid) = out.split_once(' ').ok_or("bad task output")?;
            sum += sq.parse::<u64>().map_err(|_| "bad task output")?;
            pids.insert(pid.to_string());
        }
        resp.add_header("Content-Type", "application/json");
        write!(resp, "{{\"sum\":{sum},\"workers\":{}}}", pids.len())?;
        Ok(())
    }

    fn hello(&self, req: &Request<'_>, resp: &mut Response<'_>) -> Result {
        resp.add_header("Content-Type", "text/plain");
        match req.param_str("X_USER") {
            Some(who) => writeln!(resp, "{}, {who}", self.greeting)?,
            None => resp.send(self.greeting.as_bytes())?,
        }
        Ok(())
    }

    fn sum(&self, req: &Request<'_>, resp: &mut Response<'_>) -> Result {
        if req.method() != "POST" {
            resp.set_status(Status::METHOD_NOT_ALLOWED);
            resp.add_header("Allow", "POST");
            return Ok(());
        }
        let input: SumIn = match serde_json::from_slice(req.body()?) {
            Ok(v) => v,
            Err(e) => {
                resp.set_status(Status::BAD_REQUEST);
                writeln!(resp, "bad JSON: {e}")?;
                return Ok(());
            }
        };
        let out = SumOut {
            count: input.numbers.len(),
            sum: input.numbers.iter().sum(),
            worker: std::process::id(),
        };
        resp.add_header("Content-Type", "application/json");
        resp.send(&serde_json::to_vec(&out).map_err(|e| e.to_string())?)
    }

    fn lines(&self, req: &Request<'_>, resp: &mut Response<'_>) -> Result {
        let (n, ms) = (number_arg(req, "n", 3), number_arg(req, "ms", 0));
        resp.add_header("Content-Type", "text/plain");
        for i in 0..n {
            if req.is_cancelled() {
                return Ok(());
            }
            writeln!(resp, "line {i}")?;
            resp.flush()?;
            std::thread::sleep(Duration::from_millis(ms));
        }
        Ok(())
    }
}

impl Handler for Example {
    fn init(args: &str) -> Result<Self> {
        // handler_args: `greeting=TEXT`.
        let greeting = args
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("greeting="))
            .unwrap_or("hello")
            .to_string();
        ngx_pool_sdk::log(
            Level::Notice,
            &format!("example handler ready (greeting \"{greeting}\")"),
        );
        Ok(Example { greeting })
    }

    fn handle(&self, req: &Request<'_>, resp: &mut Response<'_>) -> Result {
        match req.path().rsplit('/').next().unwrap_or("") {
            "sum" => self.sum(req, resp),
            "squares" => self.squares(req, resp),
            "lines" => self.lines(req, resp),
            "error" => Err("the example handler was asked to fail".into()),
            "panic" => panic!("the example handler was asked to panic"),
            _ => self.hello(req, resp),
        }
    }

    fn run_task(&self, task: &Task) -> Result {
        task.write(&square(&task.input()?)?)
    }
}

export_handler!(Example, "example");
