//! The tests' one load generator: client threads on loopback, each sending its requests one
//! after the other and recording when each started and what it got. [`Load::start`] runs until
//! [`LoadRun::finish`] (a load under which something is done: a kill, a reload); [`burst`]
//! sends `n` requests at once and returns their statuses (a flood of uploads).

use crate::http::{request, Response};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One request of a load run: when it started (since the run began), and its answer.
pub struct Outcome {
    pub started: Duration,
    pub result: Result<Response, String>,
}

impl Outcome {
    /// Its status; 0 for a request that got no answer (connection refused, reset, cut short).
    pub fn status(&self) -> u16 {
        self.result.as_ref().map_or(0, |r| r.status)
    }
}

/// What a load sends, and where.
#[derive(Clone)]
pub struct Load {
    pub port: u16,
    pub method: &'static str,
    pub path: String,
    pub body: Arc<Vec<u8>>,
    pub clients: usize,
}

impl Load {
    /// GET `path` on `port` from `clients` clients.
    pub fn get(port: u16, path: &str, clients: usize) -> Load {
        Load {
            port,
            method: "GET",
            path: path.to_string(),
            body: Arc::new(Vec::new()),
            clients,
        }
    }

    /// Starts the clients; they go on until [`LoadRun::finish`].
    pub fn start(&self) -> LoadRun {
        let t0 = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..self.clients)
            .map(|_| {
                let (load, stop) = (self.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let started = t0.elapsed();
                        let result = request(load.port, load.method, &load.path, &[], &load.body)
                            .map_err(|e| e.to_string());
                        out.push(Outcome { started, result });
                    }
                    out
                })
            })
            .collect();
        LoadRun { t0, threads, stop }
    }

    /// Runs for `d`, then returns every outcome.
    pub fn run_for(&self, d: Duration) -> Vec<Outcome> {
        let run = self.start();
        std::thread::sleep(d);
        run.finish()
    }
}

/// A load under way.
pub struct LoadRun {
    pub t0: Instant,
    threads: Vec<std::thread::JoinHandle<Vec<Outcome>>>,
    stop: Arc<AtomicBool>,
}

impl LoadRun {
    /// Stops the clients (each finishes the request it is in) and returns every outcome.
    pub fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().expect("a load thread panicked"))
            .collect()
    }
}

/// How many outcomes got each status (0: no answer).
pub fn counts(outcomes: &[Outcome]) -> BTreeMap<u16, usize> {
    let mut counts = BTreeMap::new();
    for o in outcomes {
        *counts.entry(o.status()).or_insert(0) += 1;
    }
    counts
}

/// `n` requests of `load` at once (one client each); how many got each status.
pub fn burst(load: &Load, n: usize) -> BTreeMap<u16, usize> {
    let load = load.clone();
    let statuses = crate::parallel(n, n, move |_| {
        request(load.port, load.method, &load.path, &[], &load.body).map_or(0, |r| r.status)
    });
    let mut counts = BTreeMap::new();
    for s in statuses {
        *counts.entry(s).or_insert(0) += 1;
    }
    counts
}
