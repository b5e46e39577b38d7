//! How long an idle pool worker polls the queue before it sleeps: adaptively.
//!
//! Sleeping costs the producer a futex wake and the sleeper a context switch; on a virtual
//! machine an idle vCPU also halts, and waking it costs tens of microseconds. Polling for a few
//! microseconds catches the next request without any of that, but only when a core is free: on
//! a machine where the pool's and nginx's processes outnumber the cores, the poller takes CPU
//! from the very nginx worker that would produce the next request.
//!
//! So a worker polls about twice as long as work took to arrive lately (at most `max`), and
//! watches whether it was preempted meanwhile (the thread's involuntary context switches, which
//! the kernel counts): preemption means someone else wanted this core. After a poll that was
//! preempted or found nothing, the worker stops polling for a while (doubling, up to
//! [`MAX_BACKOFF`] idle periods), then tries again. On idle cores it keeps polling. An idle pool
//! still makes no system calls and uses no CPU: one poll at most per transition to idle.

use std::time::{Duration, Instant};

/// The most idle periods a worker sleeps at once without polling first after a failed poll.
pub const MAX_BACKOFF: u32 = 1024;

/// The shortest poll: about what a futex wake-up costs the producer.
const MIN_POLL: Duration = Duration::from_micros(5);

/// One worker's polling policy and what it learned.
#[derive(Debug, Clone)]
pub struct Spin {
    max: Duration,
    /// Idle periods still to sleep through without polling.
    skip: u32,
    /// What `skip` is set to at the next failed poll (0: not backing off).
    backoff: u32,
    /// How long polls that found work took, smoothed: a poll lasts up to twice that.
    typical: Duration,
}

impl Spin {
    /// Polls up to `max` before sleeping, backing off where the cores are busy; zero never polls.
    pub fn adaptive(max: Duration) -> Self {
        Spin {
            max,
            skip: 0,
            backoff: 0,
            typical: max / 2,
        }
    }

    /// Never polls: always sleeps at once.
    pub fn off() -> Self {
        Self::adaptive(Duration::ZERO)
    }

    /// Calls `poll` until it returns something or the budget is spent (or not at all, while
    /// backing off). Returns what `poll` found.
    pub fn run<T>(&mut self, mut poll: impl FnMut() -> Option<T>) -> Option<T> {
        if self.max.is_zero() {
            return None;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        let before = involuntary_switches();
        let started = Instant::now();
        let until = started + (self.typical * 2).clamp(MIN_POLL.min(self.max), self.max);
        // At least one poll, however short the budget: on a loaded machine the clock may pass
        // `until` before the first look, and a poll that never looked learns nothing.
        let found = loop {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
            let found = poll();
            if found.is_some() || Instant::now() >= until {
                break found;
            }
        };
        if found.is_none() || involuntary_switches() > before {
            self.backoff = (self.backoff * 2).clamp(1, MAX_BACKOFF);
            self.skip = self.backoff;
            if found.is_none() {
                // Maybe work comes a little later than we waited: wait longer next time.
                self.typical = (self.typical * 2).min(self.max / 2);
            }
        } else {
            self.backoff /= 2;
            self.typical = (self.typical * 3 + started.elapsed()) / 4;
        }
        found
    }

    /// Idle periods it will sleep through without polling (for tests and status).
    pub fn backing_off(&self) -> u32 {
        self.skip
    }
}

/// This thread's involuntary context switches so far (0 if the kernel will not say).
#[cfg(not(loom))]
fn involuntary_switches() -> i64 {
    crate::sys::thread_involuntary_switches().unwrap_or(0)
}

#[cfg(loom)]
fn involuntary_switches() -> i64 {
    0
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn off_never_polls() {
        let mut s = Spin::off();
        let mut polls = 0;
        assert_eq!(
            s.run(|| {
                polls += 1;
                Some(())
            }),
            None
        );
        assert_eq!(polls, 0);
    }

    #[test]
    fn finds_work_that_arrives_while_polling() {
        let mut s = Spin::adaptive(Duration::from_millis(50));
        let mut polls = 0;
        assert_eq!(
            s.run(|| {
                polls += 1;
                (polls == 3).then_some(polls)
            }),
            Some(3)
        );
        assert_eq!(polls, 3);
    }

    #[test]
    fn a_preempted_poller_backs_off_then_tries_again() {
        // Two threads polling on one CPU for a long time: each is preempted by the other. The
        // work comes within the budget, so only the preemption can make them back off.
        let spinner = || {
            std::thread::spawn(move || {
                // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET stays within it.
                unsafe {
                    let mut one: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(0, &mut one);
                    libc::sched_setaffinity(0, std::mem::size_of_val(&one), &one);
                }
                let mut s = Spin::adaptive(Duration::from_millis(60));
                let started = Instant::now();
                s.run(|| (started.elapsed() >= Duration::from_millis(40)).then_some(()));
                s.backing_off()
            })
        };
        let (a, b) = (spinner(), spinner());
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        assert!(a + b >= 1, "a preempted poller backs off ({a}, {b})");
        let mut s = Spin::adaptive(Duration::from_micros(1));
        s.skip = 2;
        s.backoff = 2;
        assert_eq!(s.run(|| Some(())), None);
        assert_eq!(s.run(|| Some(())), None);
        assert_eq!(
            s.run(|| Some(())),
            Some(()),
            "polls again after backing off"
        );
    }
}
