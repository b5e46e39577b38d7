//! Stress across real processes, without nginx: producer processes (nginx workers' role) and
//! consumer processes (pool workers' role) exchange messages of random sizes from 0 B to 8 MiB
//! through one region, streamed both ways in credit windows as the module and poold do. Every
//! payload is checked byte for byte by the consumer and every reply (the payload back) by its
//! producer; each message must come back exactly once, and the arena must be wholly free at the
//! end.
#![cfg(not(loom))] // needs the real memfd region

use ngx_pool_channel::incoming::{self, Notify};
use ngx_pool_channel::outgoing::{self, RequestOut, Room};
use ngx_pool_channel::scavenge;
use ngx_pool_channel::slot::{self, Handover, SlotId, SlotState};
use ngx_pool_channel::spin::Spin;
use ngx_pool_channel::stream::{self, Direction, StreamReader};
use ngx_pool_channel::{Geometry, Region};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use std::cell::RefCell;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;

const PRODUCERS: u32 = 3;
const CONSUMERS: u32 = 3;
const PER_PRODUCER: u32 = 150;
const IN_FLIGHT: usize = 4;

fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// The message `seq` of `producer`: 16 header bytes, then bytes only these two numbers determine.
fn payload(producer: u32, seq: u32) -> Vec<u8> {
    let mut r = rng(((producer as u64) << 32 | seq as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let len = match r() % 20 {
        0 => (r() % (8 << 20)) as usize,       // up to 8 MiB
        1..=4 => (r() % (256 << 10)) as usize, // up to 256 KiB
        5 => 0,
        _ => (r() % 4096) as usize,
    };
    let mut out = Vec::with_capacity(16 + len);
    out.extend_from_slice(&producer.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(len as u64).to_le_bytes());
    let mut fill = rng(seq as u64 + 7);
    out.extend((0..len).map(|_| fill() as u8));
    out
}

/// The consumers' eventfd table: one eventfd per producer, by connection index.
struct Eventfds<'a>(&'a [OwnedFd]);

impl Notify for Eventfds<'_> {
    fn wake(&mut self, region: &Region, conn: u32, conn_gen: u32) {
        if slot::needs_wake(region.pool_side(), conn, conn_gen) {
            if let Some(fd) = self.0.get(conn as usize) {
                let _ = nix::unistd::write(fd.as_fd(), &1u64.to_ne_bytes());
            }
        }
    }
}

/// A pool worker's part, through the channel's pool-side operations as poold's workers use
/// them: reads each request as it streams in, checks it byte for byte against what its
/// producer must have sent, and streams it back as the reply (head: the first 16 bytes),
/// within the credit window.
fn consumer(region: &Region, index: u32, eventfds: &[OwnedFd]) -> ! {
    let notify = RefCell::new(Eventfds(eventfds));
    loop {
        let id = slot::wait_for_work(region.pool_side(), index, &mut Spin::off(), &|| false, None)
            .expect("work");
        let (mut body, mut answer) = incoming::take_raw(region, id, &notify).expect("request");
        // Read the request whole, as it arrives.
        let mut msg = vec![0u8; body.total() as usize];
        let whole = body.read_exact(&mut msg).is_ok();
        if whole {
            let producer = u32::from_le_bytes(msg[0..4].try_into().unwrap());
            let seq = u32::from_le_bytes(msg[4..8].try_into().unwrap());
            if msg != payload(producer, seq) {
                eprintln!("consumer {index}: corrupt payload {producer}/{seq}");
                std::process::exit(3);
            }
        }
        // Stream it back: the head, then the rest as credit allows.
        let head = msg.len().min(16);
        let answered = whole
            && answer
                .start(&msg[..head])
                .and_then(|()| answer.write(&msg[head..]))
                .is_ok();
        let handover = if answered {
            answer.end()
        } else {
            incoming::fail(region, id, slot::FailReason::Other)
        };
        // Only now: a consumer killed before this is found holding the request.
        slot::clear_current(region.pool_side(), index);
        if let Handover::Deliver { conn, conn_gen } = handover {
            notify.borrow_mut().wake(region, conn, conn_gen);
        }
    }
}

/// One message of a producer on its way: its request streams out, its reply streams back.
struct Exchange {
    id: SlotId,
    seq: u32,
    msg: Vec<u8>,
    out: RequestOut,
    reader: StreamReader,
    reply: Vec<u8>,
}

enum Step {
    /// Something moved.
    Progress,
    /// Waiting for the consumer (asked to be woken).
    Idle,
    /// Finished: Some(true) delivered and checked, Some(false) failed by the pool side.
    Ended(bool),
}

impl Exchange {
    /// Does what nginx does for a request in flight: writes what the window allows, reads
    /// what is published of the reply, frees what it read.
    fn step(&mut self, region: &Region, ask: bool) -> Result<Step, String> {
        let id = self.id;
        let state = slot::state_of(region, id);
        let mut moved = false;
        if matches!(
            state,
            Some(SlotState::Queued | SlotState::Running | SlotState::Streaming)
        ) && !self.out.written_all()
        {
            // The module's rules, from the channel: nothing beyond the head's chunk while
            // queued, the window after, three quarters of the arena at most.
            if let Room::Bytes(room) = self.out.room(region, state == Some(SlotState::Queued)) {
                let at = self.out.written() as usize;
                let n = (room as usize).min(self.msg.len() - at);
                let (taken, _) = self.out.write(region, &self.msg[at..at + n]);
                moved |= taken > 0;
                stream::notify_worker(region, id);
            }
        }
        match state {
            Some(SlotState::Failed) => return Ok(Step::Ended(false)),
            Some(SlotState::Streaming) | Some(SlotState::Done) => {
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = self
                        .reader
                        .read(region, id, Direction::Response, &mut buf)
                        .map_err(|e| e.to_string())?;
                    if n == 0 {
                        break;
                    }
                    self.reply.extend_from_slice(&buf[..n]);
                    moved = true;
                    if self
                        .reader
                        .release(region, id, Direction::Response, self.reader.position())
                    {
                        stream::notify_worker(region, id);
                    }
                }
                if state == Some(SlotState::Done) {
                    let (_, len) = slot::response(region, id).unwrap();
                    if len != self.reply.len() as u64 || self.reply != self.msg {
                        return Err(format!("reply for {} is not its own", self.seq));
                    }
                    return Ok(Step::Ended(true));
                }
            }
            Some(SlotState::Queued) | Some(SlotState::Running) => {}
            other => return Err(format!("message {} in state {other:?}", self.seq)),
        }
        if moved {
            return Ok(Step::Progress);
        }
        if ask {
            stream::want_nginx_wake(region, id);
        }
        Ok(Step::Idle)
    }
}

/// Sends PER_PRODUCER messages, streaming each in windows as nginx does; every one must come
/// back exactly once, as its own reply or (when its consumer was killed) as a failure. Exit
/// status: 0 when so.
fn producer(region: &Region, me: u32, conn_gen: u32, eventfd: &OwnedFd, may_fail: bool) -> i32 {
    let mut inflight: Vec<Exchange> = Vec::new();
    let mut seen = vec![0u32; PER_PRODUCER as usize];
    let mut next = 0u32;
    let mut idle = 0u32;
    while next < PER_PRODUCER || !inflight.is_empty() {
        while next < PER_PRODUCER && inflight.len() < IN_FLIGHT {
            let msg = payload(me, next);
            let head = &msg[..msg.len().min(16)];
            let Ok(out) = outgoing::open(region, me, conn_gen, head, msg.len() as u64) else {
                break;
            };
            assert!(out.enqueue(region, None));
            slot::wake_workers(region.nginx_side(), 1);
            inflight.push(Exchange {
                id: out.id(),
                seq: next,
                msg,
                out,
                reader: StreamReader::new(),
                reply: Vec::new(),
            });
            next += 1;
        }
        if inflight.is_empty() {
            // Nothing of ours in flight, yet no slot or chunk: only other producers can hold
            // them, and they finish; a leak would stall here, so bound it.
            idle += 1;
            if idle > 30_000 {
                eprintln!("producer {me}: no slot or chunk for 30 s with nothing in flight");
                return 7;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
            continue;
        }
        idle = 0;
        // One pass; if nothing moved, ask for wake-ups and look once more before sleeping.
        let mut moved = false;
        for ask in [false, true] {
            let mut i = 0;
            while i < inflight.len() {
                match inflight[i].step(region, ask) {
                    Err(e) => {
                        eprintln!("producer {me}: {e}");
                        return 4;
                    }
                    Ok(Step::Progress) => {
                        moved = true;
                        i += 1;
                    }
                    Ok(Step::Idle) => i += 1,
                    Ok(Step::Ended(delivered)) => {
                        if !delivered && !may_fail {
                            eprintln!("producer {me}: message failed with no consumer killed");
                            return 8;
                        }
                        let x = inflight.swap_remove(i);
                        slot::release(region.nginx_side(), x.id);
                        seen[x.seq as usize] += 1;
                        moved = true;
                    }
                }
            }
            if moved {
                break;
            }
        }
        if moved {
            continue;
        }
        // Bounded: a lost wake-up fails the test instead of hanging it.
        let mut fds = [nix::poll::PollFd::new(
            eventfd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(30_000u16)) == Ok(0) {
            eprintln!(
                "producer {me}: no progress for 30 s with {} in flight",
                inflight.len()
            );
            return 6;
        }
        let mut b = [0u8; 8];
        let _ = nix::unistd::read(eventfd.as_raw_fd(), &mut b);
        slot::clear_wake(region.nginx_side(), me);
    }
    if seen.iter().all(|n| *n == 1) {
        0
    } else {
        5
    }
}

/// One region for PRODUCERS connections and CONSUMERS workers, an eventfd per producer, and the
/// connection generations.
fn setup(name: &str) -> (Region, Vec<OwnedFd>, Vec<u32>) {
    let g = Geometry {
        slots: 64,
        chunk_size: 16384,
        chunks: 4096,
        max_conns: PRODUCERS,
        max_workers: CONSUMERS,
    };
    let region = Region::create(name, g, std::process::id()).unwrap();
    let eventfds: Vec<OwnedFd> = (0..PRODUCERS)
        .map(|_| {
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC)
                .unwrap()
                .into()
        })
        .collect();
    let gens: Vec<u32> = (0..PRODUCERS)
        .map(|p| slot::open_conn(region.pool_side(), p, 0).unwrap())
        .collect();
    (region, eventfds, gens)
}

/// Forks a child that runs `f` and exits with its result (and dies with the test).
fn spawn(f: &dyn Fn() -> i32) -> Pid {
    // SAFETY: the tests fork before starting any thread of their own; children only touch the
    // region, their eventfds and the allocator, then exit without returning.
    match unsafe { fork() }.unwrap() {
        ForkResult::Parent { child } => child,
        ForkResult::Child => {
            let _ = nix::sys::prctl::set_pdeathsig(Some(Signal::SIGKILL));
            std::process::exit(f())
        }
    }
}

#[test]
fn producers_and_consumers_in_separate_processes_lose_and_duplicate_nothing() {
    let (region, eventfds, gens) = setup("stress");
    let consumers: Vec<Pid> = (0..CONSUMERS)
        .map(|c| spawn(&|| consumer(&region, c, &eventfds)))
        .collect();
    let producers: Vec<Pid> = (0..PRODUCERS)
        .map(|p| spawn(&|| producer(&region, p, gens[p as usize], &eventfds[p as usize], false)))
        .collect();
    // poold's scavenger, looking for lost slots and chunks all the time instead of after a death
    // (started after the forks, so no child inherits a thread's half-held lock): nobody dies
    // here, so it must never find one; were it to return a slot or chunk someone holds, it would
    // be handed out twice and a checksum or the final count would fail.
    let done = std::sync::atomic::AtomicBool::new(false);
    let (returned, idle_looks, mut failures) = std::thread::scope(|s| {
        let scavenger = s.spawn(|| {
            let (mut returned, mut idle_looks) = (0u32, 0u32);
            while !done.load(Ordering::Relaxed) {
                if let Ok(n) = scavenge::return_lost(&region) {
                    returned += n.slots + n.chunks;
                    idle_looks += 1;
                }
                std::thread::yield_now();
            }
            (returned, idle_looks)
        });
        let mut failures = Vec::new();
        for p in &producers {
            match waitpid(*p, None).unwrap() {
                WaitStatus::Exited(_, 0) => {}
                other => failures.push(format!("producer {other:?}")),
            }
        }
        done.store(true, Ordering::Relaxed);
        let (returned, idle_looks) = scavenger.join().unwrap();
        (returned, idle_looks, failures)
    });
    for c in &consumers {
        let _ = kill(*c, Signal::SIGKILL);
    }
    for c in consumers {
        match waitpid(c, None).unwrap() {
            WaitStatus::Signaled(_, Signal::SIGKILL, _) => {}
            other => failures.push(format!("consumer {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
    eprintln!("scavenger: {idle_looks} looks at an idle pool, {returned} slots or chunks returned");
    assert_eq!(
        returned, 0,
        "the scavenger took slots or chunks that were not lost"
    );
    let stats = &region.header().stats;
    assert_eq!(
        stats.completed.load(Ordering::Relaxed),
        (PRODUCERS * PER_PRODUCER) as u64
    );
    assert_eq!(
        stats.slots_in_use.load(Ordering::Relaxed),
        0,
        "every slot back"
    );
    assert_eq!(
        stats.chunks_in_use.load(Ordering::Relaxed),
        0,
        "the arena is wholly free"
    );
}

#[test]
fn consumers_and_producers_killed_at_random_lose_nothing_and_leak_nothing() {
    let (region, eventfds, mut gens) = setup("kill");
    let mut consumers: Vec<Pid> = (0..CONSUMERS)
        .map(|c| spawn(&|| consumer(&region, c, &eventfds)))
        .collect();
    let mut producers: Vec<Option<Pid>> = (0..PRODUCERS)
        .map(|p| {
            Some(spawn(&|| {
                producer(&region, p, gens[p as usize], &eventfds[p as usize], true)
            }))
        })
        .collect();
    // The reclaimer, doing poold's job: kill a consumer now and then, fail what it held, wake
    // the owner, fork a replacement; and a few times a producer (an nginx worker): reclaim its
    // slots and start it again under a new connection generation, so any completion meant for
    // the dead one is dropped.
    let mut r = rng(42);
    let mut failures = Vec::new();
    let mut kills = 0;
    let mut producer_kills = 0;
    while producers.iter().any(Option::is_some) {
        std::thread::sleep(std::time::Duration::from_micros(500 + r() % 5000));
        if producer_kills < 3 && r().is_multiple_of(8) {
            let p = (r() % PRODUCERS as u64) as usize;
            if let Some(pid) = producers[p] {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
                slot::close_conn(region.pool_side(), p as u32);
                slot::reclaim_conn(region.pool_side(), p as u32, gens[p]);
                gens[p] = slot::open_conn(region.pool_side(), p as u32, 0).unwrap();
                let gen = gens[p];
                producers[p] = Some(spawn(&|| {
                    producer(&region, p as u32, gen, &eventfds[p], true)
                }));
                producer_kills += 1;
            }
        }
        let c = (r() % CONSUMERS as u64) as usize;
        let _ = kill(consumers[c], Signal::SIGKILL);
        let _ = waitpid(consumers[c], None);
        kills += 1;
        slot::reclaim_worker(region.pool_side(), c as u32, slot::FailReason::WorkerDied);
        // As poold does: the dead consumer may have taken a producer's wake-up flag without
        // writing its eventfd; wake every producer.
        for fd in &eventfds {
            let _ = nix::unistd::write(fd.as_fd(), &1u64.to_ne_bytes());
        }
        consumers[c] = spawn(&|| consumer(&region, c as u32, &eventfds));
        for p in producers.iter_mut() {
            if let Some(pid) = *p {
                match waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)).unwrap() {
                    WaitStatus::StillAlive => {}
                    WaitStatus::Exited(_, 0) => *p = None,
                    other => {
                        failures.push(format!("producer {other:?}"));
                        *p = None;
                    }
                }
            }
        }
    }
    for c in &consumers {
        let _ = kill(*c, Signal::SIGKILL);
        let _ = waitpid(*c, None);
    }
    assert!(failures.is_empty(), "{failures:?}");
    assert!(kills > 10, "the test killed consumers {kills} times");
    assert!(producer_kills > 0, "the test killed no producer");
    let stats = &region.header().stats;
    let (done, failed) = (
        stats.completed.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
    );
    assert!(
        done + failed >= (PRODUCERS * PER_PRODUCER) as u64,
        "{done} done, {failed} failed"
    );
    eprintln!(
        "{kills} consumer and {producer_kills} producer kills: {done} delivered, {failed} failed"
    );
    // Whole chains come back through the slots' anchors; a process killed between taking a chunk
    // off the free list and linking it (or unlinking one and putting it back) loses that one, and
    // one killed between taking a slot and marking it (or marking it free and putting it back)
    // loses that slot: poold's scavenger returns them now that the pool is idle.
    let lost = scavenge::return_lost(&region).expect("the pool is idle");
    eprintln!(
        "{} slots and {} chunks lost with killed processes, returned",
        lost.slots, lost.chunks
    );
    assert_eq!(
        stats.slots_in_use.load(Ordering::Relaxed),
        0,
        "every slot back"
    );
    assert_eq!(
        free_slots(&region),
        region.geometry().slots,
        "every slot free once"
    );
    assert_eq!(
        stats.chunks_in_use.load(Ordering::Relaxed),
        0,
        "the arena is wholly free"
    );
    assert_eq!(
        free_chunks(&region),
        region.geometry().chunks,
        "every chunk free once"
    );
}

/// Takes every chunk off the free list (each must come off once) and counts them.
fn free_chunks(region: &Region) -> u32 {
    let g = region.geometry();
    take_all(&region.header().chunk_free, g.chunks, "chunk", |i| {
        region.chunk_head(i).map(|c| &c.next_free)
    })
}

/// Takes every slot off the free list (each must come off once, marked Free) and counts them.
fn free_slots(region: &Region) -> u32 {
    let g = region.geometry();
    for i in 0..g.slots {
        let state = slot::view(region, i).and_then(|v| v.state);
        assert_eq!(state, Some(slot::SlotState::Free), "slot {i}");
    }
    take_all(&region.header().slot_free, g.slots, "slot", |i| {
        region.slot(i).map(|s| &s.next_free)
    })
}

fn take_all<'r>(
    head: &std::sync::atomic::AtomicU64,
    count: u32,
    what: &str,
    link: impl Fn(u32) -> Option<&'r std::sync::atomic::AtomicU32>,
) -> u32 {
    let mut seen = vec![false; count as usize];
    while let Some(i) = ngx_pool_channel::freelist::pop(head, count, &link) {
        assert!(
            !std::mem::replace(&mut seen[i as usize], true),
            "{what} {i} listed twice"
        );
    }
    seen.iter().filter(|s| **s).count() as u32
}
