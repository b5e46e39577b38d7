//! The pool workers' stdout and stderr: one pipe for the whole pool, read by poold's loop, which
//! passes at most `log_rate=` lines a second on to the error log and counts the rest, so a
//! handler printing in a loop cannot fill the disk.
//!
//! Why poold's loop reads it, not the watchdog: the count of dropped lines belongs in the pool's
//! region (`pool_status`), which only poold maps; the watchdog holds no shared memory by design.
//! And poold already wakes for its workers (one more descriptor in its `poll`), stays
//! single-threaded (it forks), and lives exactly as long as the workers writing into the pipe
//! (they die with it). The read end is non-blocking and drained at every wake-up, a bounded
//! amount at a time, so poold never blocks on it; a worker blocks only while the pipe's 64 KiB
//! are full, which is until poold's next turn (or, if poold is frozen, until it runs again).
//!
//! Lines go out as they came (a worker's own `log!` lines are already in nginx's format), to
//! poold's stderr: the error log, followed through a rotation by poold (the workers must not
//! reopen their stdout and stderr on the file: that would bypass the limit).

use crate::log;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The longest line kept: the rest of a longer one (up to its newline) is dropped, so output
/// without a newline cannot grow poold's memory.
pub(super) const MAX_LINE: usize = 8 << 10;
/// The pipe's buffer: what workers may write ahead of poold's reading without blocking.
const PIPE_SIZE: i32 = 64 << 10;
/// The most read from the pipe per wake-up: poold's other duties are not starved by a flood
/// (what is left wakes the next `poll` at once).
const READ_PER_WAKE: usize = 1 << 20;
/// A line without its newline yet goes out on its own after this long (its writer may have
/// died mid-line, or prompts without a newline).
const PARTIAL_WAIT: Duration = Duration::from_secs(1);
/// The rate limit's window.
const WINDOW: Duration = Duration::from_secs(1);

/// The pipe, the line being put together, and the limit.
pub(super) struct WorkerOutput {
    read: OwnedFd,
    /// Kept for each worker forked later (its stdout and stderr become copies of it).
    write: OwnedFd,
    buf: Vec<u8>,
    lines: Lines,
    limit: Limit,
}

impl WorkerOutput {
    /// The pipe for a pool with `log_rate=` `rate` (0: no limit).
    pub(super) fn new(rate: u32) -> io::Result<WorkerOutput> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        // Only the read end is non-blocking (the flag belongs to one end's open file): a
        // worker's write waits for room rather than failing, which an app's print() would take
        // for an error.
        fcntl(read.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        // 64 KiB is Linux's default already; asked for explicitly so that the bound holds
        // whatever the default. A failure leaves the default, which is fine.
        let _ = fcntl(read.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
        Ok(WorkerOutput {
            read,
            write,
            buf: vec![0; 64 << 10],
            lines: Lines::default(),
            limit: Limit::new(rate),
        })
    }

    /// What a new worker's stdout and stderr are to be.
    pub(super) fn write_end(&self) -> &OwnedFd {
        &self.write
    }

    pub(super) fn read_end(&self) -> &OwnedFd {
        &self.read
    }

    /// Reads what the pipe holds (a bounded amount), writes the lines the limit lets through,
    /// counts the others in `dropped`.
    pub(super) fn drain(&mut self, dropped: &AtomicU64) {
        let mut out = Vec::new();
        let mut total = 0;
        while total < READ_PER_WAKE {
            let n = match nix::unistd::read(self.read.as_raw_fd(), &mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                // EAGAIN: empty for now. Anything else cannot happen on a pipe we hold both
                // ends of; nothing to do about it either way.
                Err(_) => break,
            };
            total += n;
            let now = Instant::now();
            let (lines, limit) = (&mut self.lines, &mut self.limit);
            lines.feed(&self.buf[..n], now, |line| {
                limit.offer(line, now, &mut out, dropped)
            });
        }
        self.flush(&mut out);
        self.tick(dropped);
    }

    /// Once a second while lines are being dropped: the line saying how many. And a line left
    /// without its newline for a while goes out as it is.
    pub(super) fn tick(&mut self, dropped: &AtomicU64) {
        let now = Instant::now();
        let mut out = Vec::new();
        let (lines, limit) = (&mut self.lines, &mut self.limit);
        lines.flush_stale(now, |line| limit.offer(line, now, &mut out, dropped));
        self.flush(&mut out);
        self.limit.report(now);
    }

    /// When poold stops: what is left in the pipe, a line still without its newline, and the
    /// count of the lines dropped so far, without waiting for the window's end.
    pub(super) fn finish(&mut self, dropped: &AtomicU64) {
        self.drain(dropped);
        let now = Instant::now();
        let mut out = Vec::new();
        if !self.lines.line.is_empty() {
            let (lines, limit) = (&mut self.lines, &mut self.limit);
            lines.emit(&mut |line: &[u8]| limit.offer(line, now, &mut out, dropped));
        }
        self.flush(&mut out);
        if self.limit.dropped > 0 {
            self.limit.report_dropped();
        }
    }

    /// When [`tick`](Self::tick) has something to do: the end of a window with drops to
    /// report, or a partial line's wait.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        [self.limit.report_at(), self.lines.stale_at()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Writes the lines let through to poold's stderr (the error log, reopened first if it was
    /// rotated), in one call: they land together, between poold's own lines.
    fn flush(&mut self, out: &mut Vec<u8>) {
        if out.is_empty() {
            return;
        }
        log::reopen_if_rotated();
        let _ = io::stderr().lock().write_all(out);
        out.clear();
    }
}

/// Splits bytes into lines of at most [`MAX_LINE`] bytes, each handed on with its newline.
#[derive(Default)]
struct Lines {
    line: Vec<u8>,
    /// The current line was cut at MAX_LINE: the rest, up to its newline, is skipped.
    skipping: bool,
    /// Since when `line` has been waiting for its newline.
    since: Option<Instant>,
}

impl Lines {
    fn feed(&mut self, mut bytes: &[u8], now: Instant, mut emit: impl FnMut(&[u8])) {
        while !bytes.is_empty() {
            let nl = bytes.iter().position(|&b| b == b'\n');
            let piece = &bytes[..nl.unwrap_or(bytes.len())];
            bytes = &bytes[nl.map_or(bytes.len(), |i| i + 1)..];
            if !self.skipping {
                let room = MAX_LINE - self.line.len();
                if piece.len() <= room {
                    self.line.extend_from_slice(piece);
                } else {
                    self.line.extend_from_slice(&piece[..room]);
                    self.skipping = true;
                    self.emit(&mut emit);
                }
            }
            if nl.is_some() {
                if self.skipping {
                    self.skipping = false;
                } else {
                    self.emit(&mut emit);
                }
            } else if !self.line.is_empty() && self.since.is_none() {
                self.since = Some(now);
            }
        }
    }

    /// Hands on a line that waited too long for its newline.
    fn flush_stale(&mut self, now: Instant, mut emit: impl FnMut(&[u8])) {
        if self.stale_at().is_some_and(|at| at <= now) {
            self.emit(&mut emit);
        }
    }

    fn stale_at(&self) -> Option<Instant> {
        self.since.map(|t| t + PARTIAL_WAIT)
    }

    fn emit(&mut self, emit: &mut impl FnMut(&[u8])) {
        self.line.push(b'\n');
        emit(&self.line);
        self.line.clear();
        self.since = None;
    }
}

/// At most `rate` lines a window; the rest are dropped, counted, and reported once the window
/// is over.
struct Limit {
    /// 0: no limit.
    rate: u32,
    /// The window the counts are for: it starts at the first line after the last one ended.
    window_end: Option<Instant>,
    passed: u32,
    /// Dropped in this window, not reported yet.
    dropped: u64,
}

impl Limit {
    fn new(rate: u32) -> Limit {
        Limit {
            rate,
            window_end: None,
            passed: 0,
            dropped: 0,
        }
    }

    /// Passes `line` into `out`, or drops it (counted in `counter` at once, for `pool_status`).
    fn offer(&mut self, line: &[u8], now: Instant, out: &mut Vec<u8>, counter: &AtomicU64) {
        if self.rate == 0 {
            out.extend_from_slice(line);
            return;
        }
        if self.window_end.is_some_and(|end| end <= now) {
            // The last window's report waits for its lines (`out`), which go out first.
            self.end_window(out);
        }
        if self.window_end.is_none() {
            self.window_end = Some(now + WINDOW);
        }
        if self.passed < self.rate {
            self.passed += 1;
            out.extend_from_slice(line);
        } else {
            self.dropped += 1;
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Closes the window: its drops reported (after `out`, written first).
    fn end_window(&mut self, out: &mut Vec<u8>) {
        if self.dropped > 0 {
            log::reopen_if_rotated();
            let _ = io::stderr().lock().write_all(out);
            out.clear();
            self.report_dropped();
        }
        self.window_end = None;
        self.passed = 0;
    }

    /// If the window is over: its report, and a new window at the next line.
    fn report(&mut self, now: Instant) {
        if self.window_end.is_some_and(|end| end <= now) {
            self.end_window(&mut Vec::new());
        }
    }

    fn report_dropped(&mut self) {
        log!(
            "warn",
            "{} lines from the pool's workers dropped (log_rate={})",
            std::mem::take(&mut self.dropped),
            self.rate
        );
    }

    /// When the report of the current window is due, if it dropped anything.
    fn report_at(&self) -> Option<Instant> {
        self.window_end.filter(|_| self.dropped > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut lines = Lines::default();
        let mut got = Vec::new();
        let now = Instant::now();
        for c in chunks {
            lines.feed(c, now, |l| got.push(l.to_vec()));
        }
        got
    }

    #[test]
    fn lines_are_split_joined_and_capped() {
        assert_eq!(
            split(&[b"a\nb", b"c\n\nd"]),
            vec![b"a\n".to_vec(), b"bc\n".to_vec(), b"\n".to_vec()]
        );
        // A line of exactly MAX_LINE bytes is whole; a longer one is cut and its rest skipped.
        let exact = vec![b'x'; MAX_LINE];
        let got = split(&[&exact, b"\n"]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].len(), MAX_LINE + 1);
        let long = vec![b'y'; 3 * MAX_LINE];
        let got = split(&[&long, &long, b"\nnext\n"]);
        assert_eq!(got.len(), 2, "cut once, then the next line");
        assert_eq!(got[0].len(), MAX_LINE + 1);
        assert_eq!(got[1], b"next\n");
    }

    #[test]
    fn a_line_without_its_newline_goes_out_after_a_while() {
        let mut lines = Lines::default();
        let t = Instant::now();
        let mut got = Vec::new();
        lines.feed(b"prompt> ", t, |l| got.push(l.to_vec()));
        assert!(got.is_empty());
        assert_eq!(lines.stale_at(), Some(t + PARTIAL_WAIT));
        lines.flush_stale(t + PARTIAL_WAIT / 2, |l| got.push(l.to_vec()));
        assert!(got.is_empty());
        lines.flush_stale(t + PARTIAL_WAIT, |l| got.push(l.to_vec()));
        assert_eq!(got, vec![b"prompt> \n".to_vec()]);
        assert_eq!(lines.stale_at(), None);
    }

    #[test]
    fn the_limit_passes_rate_lines_a_window_and_counts_the_rest() {
        let mut limit = Limit::new(3);
        let counter = AtomicU64::new(0);
        let mut out = Vec::new();
        let t = Instant::now();
        for _ in 0..10 {
            limit.offer(b"l\n", t, &mut out, &counter);
        }
        assert_eq!(out, b"l\nl\nl\n");
        assert_eq!(counter.load(Ordering::Relaxed), 7);
        assert_eq!(limit.report_at(), Some(t + WINDOW));
        // The next window passes lines again (its report of 7 went to stderr).
        out.clear();
        limit.offer(b"m\n", t + WINDOW, &mut out, &counter);
        assert_eq!(out, b"m\n");
        assert_eq!((limit.dropped, limit.report_at()), (0, None));
        let mut none = Limit::new(0);
        for _ in 0..1000 {
            none.offer(b"z\n", t, &mut out, &counter);
        }
        assert_eq!(counter.load(Ordering::Relaxed), 7);
        assert_eq!(none.report_at(), None);
    }
}
