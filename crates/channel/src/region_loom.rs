//! The region under loom: the same tables and accessors as [`crate::region`], on the heap, so
//! loom can check every interleaving of the protocol code above it. Chunk payloads sit in
//! loom's `UnsafeCell`s of [`GRAIN`] bytes each, so a payload read that is not ordered after
//! its write (a missing Release/Acquire) is reported as a data race. (Models write in multiples
//! of the grain: a reader and a writer on different bytes of one cell are not a race.)

use crate::layout::{Cell, ChunkHead, Conn, Geometry, Header, Slot, WorkerEntry};
use crate::sync::Ordering;
use loom::cell::UnsafeCell;
use std::io;

pub struct Region {
    geometry: Geometry,
    header: Box<Header>,
    slots: Box<[Slot]>,
    conns: Box<[Conn]>,
    workers: Box<[WorkerEntry]>,
    cells: Box<[Cell]>,
    task_cells: Box<[Cell]>,
    completions: Box<[Cell]>,
    chunk_heads: Box<[ChunkHead]>,
    /// Chunk `i`'s payload is cells `i * per_chunk ..`, each GRAIN bytes.
    payloads: Box<[UnsafeCell<[u8; GRAIN]>]>,
}

pub const GRAIN: usize = 16;

fn table<T: Default>(n: u32) -> Box<[T]> {
    (0..n).map(|_| T::default()).collect()
}

impl Region {
    pub fn create(_name: &str, geometry: Geometry, poold_pid: u32) -> io::Result<Region> {
        let g = geometry;
        let region = Region {
            geometry: g,
            header: Box::new(Header::new(g, poold_pid)),
            slots: table(g.slots),
            conns: table(g.max_conns),
            workers: table(g.max_workers),
            cells: table(g.queue_cap()),
            task_cells: table(g.queue_cap()),
            completions: table(g.max_conns * g.completion_cap()),
            chunk_heads: table(g.chunks),
            payloads: (0..g.chunks as usize * (g.chunk_data() as usize).div_ceil(GRAIN))
                .map(|_| UnsafeCell::new([0u8; GRAIN]))
                .collect(),
        };
        for i in 0..g.slots {
            let next = if i + 1 < g.slots { i + 2 } else { 0 };
            region.slots[i as usize]
                .next_free
                .store(next, Ordering::Relaxed);
        }
        for i in 0..g.chunks {
            let next = if i + 1 < g.chunks { i + 2 } else { 0 };
            region.chunk_heads[i as usize]
                .next_free
                .store(next, Ordering::Relaxed);
        }
        region.header.slot_free.store(1, Ordering::Relaxed);
        region.header.chunk_free.store(1, Ordering::Relaxed);
        Ok(region)
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }
    pub fn header(&self) -> &Header {
        &self.header
    }
    pub fn slot(&self, index: u32) -> Option<&Slot> {
        self.slots.get(index as usize)
    }
    pub fn conn(&self, index: u32) -> Option<&Conn> {
        self.conns.get(index as usize)
    }
    pub fn worker(&self, index: u32) -> Option<&WorkerEntry> {
        self.workers.get(index as usize)
    }
    pub fn cell(&self, index: u32) -> Option<&Cell> {
        self.cells.get(index as usize)
    }
    pub fn task_cell(&self, index: u32) -> Option<&Cell> {
        self.task_cells.get(index as usize)
    }
    pub fn completion_cell(&self, conn: u32, index: u32) -> Option<&Cell> {
        let cap = self.geometry.completion_cap();
        if conn >= self.geometry.max_conns || index >= cap {
            return None;
        }
        self.completions.get((conn * cap + index) as usize)
    }
    pub fn chunk_head(&self, index: u32) -> Option<&ChunkHead> {
        self.chunk_heads.get(index as usize)
    }
    /// Calls `f(cell, range in cell, range in buf)` for each grain cell `[at, at + n)` covers.
    fn cells(
        &self,
        index: u32,
        at: u32,
        n: usize,
        mut f: impl FnMut(&UnsafeCell<[u8; GRAIN]>, std::ops::Range<usize>, std::ops::Range<usize>),
    ) -> bool {
        let cap = self.geometry.chunk_data() as usize;
        let at = at as usize;
        if index >= self.geometry.chunks || at + n > cap {
            return false;
        }
        let base = index as usize * cap.div_ceil(GRAIN);
        let mut done = 0;
        while done < n {
            let off = at + done;
            let k = (GRAIN - off % GRAIN).min(n - done);
            f(
                &self.payloads[base + off / GRAIN],
                off % GRAIN..off % GRAIN + k,
                done..done + k,
            );
            done += k;
        }
        true
    }
    pub fn chunk_write(&self, index: u32, at: u32, data: &[u8]) -> bool {
        self.cells(index, at, data.len(), |c, inner, outer| {
            // SAFETY: loom checks that no other access to this cell is concurrent with ours.
            c.with_mut(|p| unsafe { (&mut *p)[inner].copy_from_slice(&data[outer]) })
        })
    }
    pub fn chunk_read(&self, index: u32, at: u32, out: &mut [u8]) -> bool {
        let n = out.len();
        self.cells(index, at, n, |c, inner, outer| {
            // SAFETY: as in `chunk_write`.
            c.with(|p| out[outer].copy_from_slice(unsafe { &(&*p)[inner] }))
        })
    }
}
