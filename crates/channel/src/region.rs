//! The mapped region: creation by poold, attachment by everyone else, and bounds-checked access.
//!
//! This module and [`crate::sys`] hold all of the crate's `unsafe`. The invariants they rest on:
//!
//! 1. The mapping is `MAP_SHARED`, at least `geometry.region_size()` bytes long, and lives as long
//!    as the `Region` (memmap2 unmaps on drop).
//! 2. Every table entry handed out as a reference is in bounds per the *local* copy of the
//!    geometry, taken once at attach time and validated; later writes to the header by another
//!    process cannot move our bounds.
//! 3. References are only ever to `#[repr(C)]` types made of atomics (interior mutability),
//!    so other processes writing to them concurrently is not a data race. Chunk payload bytes
//!    are never referenced: they are copied in and out with raw copies, and the ownership
//!    protocol (slot state, Acquire/Release) decides who may write them.

use crate::layout::{Cell, ChunkHead, Conn, Geometry, Header, Slot, WorkerEntry};
use crate::layout::{LAYOUT_VERSION, MAGIC};
use memmap2::{MmapOptions, MmapRaw};
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

/// Why a region could not be attached.
#[derive(Debug)]
pub enum AttachError {
    Io(io::Error),
    TooSmall(u64),
    BadMagic,
    Version {
        found: u32,
        expected: u32,
    },
    Geometry(&'static str),
    SizeMismatch {
        header: u64,
        file: u64,
    },
    /// The memfd could still shrink or grow: another process could truncate it under us
    /// (every access past the new end would be a SIGBUS) or change its size.
    Unsealed,
}

impl std::fmt::Display for AttachError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachError::Io(e) => write!(f, "{e}"),
            AttachError::TooSmall(n) => write!(f, "region of {n} bytes is too small"),
            AttachError::BadMagic => write!(f, "not an ngx-pool region (bad magic)"),
            AttachError::Version { found, expected } => write!(
                f,
                "region layout version {found}, this build speaks {expected}: rebuild poold and the module together"
            ),
            AttachError::Geometry(why) => write!(f, "bad geometry in region header: {why}"),
            AttachError::SizeMismatch { header, file } => {
                write!(f, "header says {header} bytes, memfd has {file}")
            }
            AttachError::Unsealed => write!(
                f,
                "region not sealed against shrinking and growing: refused"
            ),
        }
    }
}

impl std::error::Error for AttachError {}

impl From<io::Error> for AttachError {
    fn from(e: io::Error) -> Self {
        AttachError::Io(e)
    }
}

/// A mapped pool region.
pub struct Region {
    map: MmapRaw,
    fd: OwnedFd,
    geometry: Geometry,
    /// Where each section starts, computed once from `geometry` (every access needs one).
    at: Sections,
}

#[derive(Clone, Copy)]
struct Sections {
    slots: u64,
    conns: u64,
    workers: u64,
    queue: u64,
    task_queue: u64,
    completions: u64,
    chunk_heads: u64,
    chunks: u64,
}

impl Sections {
    fn of(g: &Geometry) -> Sections {
        Sections {
            slots: g.slots_offset(),
            conns: g.conns_offset(),
            workers: g.workers_offset(),
            queue: g.queue_offset(),
            task_queue: g.task_queue_offset(),
            completions: g.completions_offset(),
            chunk_heads: g.chunk_heads_offset(),
            chunks: g.chunks_offset(),
        }
    }
}

// SAFETY: the region is only accessed through atomics and raw byte copies (invariant 3), which are
// sound from any thread; `MmapRaw` itself is just an address and a length.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` hands out only `&` to atomic-only types.
unsafe impl Sync for Region {}

impl Region {
    /// Creates and initialises a fresh region in a new memfd (poold's side).
    pub fn create(name: &str, geometry: Geometry, poold_pid: u32) -> io::Result<Region> {
        geometry
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let cname = CString::new(format!("ngx-pool:{name}"))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in pool name"))?;
        let fd = memfd_create(
            &cname,
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
        )?;
        let file = File::from(fd);
        file.set_len(geometry.region_size())?;
        // Sealed before anyone else sees it: no process, whatever it holds the memfd as, can
        // shrink it (every mapping's access past the new end would be a SIGBUS, in nginx too)
        // or grow it, nor take the seals off.
        fcntl(
            file.as_raw_fd(),
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
            ),
        )?;
        let map = MmapOptions::new()
            .len(geometry.region_size() as usize)
            .map_raw(&file)?;
        // SAFETY: the mapping is fresh, zero-filled, exclusively ours (not yet shared) and at least
        // `size_of::<Header>()` bytes; `Header` is `repr(C)` and its zero-initialised atomics are
        // valid, so writing a whole value over it is sound.
        unsafe {
            std::ptr::write(
                map.as_mut_ptr().cast::<Header>(),
                Header::new(geometry, poold_pid),
            )
        };
        let region = Region {
            map,
            fd: file.into(),
            geometry,
            at: Sections::of(&geometry),
        };
        region.init_tables();
        Ok(region)
    }

    /// Maps a region received from poold and validates its header (an nginx worker's side).
    pub fn attach(fd: OwnedFd) -> Result<Region, AttachError> {
        let file = File::from(fd);
        let seals = fcntl(file.as_raw_fd(), FcntlArg::F_GET_SEALS).map_err(io::Error::from)?;
        let needed = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        if !SealFlag::from_bits_truncate(seals).contains(needed) {
            return Err(AttachError::Unsealed);
        }
        let file_len = file.metadata()?.len();
        if file_len < size_of::<Header>() as u64 {
            return Err(AttachError::TooSmall(file_len));
        }
        let map = MmapOptions::new().len(file_len as usize).map_raw(&file)?;
        // SAFETY: the mapping holds at least a `Header` (checked above). We copy plain integer
        // fields out with unaligned-safe reads of a page-aligned address; concurrent writes to
        // them by a buggy peer could only give us wrong numbers, which we validate next.
        let (magic, version, geometry, region_size) = unsafe {
            let h = map.as_ptr().cast::<Header>();
            (
                std::ptr::read_volatile(std::ptr::addr_of!((*h).magic)),
                std::ptr::read_volatile(std::ptr::addr_of!((*h).version)),
                std::ptr::read_volatile(std::ptr::addr_of!((*h).geometry)),
                std::ptr::read_volatile(std::ptr::addr_of!((*h).region_size)),
            )
        };
        if magic != MAGIC {
            return Err(AttachError::BadMagic);
        }
        if version != LAYOUT_VERSION {
            return Err(AttachError::Version {
                found: version,
                expected: LAYOUT_VERSION,
            });
        }
        geometry.validate().map_err(AttachError::Geometry)?;
        if region_size != geometry.region_size() || file_len < region_size {
            return Err(AttachError::SizeMismatch {
                header: region_size,
                file: file_len,
            });
        }
        Ok(Region {
            map,
            fd: file.into(),
            geometry,
            at: Sections::of(&geometry),
        })
    }

    /// Links every slot and chunk into its free list and primes the queue's sequence numbers.
    fn init_tables(&self) {
        let g = self.geometry;
        for i in 0..g.slots {
            let next = if i + 1 < g.slots { i + 2 } else { 0 };
            self.slot(i)
                .unwrap()
                .next_free
                .store(next, Ordering::Relaxed);
        }
        for i in 0..g.chunks {
            let next = if i + 1 < g.chunks { i + 2 } else { 0 };
            self.chunk_head(i)
                .unwrap()
                .next_free
                .store(next, Ordering::Relaxed);
        }
        let h = self.header();
        h.slot_free.store(1, Ordering::Relaxed);
        h.chunk_free.store(1, Ordering::Relaxed);
        // Release: publishes the initialised tables to whoever attaches after the fd is sent.
        std::sync::atomic::fence(Ordering::Release);
    }

    /// Checks what no correct process ever changes or lets out of range: the header's identity
    /// (magic, version, geometry, size as this process validated them), the free lists' heads
    /// and the queues' spans. A failure means some process wrote over the region (a handler's
    /// stray or hostile writes): the caller stops using it, and poold makes a new one.
    pub fn verify(&self) -> Result<(), String> {
        let h = self.header();
        // SAFETY: the plain header fields are read with volatile copies of a mapping that holds
        // a Header (invariant 1); another process writing them concurrently can only make the
        // values wrong, which is what this looks for.
        let (magic, version, geometry, size) = unsafe {
            let p = self.map.as_ptr().cast::<Header>();
            (
                std::ptr::read_volatile(std::ptr::addr_of!((*p).magic)),
                std::ptr::read_volatile(std::ptr::addr_of!((*p).version)),
                std::ptr::read_volatile(std::ptr::addr_of!((*p).geometry)),
                std::ptr::read_volatile(std::ptr::addr_of!((*p).region_size)),
            )
        };
        let g = self.geometry;
        if magic != MAGIC || version != LAYOUT_VERSION {
            return Err("the header's magic or version was overwritten".into());
        }
        if geometry != g || size != g.region_size() {
            return Err("the header's geometry was overwritten".into());
        }
        let head_in = |word: u64, count: u32| (word & 0xffff_ffff) <= u64::from(count);
        if !head_in(h.slot_free.load(Ordering::Relaxed), g.slots) {
            return Err("the slots' free list points outside the table".into());
        }
        if !head_in(h.chunk_free.load(Ordering::Relaxed), g.chunks) {
            return Err("the chunks' free list points outside the arena".into());
        }
        let cap = u64::from(g.queue_cap());
        for (name, enq, deq) in [
            ("request", &h.enqueue_pos, &h.dequeue_pos),
            ("task", &h.task_enqueue_pos, &h.task_dequeue_pos),
        ] {
            // Dequeue first: a consumer passes a position only after its producer did, so read
            // in that order the span can only look smaller than it is, never out of range.
            let d = deq.load(Ordering::Acquire);
            let e = enq.load(Ordering::Acquire);
            if e.wrapping_sub(d) > cap {
                return Err(format!("the {name} queue's positions are out of range"));
            }
        }
        Ok(())
    }

    /// The geometry as validated when this process created or attached the region.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The memfd, to pass to another process.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn header(&self) -> &Header {
        // SAFETY: invariant 1 (the mapping holds a Header) and 3 (we only use its atomics after
        // attach; the plain fields were copied out and validated).
        unsafe { &*self.map.as_ptr().cast::<Header>() }
    }

    /// Entry `index` of a table of `count` `T`s at `offset`, or `None` out of bounds.
    fn entry<T>(&self, offset: u64, count: u32, index: u32) -> Option<&T> {
        if index >= count {
            return None;
        }
        let at = offset + index as u64 * size_of::<T>() as u64;
        debug_assert!(at + size_of::<T>() as u64 <= self.geometry.region_size());
        // SAFETY: `index < count` and the table lies inside the mapping by the validated geometry
        // (invariants 1 and 2); sections are 128-byte aligned and T's size keeps entries aligned;
        // T is an atomic-only repr(C) type (invariant 3).
        Some(unsafe { &*self.map.as_ptr().add(at as usize).cast::<T>() })
    }

    pub fn slot(&self, index: u32) -> Option<&Slot> {
        let g = self.geometry;
        self.entry(self.at.slots, g.slots, index)
    }

    pub fn conn(&self, index: u32) -> Option<&Conn> {
        let g = self.geometry;
        self.entry(self.at.conns, g.max_conns, index)
    }

    pub fn worker(&self, index: u32) -> Option<&WorkerEntry> {
        let g = self.geometry;
        self.entry(self.at.workers, g.max_workers, index)
    }

    pub fn cell(&self, index: u32) -> Option<&Cell> {
        let g = self.geometry;
        self.entry(self.at.queue, g.queue_cap(), index)
    }

    /// Cell `index` of the task queue.
    pub fn task_cell(&self, index: u32) -> Option<&Cell> {
        let g = self.geometry;
        self.entry(self.at.task_queue, g.queue_cap(), index)
    }

    /// Cell `index` of connection `conn`'s completion ring.
    pub fn completion_cell(&self, conn: u32, index: u32) -> Option<&Cell> {
        let g = self.geometry;
        let cap = g.completion_cap();
        if conn >= g.max_conns || index >= cap {
            return None;
        }
        self.entry(self.at.completions, g.max_conns * cap, conn * cap + index)
    }

    pub fn chunk_head(&self, index: u32) -> Option<&ChunkHead> {
        let g = self.geometry;
        self.entry(self.at.chunk_heads, g.chunks, index)
    }

    fn chunk_offset(&self, index: u32) -> usize {
        let g = self.geometry;
        (self.at.chunks + index as u64 * g.chunk_size as u64) as usize
    }

    /// Copies `data` into chunk `index`'s payload at `at`. Returns false if out of bounds.
    ///
    /// The caller must own the chunk (it took it from the free list and has not published it).
    pub fn chunk_write(&self, index: u32, at: u32, data: &[u8]) -> bool {
        let cap = self.geometry.chunk_data() as usize;
        if index >= self.geometry.chunks || at as usize > cap || data.len() > cap - at as usize {
            return false;
        }
        let dst = self.chunk_offset(index) + at as usize;
        // SAFETY: the destination range is inside chunk `index`'s payload (checked above, and the
        // chunk is inside the mapping by invariant 2). The payload is never referenced, only
        // copied, so no Rust reference aliases it; `data` is process-local memory.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.as_mut_ptr().add(dst), data.len())
        };
        true
    }

    /// The address of `len` payload bytes of chunk `index` from `at`, for a reader that hands
    /// them to the kernel without copying (nginx's output chain); `None` if out of bounds.
    ///
    /// The pointer is valid while this mapping lives; the bytes stay the reader's until it
    /// frees the chunk ([`crate::stream::StreamReader::release`]).
    pub fn chunk_ptr(&self, index: u32, at: u32, len: u32) -> Option<*const u8> {
        let cap = self.geometry.chunk_data();
        if index >= self.geometry.chunks || at > cap || len > cap - at {
            return None;
        }
        let off = self.chunk_offset(index) + at as usize;
        Some(self.map.as_ptr().wrapping_add(off))
    }

    /// The whole pages of chunk `index`'s payload, as (offset in the mapping, length); `None`
    /// for an index out of bounds or a chunk smaller than a page.
    fn chunk_pages(&self, index: u32) -> Option<(usize, usize)> {
        if index >= self.geometry.chunks {
            return None;
        }
        let page = crate::sys::page_size();
        let start = self.chunk_offset(index);
        let end = start + self.geometry.chunk_data() as usize;
        let first = start.next_multiple_of(page);
        let last = end - end % page;
        (first < last).then(|| (first, last - first))
    }

    /// Whether the first whole page of chunk `index`'s payload is in memory: the arena's pages
    /// are made when first written, and [`Region::chunk_discard`] gives them back.
    pub fn chunk_resident(&self, index: u32) -> bool {
        let Some((offset, _)) = self.chunk_pages(index) else {
            return false;
        };
        crate::sys::page_resident(self.map.as_ptr().wrapping_add(offset))
    }

    /// Gives the pages of chunk `index`'s payload back to the kernel (the memfd's backing, so
    /// for every process that maps it): afterwards they read as zeros, and the next write makes
    /// them again. False if out of bounds or the kernel refused.
    ///
    /// The caller must own the chunk (it took it from the free list and has not published it).
    pub fn chunk_discard(&self, index: u32) -> bool {
        let Some((offset, len)) = self.chunk_pages(index) else {
            return false;
        };
        // SAFETY: the range is whole pages inside chunk `index`'s payload (`chunk_pages`), which
        // the caller owns; payload bytes are never referenced (invariant 3), so no Rust
        // reference sees them change to zeros, and no other process reads or writes a chunk it
        // does not own.
        unsafe {
            self.map
                .unchecked_advise_range(memmap2::UncheckedAdvice::Remove, offset, len)
        }
        .is_ok()
    }

    /// Copies `out.len()` bytes of chunk `index`'s payload from `at` into `out`. Returns false if
    /// out of bounds.
    pub fn chunk_read(&self, index: u32, at: u32, out: &mut [u8]) -> bool {
        let cap = self.geometry.chunk_data() as usize;
        if index >= self.geometry.chunks || at as usize > cap || out.len() > cap - at as usize {
            return false;
        }
        let src = self.chunk_offset(index) + at as usize;
        // SAFETY: the source range is inside the mapping (checked above); we copy out into a
        // local buffer, so a concurrent writer can only make the bytes wrong, which the message
        // decoder validates.
        unsafe {
            std::ptr::copy_nonoverlapping(self.map.as_ptr().add(src), out.as_mut_ptr(), out.len())
        };
        true
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    pub(crate) fn small() -> Geometry {
        Geometry::for_tests(16, 64)
    }

    #[test]
    fn create_then_attach_sees_same_geometry() {
        let r = Region::create("t", small(), 1).unwrap();
        let fd = r.fd().try_clone_to_owned().unwrap();
        let a = Region::attach(fd).unwrap();
        assert_eq!(a.geometry(), small());
        assert!(a.slot(15).is_some() && a.slot(16).is_none());
        assert!(a.chunk_write(0, 0, b"hello"));
        let mut out = [0u8; 5];
        assert!(r.chunk_read(0, 0, &mut out));
        assert_eq!(&out, b"hello");
        assert!(!a.chunk_write(0, 1010, b"xxxxxxxxxxxxxxxxxxxxxxx"));
        assert!(!a.chunk_read(64, 0, &mut out));
    }

    fn sealed_memfd(len: u64) -> File {
        let fd = memfd_create(
            c"x",
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
        )
        .unwrap();
        let f = File::from(fd);
        f.set_len(len).unwrap();
        let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        fcntl(f.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals)).unwrap();
        f
    }

    #[test]
    fn verify_finds_a_region_written_over() {
        let r = Region::create("v", Geometry::for_tests(2, 64), 1).unwrap();
        assert_eq!(r.verify(), Ok(()));
        // What a hostile handler does: its mapping of the region, overwritten.
        let size = r.geometry().region_size() as usize;
        // SAFETY: the test's own region; nothing else uses it while it is overwritten.
        unsafe { std::ptr::write_bytes(r.map.as_mut_ptr(), 0xA5, size) };
        assert!(r.verify().is_err());
        let r = Region::create("v", Geometry::for_tests(2, 64), 1).unwrap();
        r.header().chunk_free.store(10_000, Ordering::Relaxed);
        assert!(r.verify().unwrap_err().contains("chunks' free list"));
        let r = Region::create("v", Geometry::for_tests(2, 64), 1).unwrap();
        r.header().enqueue_pos.store(1 << 40, Ordering::Relaxed);
        assert!(r.verify().unwrap_err().contains("request queue"));
    }

    #[test]
    fn attach_rejects_garbage() {
        assert!(matches!(
            Region::attach(sealed_memfd(4096).into()),
            Err(AttachError::BadMagic)
        ));
    }

    #[test]
    fn a_created_region_cannot_shrink_or_grow_and_an_unsealed_one_is_refused() {
        let r = Region::create("s", Geometry::for_tests(2, 64), 1).unwrap();
        let f = File::from(r.fd().try_clone_to_owned().unwrap());
        let size = r.geometry().region_size();
        assert!(f.set_len(size / 2).is_err(), "shrank");
        assert!(f.set_len(size + 4096).is_err(), "grew");
        let seals = fcntl(f.as_raw_fd(), FcntlArg::F_GET_SEALS).unwrap();
        assert!(SealFlag::from_bits_truncate(seals).contains(SealFlag::F_SEAL_SEAL));
        assert!(Region::attach(f.into()).is_ok());
        // The same bytes in a memfd that is not sealed: refused before anything is mapped.
        let fd = memfd_create(c"x", MemFdCreateFlag::MFD_CLOEXEC).unwrap();
        let plain = File::from(fd);
        plain.set_len(size).unwrap();
        assert!(matches!(
            Region::attach(plain.into()),
            Err(AttachError::Unsealed)
        ));
    }
}
