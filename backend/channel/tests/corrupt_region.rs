//! Property: a region whose tables hold arbitrary bytes never makes a reader panic, hang or read
//! out of bounds. Every operation either works on what it finds or reports failure.
//!
//! Bounded and deterministic (a seeded xorshift generator), so CI runs it on every change.

use ngx_pool_channel::chain::{free_chain, read_chain, ChainWriter};
use ngx_pool_channel::message::{decode_request, decode_response};
use ngx_pool_channel::slot::{self, SlotId};
use ngx_pool_channel::{queue, Geometry, Region};
use std::io::{Seek, SeekFrom, Write};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn geometry() -> Geometry {
    Geometry {
        slots: 16,
        chunk_size: 1024,
        chunks: 64,
        max_conns: 4,
        max_workers: 4,
    }
}

/// Overwrites `count` random spans after the header with random bytes, through the memfd (as a
/// buggy or malicious peer would, behind our back).
fn scribble(region: &Region, rng: &mut Rng, count: usize) {
    let g = region.geometry();
    let start = g.slots_offset();
    let len = g.region_size() - start;
    let mut file = std::fs::File::from(region.fd().try_clone_to_owned().unwrap());
    for _ in 0..count {
        let at = start + rng.below(len);
        let n = (rng.below(256) + 1).min(g.region_size() - at);
        let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        file.seek(SeekFrom::Start(at)).unwrap();
        file.write_all(&bytes).unwrap();
    }
}

/// Does everything a reader on either side does, on whatever the region holds.
fn exercise(region: &Region, rng: &mut Rng) {
    let g = region.geometry();
    for _ in 0..64 {
        let id = SlotId {
            index: rng.below(g.slots as u64 + 4) as u32,
            gen: rng.next() as u32,
        };
        let _ = slot::state_of(region, id);
        if let Some((head, len)) = slot::response(region, id) {
            let _ = read_chain(region, head, len).map(|b| decode_response(&b).is_ok());
        }
        if let Some((head, len)) = slot::request(region, id) {
            let _ = read_chain(region, head, len).map(|b| decode_request(&b).is_ok());
        }
        let _ = read_chain(region, rng.next() as u32, rng.below(1 << 16));
        let _ = slot::abandon(region, id);
        let _ = slot::release(region, id);
    }
    if let Some(id) = slot::alloc(region, 0, 1) {
        let mut w = ChainWriter::new(region);
        let _ = w.append(&[1u8; 3000]);
        let (h, l) = w.finish();
        let _ = slot::submit(region, id, h, l);
    }
    // Bounded: a corrupt queue may hand out garbage, but never more than it has cells for.
    for _ in 0..g.queue_cap() * 2 {
        let Some(id) = slot::take(region, rng.below(g.max_workers as u64) as u32) else {
            break;
        };
        let _ = slot::finish(region, id, 0, 0);
        let _ = slot::needs_wake(region, rng.below(8) as u32, rng.next() as u32);
    }
    let _ = queue::push(region, rng.next());
    let _ = queue::pop(region);
    let _ = slot::reclaim_conn(region, rng.below(4) as u32, rng.next() as u32);
    let _ = slot::reclaim_worker(region, rng.below(6) as u32, slot::FailReason::WorkerDied);
    let _ = slot::running_since(region, rng.below(6) as u32);
    free_chain(region, rng.below(g.chunks as u64 + 2) as u32);
    for i in 0..g.slots + 2 {
        let _ = slot::view(region, i);
    }
}

#[test]
fn arbitrary_bytes_in_the_tables_never_panic_or_hang() {
    let mut rng = Rng(0x2545F4914F6CDD1D);
    for round in 0..300 {
        let region = Region::create("fuzz", geometry(), 1).unwrap();
        // Some legitimate traffic first, so the corruption lands on live structures too.
        exercise(&region, &mut rng);
        scribble(&region, &mut rng, 1 + round % 40);
        exercise(&region, &mut rng);
        let attached = Region::attach(region.fd().try_clone_to_owned().unwrap()).unwrap();
        exercise(&attached, &mut rng);
    }
}

#[test]
fn a_corrupt_header_is_refused_at_attach() {
    let mut rng = Rng(7);
    for _ in 0..200 {
        let region = Region::create("hdr", geometry(), 1).unwrap();
        let mut file = std::fs::File::from(region.fd().try_clone_to_owned().unwrap());
        let at = rng.below(64);
        file.seek(SeekFrom::Start(at)).unwrap();
        file.write_all(&[rng.next() as u8 | 1, rng.next() as u8])
            .unwrap();
        // Either the header still validates (the bytes hit padding or were equal), or attach says
        // why; it never panics.
        let _ = Region::attach(region.fd().try_clone_to_owned().unwrap());
    }
}
