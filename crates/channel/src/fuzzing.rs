//! Support for the corruption property test and the `cargo fuzz` target: every operation a
//! reader on either side performs, run against whatever a region holds.
//!
//! Not part of the channel's API; public only so that `tests/corrupt_region.rs` and
//! `fuzz/fuzz_targets/region.rs` share one exerciser.

use crate::chain::{free_chain, read_chain};
use crate::message::{decode_request, decode_request_head, decode_response, decode_response_head};
use crate::slot::{self, SlotId};
use crate::stream::{self, Direction, StreamReader, StreamWriter};
use crate::{queue, Geometry, Region};
use std::io::{Seek, SeekFrom, Write};

/// A small deterministic generator (xorshift64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// A small region: every table fits a few pages, so corruption hits live entries often.
pub fn geometry() -> Geometry {
    Geometry::for_tests(16, 64)
}

/// Writes `bytes` at `at` (relative to the first table, wrapping) through the memfd, as a buggy
/// or malicious peer would, behind our back.
pub fn overwrite(region: &Region, at: u64, bytes: &[u8]) {
    let g = region.geometry();
    let start = g.slots_offset();
    let len = g.region_size() - start;
    let at = start + at % len;
    let n = (bytes.len() as u64).min(g.region_size() - at) as usize;
    let mut file = std::fs::File::from(region.fd().try_clone_to_owned().expect("dup memfd"));
    file.seek(SeekFrom::Start(at)).expect("seek");
    file.write_all(&bytes[..n]).expect("write");
}

/// Overwrites `count` random spans of the tables with random bytes.
pub fn scribble(region: &Region, rng: &mut Rng, count: usize) {
    for _ in 0..count {
        let at = rng.next_u64();
        let n = rng.below(256) + 1;
        let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
        overwrite(region, at, &bytes);
    }
}

fn read_stream(region: &Region, id: SlotId, dir: Direction, head_len: u64, rng: &mut Rng) {
    let mut r = StreamReader::new();
    let mut head = vec![0u8; head_len.min(4096) as usize];
    if let Ok(n) = r.read(region, id, dir, &mut head) {
        let _ = decode_request_head(&head[..n]);
        let _ = decode_response_head(&head[..n]);
    }
    for _ in 0..(rng.below(200)) {
        match r.next_piece(region, id, dir, rng.below(5000)) {
            Ok(Some(p)) => {
                let _ = region.chunk_ptr(p.chunk, p.offset, p.len);
            }
            _ => break,
        }
        r.release(region, id, dir, r.position());
    }
    let _ = stream::read_all(region, id, dir, rng.below(1 << 16));
}

/// Does everything a reader on either side does, on whatever the region holds.
pub fn exercise(region: &Region, rng: &mut Rng) {
    let g = region.geometry();
    for _ in 0..64 {
        let id = SlotId {
            index: rng.below(g.slots as u64 + 4) as u32,
            gen: rng.next_u64() as u32,
        };
        let _ = slot::state_of(region, id);
        if let Some((head, _)) = slot::response(region, id) {
            read_stream(region, id, Direction::Response, head.into(), rng);
        }
        if let Some((head, _)) = slot::request(region, id) {
            read_stream(region, id, Direction::Request, head.into(), rng);
        }
        if let Ok(b) = read_chain(region, rng.next_u64() as u32, rng.below(1 << 16)) {
            let _ = decode_response(&b);
            let _ = decode_request(&b);
        }
        let _ = slot::withdraw_queued(region.nginx_side(), id);
        let _ = slot::abandon(region.nginx_side(), id);
        let _ = slot::release(region.nginx_side(), id);
    }
    if let Some(id) = slot::alloc(region.nginx_side(), 0, 1) {
        let mut w = StreamWriter::new();
        for _ in 0..rng.below(4) {
            let n = w.room(region, id, Direction::Request).min(3000) as usize;
            let _ = w.append(region, id, Direction::Request, &vec![1u8; n]);
            w.publish(region, id, Direction::Request);
        }
        let _ = slot::submit(region.nginx_side(), id, 0, w.written());
    }
    // Bounded: a corrupt queue may hand out garbage, but never more than it has cells for.
    for _ in 0..g.queue_cap() * 2 {
        let Some(id) = slot::take(region.pool_side(), rng.below(g.max_workers as u64) as u32)
        else {
            break;
        };
        let _ = stream::write_all(region, id, Direction::Response, &[&[2u8; 1500]]);
        let _ = slot::start_streaming(region.pool_side(), id, 10);
        let _ = slot::finish(region.pool_side(), id, 0, 0);
        let _ = slot::needs_wake(
            region.pool_side(),
            rng.below(8) as u32,
            rng.next_u64() as u32,
        );
        let _ = stream::nginx_wants_wake(region, id);
    }
    let _ = queue::push(region, rng.next_u64());
    let _ = queue::pop(region);
    slot::post_completion(
        region.pool_side(),
        rng.below(6) as u32,
        SlotId::decode(rng.next_u64()),
    );
    let _ = slot::take_completions(region.nginx_side(), rng.below(6) as u32);
    let _ = slot::reclaim_conn(
        region.pool_side(),
        rng.below(4) as u32,
        rng.next_u64() as u32,
    );
    let _ = slot::reclaim_worker(
        region.pool_side(),
        rng.below(6) as u32,
        slot::FailReason::WorkerDied,
    );
    let _ = slot::running_since(region, rng.below(6) as u32);
    free_chain(region, rng.below(g.chunks as u64 + 2) as u32);
    let _ = crate::scavenge::return_lost(region);
    for i in 0..g.slots + 2 {
        let _ = slot::view(region, i);
    }
}
