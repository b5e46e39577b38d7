//! Loom models of the channel's concurrent protocols, run with
//! `RUSTFLAGS="--cfg loom" cargo test -p ngx-pool-channel --lib --release loom_`
//! (`scripts/test` does). Each model is a small scenario; loom runs it under every
//! interleaving (up to the preemption bound) and checks both the assertions and that every
//! payload access is ordered after the write it reads.

use crate::layout::Geometry;
use crate::queue;
use crate::region::{Region, GRAIN};
use crate::scavenge;
use crate::slot::{self, FailReason, Handover, SlotId, SlotState};
use crate::stream::{self, Direction, StreamReader, StreamWriter};
use crate::sync::Ordering;
use loom::sync::Arc;
use loom::thread;

fn geometry() -> Geometry {
    Geometry {
        slots: 2,
        chunk_size: 1024,
        chunks: 8,
        max_conns: 1,
        max_workers: 2,
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

/// A fresh region with connection 0 open and one small request queued on it.
fn queued_request() -> (Arc<Region>, u32, SlotId) {
    let r = Arc::new(Region::create("m", geometry(), 1).unwrap());
    let conn_gen = slot::open_conn(r.pool_side(), 0, 1).unwrap();
    let id = slot::alloc(r.nginx_side(), 0, conn_gen).unwrap();
    let n = stream::write_all(&r, id, Direction::Request, &[b"x"]).unwrap();
    assert!(slot::submit(r.nginx_side(), id, 0, n));
    (r, conn_gen, id)
}

fn in_use(r: &Region) -> (u64, u64) {
    let s = &r.header().stats;
    (
        s.slots_in_use.load(Ordering::Relaxed),
        s.chunks_in_use.load(Ordering::Relaxed),
    )
}

/// A pool worker that takes the queued request and answers it if it still can (one nginx
/// abandoned or withdrew meanwhile is popped and let go of instead).
fn answer_if_it_can(r: &Arc<Region>) -> thread::JoinHandle<()> {
    let r = r.clone();
    thread::spawn(move || {
        if let Some(id) = slot::take(r.pool_side(), 0) {
            let n = stream::write_all(&r, id, Direction::Response, &[b"y"]).unwrap();
            let _ = slot::finish(r.pool_side(), id, 0, n);
            slot::clear_current(r.pool_side(), 0);
        }
    })
}

/// Nothing is in use, and both slots can be taken again.
fn assert_all_free(r: &Region, conn_gen: u32) {
    assert_eq!(in_use(r), (0, 0));
    assert!(slot::alloc(r.nginx_side(), 0, conn_gen).is_some());
    assert!(slot::alloc(r.nginx_side(), 0, conn_gen).is_some());
}

/// A pool worker's whole turn: take, read the request, answer it.
fn serve_one(r: &Region, worker: u32) {
    let id = loop {
        if let Some(id) = slot::take(r.pool_side(), worker) {
            break id;
        }
        thread::yield_now();
    };
    let (_, len) = slot::request(r, id).unwrap();
    let req = stream::read_all(r, id, Direction::Request, len).unwrap();
    let mut reply = b"re:".to_vec();
    reply.extend_from_slice(&req);
    let n = stream::write_all(r, id, Direction::Response, &[&reply]).unwrap();
    slot::finish(r.pool_side(), id, 0, n);
    slot::clear_current(r.pool_side(), worker);
}

#[test]
fn loom_request_and_answer_cross_exactly_once_and_free_everything() {
    model(|| {
        let r = Arc::new(Region::create("m", geometry(), 1).unwrap());
        let conn_gen = slot::open_conn(r.pool_side(), 0, 1).unwrap();
        let w = {
            let r = r.clone();
            thread::spawn(move || serve_one(&r, 0))
        };
        let id = slot::alloc(r.nginx_side(), 0, conn_gen).unwrap();
        let n = stream::write_all(&r, id, Direction::Request, &[b"ping"]).unwrap();
        assert!(slot::submit(r.nginx_side(), id, 0, n));
        while slot::state_of(&r, id) != Some(SlotState::Done) {
            thread::yield_now();
        }
        let (_, len) = slot::response(&r, id).unwrap();
        assert_eq!(
            stream::read_all(&r, id, Direction::Response, len).unwrap(),
            b"re:ping"
        );
        w.join().unwrap();
        // The completion was posted for connection 0's ring: the nginx side finds it there.
        assert_eq!(slot::take_completions(r.nginx_side(), 0), Some(vec![id]));
        assert!(slot::release(r.nginx_side(), id));
        assert_eq!(in_use(&r), (0, 0));
    });
}

#[test]
fn loom_abandon_racing_the_answer_frees_the_slot_exactly_once() {
    model(|| {
        let (r, conn_gen, id) = queued_request();
        let w = answer_if_it_can(&r);
        // nginx gives up (client gone) while the worker may be answering.
        slot::abandon(r.nginx_side(), id);
        w.join().unwrap();
        // Whoever came second freed it.
        assert_all_free(&r, conn_gen);
    });
}

#[test]
fn loom_a_dead_worker_is_reclaimed_and_its_request_fails_once() {
    model(|| {
        let (r, _, id) = queued_request();
        // The worker takes it and "dies" (its thread ends) at an arbitrary point; poold then
        // reclaims. Either the request was taken and fails, or it is queued again.
        let w = {
            let r = r.clone();
            thread::spawn(move || {
                let _ = slot::take(r.pool_side(), 0);
            })
        };
        w.join().unwrap();
        match slot::reclaim_worker(r.pool_side(), 0, FailReason::WorkerDied) {
            Some((_, Handover::Deliver { .. })) => {
                assert_eq!(slot::state_of(&r, id), Some(SlotState::Failed));
            }
            _ => assert_eq!(slot::state_of(&r, id), Some(SlotState::Queued)),
        }
    });
}

#[test]
fn loom_two_producers_one_consumer_queue_loses_and_duplicates_nothing() {
    model(|| {
        let r = Arc::new(Region::create("m", geometry(), 1).unwrap());
        let ps: Vec<_> = [7u64, 9]
            .into_iter()
            .map(|v| {
                let r = r.clone();
                thread::spawn(move || queue::push(&r, v).unwrap())
            })
            .collect();
        let mut got = Vec::new();
        while got.len() < 2 {
            match queue::pop(&r) {
                Some(v) => got.push(v),
                None => thread::yield_now(),
            }
        }
        for p in ps {
            p.join().unwrap();
        }
        got.sort();
        assert_eq!(got, vec![7, 9]);
        assert_eq!(queue::pop(&r), None);
    });
}

#[test]
fn loom_a_stream_longer_than_its_window_arrives_intact_and_frees_behind_it() {
    model(|| {
        let r = Arc::new(Region::create("m", geometry(), 1).unwrap());
        let id = slot::alloc(r.nginx_side(), 0, 1).unwrap();
        // Lengths in multiples of the model's payload grain (see region_loom).
        let data: Vec<u8> = (0..2496u32).map(|i| (i % 251) as u8).collect();
        let window = r.geometry().stream_window();
        assert!((data.len() as u64) > window);
        let writer = {
            let (r, data) = (r.clone(), data.clone());
            thread::spawn(move || {
                let mut w = StreamWriter::new();
                let mut at = 0;
                while at < data.len() {
                    let room = w.room(&r, id, Direction::Response) as usize;
                    if room == 0 {
                        thread::yield_now();
                        continue;
                    }
                    let n = (room.min(data.len() - at).min(704) / GRAIN) * GRAIN;
                    w.append(&r, id, Direction::Response, &data[at..at + n])
                        .unwrap();
                    w.publish(&r, id, Direction::Response);
                    at += n;
                }
            })
        };
        let mut rd = StreamReader::new();
        let mut got = vec![0u8; data.len()];
        let mut n = 0;
        while n < got.len() {
            let k = rd.read(&r, id, Direction::Response, &mut got[n..]).unwrap();
            if k == 0 {
                thread::yield_now();
            }
            n += k;
            rd.release(&r, id, Direction::Response, rd.position());
        }
        writer.join().unwrap();
        assert_eq!(got, data);
        // Only the last chunk is left for the slot's release.
        assert_eq!(in_use(&r).1, 1);
        assert!(slot::release(r.nginx_side(), id));
        assert_eq!(in_use(&r), (0, 0));
    });
}

#[test]
fn loom_withdrawal_racing_a_pop_frees_slot_and_chunks_exactly_once() {
    model(|| {
        let (r, conn_gen, id) = queued_request();
        let w = answer_if_it_can(&r);
        // nginx: the request waited too long in the queue.
        let withdrawn = slot::withdraw_queued(r.nginx_side(), id);
        w.join().unwrap();
        if !withdrawn {
            // The worker had it: nginx reads the answer and frees the slot, as always.
            assert_eq!(slot::state_of(&r, id), Some(SlotState::Done));
            assert!(slot::release(r.nginx_side(), id));
        }
        assert_all_free(&r, conn_gen);
    });
}

#[test]
fn loom_a_lost_slot_comes_back_once_while_another_is_taken_and_given_back() {
    model(|| {
        let r = Arc::new(
            Region::create(
                "m",
                Geometry {
                    max_conns: 2,
                    ..geometry()
                },
                1,
            )
            .unwrap(),
        );
        let conn_gen = slot::open_conn(r.pool_side(), 0, 1).unwrap();
        // nginx worker 1 dies between taking a slot off the free list and marking it (its
        // marker window open), and poold reclaims it.
        let dead_gen = slot::open_conn(r.pool_side(), 1, 2).unwrap();
        let marker = &r.conn(1).unwrap().slot_op;
        marker.store(marker.load(Ordering::Relaxed) | 1, Ordering::Relaxed);
        crate::freelist::pop(&r.header().slot_free, 2, |i| {
            r.slot(i).map(|s| &s.next_free)
        })
        .unwrap();
        slot::close_conn(r.pool_side(), 1);
        slot::reclaim_conn(r.pool_side(), 1, dead_gen);
        // poold looks while nginx worker 0 takes the other slot and gives it back. (poold on the
        // spawned thread: loom explores it running at every point of the main thread's steps,
        // but not the other way round.)
        let poold = {
            let r = r.clone();
            thread::spawn(move || scavenge::return_lost(&r))
        };
        let id = slot::alloc(r.nginx_side(), 0, conn_gen).unwrap();
        assert!(slot::release(r.nginx_side(), id));
        let first = poold.join().unwrap();
        let lost_slot = scavenge::Returned {
            slots: 1,
            chunks: 0,
        };
        match first {
            Ok(got) => assert_eq!(got, lost_slot),
            Err(_) => assert_eq!(scavenge::return_lost(&r), Ok(lost_slot)),
        }
        // Both slots are on the list, once each (the one being taken was not returned too).
        assert_all_free(&r, conn_gen);
        assert_eq!(slot::alloc(r.nginx_side(), 0, conn_gen), None);
    });
}

#[test]
fn loom_a_task_taken_back_racing_its_runner_is_run_once_and_freed_once() {
    model(|| {
        let r = Arc::new(Region::create("m", geometry(), 1).unwrap());
        let side = r.pool_side();
        let id = slot::alloc_task(side, 0, 7, 0).unwrap();
        let n = stream::write_all(&r, id, Direction::Request, &[b"x"]).unwrap();
        assert!(slot::submit_task(side, id, n));
        let runner = {
            let r = r.clone();
            thread::spawn(move || {
                let Some(id) = slot::take(r.pool_side(), 1) else {
                    return false;
                };
                let n = stream::write_all(&r, id, Direction::Response, &[b"y"]).unwrap();
                let h = slot::finish(r.pool_side(), id, 0, n);
                slot::clear_current(r.pool_side(), 1);
                assert_eq!(h, Handover::ToCaller);
                true
            })
        };
        // The caller: take it back to run it itself, or wait for the runner's answer.
        let mine = slot::take_back(side, id);
        let ran = runner.join().unwrap();
        assert!(mine != ran, "run exactly once (mine {mine}, runner {ran})");
        if ran {
            assert_eq!(slot::state_of(&r, id), Some(SlotState::Done));
            assert_eq!(
                stream::read_all(&r, id, Direction::Response, 1).unwrap(),
                b"y"
            );
            assert!(slot::release_task(side, id));
        } else {
            // The stale queue entry is gone with the runner's pop; nothing is left.
            while slot::take(side, 1).is_some() {}
        }
        assert_eq!(in_use(&r), (0, 0));
        assert_eq!(r.header().tasks_in_use.load(Ordering::Relaxed), 0);
    });
}
