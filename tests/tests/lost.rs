//! poold returning what an nginx worker killed mid-operation left on no list.
//!
//! The test plays that nginx worker against a real poold: it attaches as the module does (the
//! real handshake, the real region), then "dies" inside the two-step windows no reclaim can see
//! into (a slot taken off its free list and not yet marked, a chunk taken off its list and not
//! yet linked), as a process killed there would leave them. poold must return both once the
//! pool is idle, and a real nginx attached afterwards must be served.

use ngx_pool_channel::freelist;
use ngx_pool_channel::handshake::{self, recv_frame, send_frame, Frame};
use ngx_pool_channel::layout::LAYOUT_VERSION;
use ngx_pool_channel::Region;
use ngx_pool_tests::{temp_prefix, Conf, ExternalPoold, Nginx, READY_TIMEOUT};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{connect, socket, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How many entries a free list holds, following its links (at most `count` hops).
fn listed<'r>(head: &AtomicU64, count: u32, link: impl Fn(u32) -> Option<&'r AtomicU32>) -> u32 {
    let mut next = head.load(Ordering::Acquire) as u32;
    let mut n = 0;
    while next != 0 && n <= count {
        n += 1;
        next = link(next - 1).map_or(0, |l| l.load(Ordering::Relaxed));
    }
    n
}

fn listed_slots(r: &Region) -> u32 {
    listed(&r.header().slot_free, r.geometry().slots, |i| {
        r.slot(i).map(|s| &s.next_free)
    })
}

fn listed_chunks(r: &Region) -> u32 {
    listed(&r.header().chunk_free, r.geometry().chunks, |i| {
        r.chunk_head(i).map(|c| &c.next_free)
    })
}

/// Attaches to poold as an nginx worker does; returns the socket (its lifeline), its eventfd,
/// its connection index and the region.
fn attach_as_nginx_worker(poold: &ExternalPoold) -> (OwnedFd, OwnedFd, u32, Region) {
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    connect(sock.as_raw_fd(), &UnixAddr::new(&poold.socket).unwrap()).unwrap();
    let efd: OwnedFd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC)
        .unwrap()
        .into();
    let hello = Frame::new(handshake::HELLO, LAYOUT_VERSION, std::process::id(), 0);
    send_frame(&sock, hello, Some(&efd)).unwrap();
    let (welcome, memfd) = recv_frame(&sock, MsgFlags::empty()).unwrap().unwrap();
    assert_eq!(
        (welcome.kind, welcome.a),
        (handshake::WELCOME, handshake::WELCOME_OK)
    );
    let region = Region::attach(memfd.unwrap()).unwrap();
    (sock, efd, welcome.b, region)
}

#[test]
fn a_slot_and_a_chunk_lost_by_a_killed_nginx_worker_come_back_once_the_pool_is_idle() {
    let dir = temp_prefix();
    let poold = ExternalPoold::start(
        &dir,
        "lost",
        "builtin:echo",
        &["--workers", "1", "--queue", "4"],
    );
    let (sock, efd, conn, region) = attach_as_nginx_worker(&poold);
    let g = region.geometry();
    let h = region.header();
    assert_eq!(
        (listed_slots(&region), listed_chunks(&region)),
        (g.slots, g.chunks)
    );
    // Killed in `slot::alloc` after taking a slot off the free list, before marking it Filling:
    // its marker window is open, the slot is Free and on no list. And in a chunk allocation,
    // after taking the chunk off its list, before linking or counting it.
    let marker = &region.conn(conn).unwrap().slot_op;
    marker.store(marker.load(Ordering::Relaxed) | 1, Ordering::Release);
    freelist::pop(&h.slot_free, g.slots, |i| {
        region.slot(i).map(|s| &s.next_free)
    })
    .unwrap();
    freelist::pop(&h.chunk_free, g.chunks, |i| {
        region.chunk_head(i).map(|c| &c.next_free)
    })
    .unwrap();
    assert_eq!(
        (listed_slots(&region), listed_chunks(&region)),
        (g.slots - 1, g.chunks - 1)
    );
    // The process is gone: poold sees its socket close.
    drop((sock, efd));
    let deadline = Instant::now() + READY_TIMEOUT;
    while !poold
        .log_text()
        .contains("returned 1 request slot(s) and 1 arena chunk(s)")
    {
        assert!(
            Instant::now() < deadline,
            "poold did not return the lost slot and chunk:\n{}",
            poold.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Each back on its list once, and nothing counted as in use.
    assert_eq!(
        (listed_slots(&region), listed_chunks(&region)),
        (g.slots, g.chunks)
    );
    assert_eq!(h.stats.slots_in_use.load(Ordering::Relaxed), 0);
    assert_eq!(h.stats.chunks_in_use.load(Ordering::Relaxed), 0);
    // A real nginx on the same poold is served, with every slot at its disposal.
    let ng = Nginx::start(Conf::new(
        &format!("    pool lost external socket={};", poold.socket.display()),
        "    location /echo { pool_pass lost; }",
    ));
    assert_eq!(ng.get("/echo/after").status, 200);
    ng.finish();
    drop(poold);
    let _ = std::fs::remove_dir_all(&dir);
}
