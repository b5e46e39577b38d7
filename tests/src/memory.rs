//! Memory watched while a test runs: the resident memory of processes sampled until the end,
//! and the bound bodies of any size must stay within.

use crate::{procs, Nginx};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The memory bound the README states: whatever the body size, an nginx worker's and a pool
/// worker's private memory grow by less than this during a transfer.
pub const PRIVATE_GROWTH_BOUND_KIB: u64 = 16 * 1024;

pub fn pool_workers(ng: &Nginx) -> Vec<u32> {
    ng.poolds().into_iter().flat_map(procs::children).collect()
}

/// (pid, private KiB at start, private peak KiB, shared peak KiB)
pub type Peak = (u32, u64, u64, u64);

/// Samples the resident memory of `pids` every 10 ms until dropped; reports the peaks.
pub struct RssWatch {
    stop: Arc<AtomicBool>,
    peaks: Arc<Mutex<Vec<Peak>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssWatch {
    pub fn new(pids: Vec<u32>) -> RssWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let peaks: Vec<_> = pids
            .iter()
            .map(|p| (*p, procs::rss_kib(*p).0, 0, 0))
            .collect();
        let peaks = Arc::new(Mutex::new(peaks));
        let (s, pk) = (stop.clone(), peaks.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for e in pk.lock().unwrap().iter_mut() {
                    let (anon, shmem) = procs::rss_kib(e.0);
                    e.2 = e.2.max(anon);
                    e.3 = e.3.max(shmem);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        RssWatch {
            stop,
            peaks,
            thread: Some(thread),
        }
    }

    /// (pid, private growth KiB, shared peak KiB) of each watched process.
    pub fn finish(mut self) -> Vec<(u32, u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        let peaks = self.peaks.lock().unwrap();
        peaks
            .iter()
            .map(|(p, start, peak, shm)| (*p, peak.saturating_sub(*start), *shm))
            .collect()
    }
}

pub fn assert_bounded(what: &str, seen: &[(u32, u64, u64)], arena_kib: u64) {
    for (pid, growth, shared) in seen {
        eprintln!("{what}: pid {pid}: private +{growth} KiB, shared peak {shared} KiB");
        assert!(
            *growth < PRIVATE_GROWTH_BOUND_KIB,
            "{what}: pid {pid} grew by {growth} KiB of private memory"
        );
        // The region is the arena plus its tables (well under 1 MiB here).
        assert!(
            *shared <= arena_kib + 1024,
            "{what}: pid {pid} maps {shared} KiB of shared memory, more than the arena"
        );
    }
}
