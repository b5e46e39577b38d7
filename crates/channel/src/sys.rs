//! Thin, checked wrappers over the few raw system calls the channel needs (futex, page residency).

use crate::sync::AtomicU32;
use std::io;
use std::time::Duration;

#[cfg(loom)]
pub use loom_futex::{futex_wait, futex_wake, monotonic_ms, monotonic_us};

/// Under loom a futex wait is a yield (loom then runs another thread) and a wake is nothing:
/// every waiter re-checks its condition in a loop, which is what the model explores.
#[cfg(loom)]
mod loom_futex {
    use super::*;
    pub fn futex_wait(_: &AtomicU32, _: u32, _: Option<Duration>) -> io::Result<()> {
        loom::thread::yield_now();
        Ok(())
    }
    pub fn futex_wake(_: &AtomicU32, _: u32) -> io::Result<usize> {
        Ok(0)
    }
    pub fn monotonic_ms() -> u64 {
        0
    }
    pub fn monotonic_us() -> u64 {
        0
    }
}

/// Turns a libc-style `-1` return into the thread's `io::Error`.
///
/// Only used in this module, on plain values: the arguments it expands inside `unsafe` are
/// integers and pointers computed by safe code above each call.
#[cfg(not(loom))]
#[allow(clippy::macro_metavars_in_unsafe)]
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)* ) ) => {{
        // SAFETY: the caller passes arguments valid for this libc function; this macro only
        // checks the return value.
        let res = unsafe { libc::$fn($($arg, )*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

#[cfg(not(loom))]
/// Sleeps while `word` still holds `expected`, until woken by [`futex_wake`] (or `timeout`).
///
/// The futex is *shared* (no `FUTEX_PRIVATE_FLAG`): the word lives in a `MAP_SHARED` mapping
/// and the waker is another process.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> io::Result<()> {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    let res = syscall!(syscall(
        libc::SYS_futex,
        word.as_ptr(),
        libc::FUTEX_WAIT,
        expected,
        ts_ptr,
        std::ptr::null::<u32>(),
        0u32
    ));
    match res {
        Ok(_) => Ok(()),
        Err(e) => match e.raw_os_error() {
            // Value already changed, interrupted, or timed out: all mean "look again".
            Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ETIMEDOUT) => Ok(()),
            _ => Err(e),
        },
    }
}

#[cfg(not(loom))]
/// Wakes up to `count` processes sleeping in [`futex_wait`] on `word`.
pub fn futex_wake(word: &AtomicU32, count: u32) -> io::Result<usize> {
    syscall!(syscall(
        libc::SYS_futex,
        word.as_ptr(),
        libc::FUTEX_WAKE,
        count,
        std::ptr::null::<libc::timespec>(),
        std::ptr::null::<u32>(),
        0u32
    ))
    .map(|n| n as usize)
}

#[cfg(not(loom))]
/// Milliseconds of CLOCK_MONOTONIC: the one clock every process on the machine shares.
pub fn monotonic_ms() -> u64 {
    monotonic_us() / 1000
}

/// CLOCK_MONOTONIC in microseconds: the same clock in every process of the machine.
#[cfg(not(loom))]
pub fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

#[cfg(not(loom))]
/// The calling thread's involuntary context switches so far (times it was preempted).
pub fn thread_involuntary_switches() -> io::Result<i64> {
    // SAFETY: all-zero is a valid `rusage` (plain integers and timevals).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    syscall!(getrusage(libc::RUSAGE_THREAD, &mut usage))?;
    Ok(usage.ru_nivcsw)
}

#[cfg(not(loom))]
/// The size of a memory page.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page)
        .ok()
        .filter(|p| *p > 0)
        .unwrap_or(4096)
}

#[cfg(not(loom))]
/// Whether the page at `addr` (page-aligned, inside a live mapping) is in memory; for a shared
/// file mapping, whether the file has that page, whichever process made it.
pub fn page_resident(addr: *const u8) -> bool {
    let mut vec = [0u8; 1];
    // SAFETY: mincore only reads the kernel's page tables for [addr, addr + 1 page) and writes
    // one byte per page into `vec`, which has room for the one page asked about; a bad address
    // is an error (ENOMEM), not undefined behaviour.
    let res = syscall!(mincore(addr as *mut libc::c_void, 1, vec.as_mut_ptr()));
    res.is_ok() && vec[0] & 1 == 1
}
