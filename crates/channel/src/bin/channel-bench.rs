//! Round trips between two processes: over the shared-memory channel, and over a unix socket
//! pair as the baseline, measured in the same run at several payload sizes.
//!
//! The "nginx" side sleeps in a blocking read of its eventfd (as an nginx worker sleeps in
//! epoll); the "pool worker" side sleeps on the region's futex. Each round trip sends `size`
//! bytes and receives `size` bytes back. Two channel variants: *copying reads* copy every byte
//! in and out on both sides (as many copies as the socket); *in-place reads* copy what each side
//! sends and take what it receives where it lies (as the module sends response chunks to the
//! client straight from the region). The socket side writes and reads as each becomes possible
//! (non-blocking, poll), as an event loop does.
//!
//! The three run in turns, `--rounds` times per size (each round with fresh processes), so that
//! a burst of load from elsewhere on a shared machine lands on one round of each rather than on
//! the whole of one: round trips per second are the median over the rounds, each ratio is the
//! median of the rounds' own ratios, and p50/p99 are over every round trip of every round.
//!
//! `channel-bench [--sizes 64,4096,65536,1048576] [--scale F] [--rounds N] [--spin-us N]` prints
//! a Markdown table; `--spin-us` is poold's `--spin` (default 100, adaptive as in poold; 0 never
//! polls).

use ngx_pool_channel::slot::{self, Handover, SlotState};
use ngx_pool_channel::spin::Spin;
use ngx_pool_channel::stream::{self, Direction, StreamReader};
use ngx_pool_channel::{Geometry, Region};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// The round trips of one round of one transport.
struct Round {
    rtts: Vec<Duration>,
    per_sec: f64,
}

/// One transport over all rounds.
#[derive(Default)]
struct Rounds {
    rtts: Vec<Duration>,
    per_sec: Vec<f64>,
}

impl Rounds {
    fn add(&mut self, r: Round) {
        self.rtts.extend(r.rtts);
        self.per_sec.push(r.per_sec);
    }

    fn latency(&mut self, q: f64) -> Duration {
        self.rtts.sort();
        self.rtts[((self.rtts.len() as f64 * q) as usize).min(self.rtts.len() - 1)]
    }

    fn per_sec(&self) -> f64 {
        median(self.per_sec.clone())
    }

    /// The median over rounds of this transport's throughput over `base`'s in the same round.
    fn ratio(&self, base: &Rounds) -> f64 {
        median(
            self.per_sec
                .iter()
                .zip(&base.per_sec)
                .map(|(a, b)| a / b)
                .collect(),
        )
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs `round_trip` a tenth of `iters` times to warm up, then `iters` times timed.
fn timed(iters: usize, mut round_trip: impl FnMut()) -> Round {
    for _ in 0..iters / 10 {
        round_trip();
    }
    let mut rtts = Vec::with_capacity(iters);
    let started = Instant::now();
    for _ in 0..iters {
        let t = Instant::now();
        round_trip();
        rtts.push(t.elapsed());
    }
    let per_sec = rtts.len() as f64 / started.elapsed().as_secs_f64();
    Round { rtts, per_sec }
}

fn fork(child: impl FnOnce()) -> nix::unistd::Pid {
    // SAFETY: the benchmark is single-threaded when it forks.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Parent { child } => child,
        nix::unistd::ForkResult::Child => {
            let _ = nix::sys::prctl::set_pdeathsig(Some(nix::sys::signal::Signal::SIGKILL));
            child();
            std::process::exit(0);
        }
    }
}

fn reap(pid: nix::unistd::Pid) {
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(pid, None);
}

/// Hands every published byte of a stream to `touch` where it lies, piece by piece, without
/// copying (as nginx hands response chunks to the kernel); returns how many bytes.
fn in_place(region: &Region, id: slot::SlotId, dir: Direction, len: u64) -> u64 {
    let mut r = StreamReader::new();
    let mut seen = 0;
    while let Some(p) = r.next_piece(region, id, dir, len - seen).expect("piece") {
        assert!(region.chunk_ptr(p.chunk, p.offset, p.len).is_some());
        seen += u64::from(p.len);
    }
    seen
}

fn channel(size: usize, iters: usize, spin: Duration, zero_copy: bool) -> Round {
    let chunk = 64 * 1024;
    let chunks = ((size * 8 / chunk) as u32 + 16).max(64);
    let g = Geometry {
        slots: 8,
        chunk_size: chunk as u32,
        chunks,
        max_conns: 1,
        max_workers: 1,
    };
    let region = Region::create("bench", g, std::process::id()).expect("region");
    let efd: OwnedFd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC)
        .expect("eventfd")
        .into();
    let conn_gen = slot::open_conn(region.pool_side(), 0, std::process::id()).expect("conn");
    let worker = fork(|| {
        let mut spin = Spin::adaptive(spin);
        let mut buf = Vec::new();
        loop {
            let id = slot::wait_for_work(region.pool_side(), 0, &mut spin, &|| false, None)
                .expect("work");
            let (_, len) = slot::request(&region, id).expect("request");
            buf.resize(len as usize, 0);
            if zero_copy {
                assert_eq!(in_place(&region, id, Direction::Request, len), len);
            } else {
                let n = StreamReader::new()
                    .read(&region, id, Direction::Request, &mut buf)
                    .expect("read request");
                assert_eq!(n, buf.len());
            }
            let l = stream::write_all(&region, id, Direction::Response, &[&buf]).expect("reply");
            let handover = slot::finish(region.pool_side(), id, 0, l);
            slot::clear_current(region.pool_side(), 0);
            if let Handover::Deliver { conn, conn_gen } = handover {
                if slot::needs_wake(region.pool_side(), conn, conn_gen) {
                    nix::unistd::write(efd.as_fd(), &1u64.to_ne_bytes()).expect("wake");
                }
            }
        }
    });
    let payload = vec![0xA5u8; size];
    let mut back = vec![0u8; size];
    let stats = timed(iters, || {
        let id = slot::alloc(region.nginx_side(), 0, conn_gen).expect("slot");
        let l = stream::write_all(&region, id, Direction::Request, &[&payload]).expect("request");
        assert!(slot::submit(region.nginx_side(), id, 0, l));
        loop {
            let mut b = [0u8; 8];
            nix::unistd::read(efd.as_raw_fd(), &mut b).expect("eventfd");
            slot::clear_wake(region.nginx_side(), 0);
            if slot::state_of(&region, id) == Some(SlotState::Done) {
                break;
            }
        }
        let (_, rl) = slot::response(&region, id).expect("response");
        if zero_copy {
            assert_eq!(in_place(&region, id, Direction::Response, rl), rl);
        } else {
            let n = StreamReader::new()
                .read(&region, id, Direction::Response, &mut back[..rl as usize])
                .expect("read response");
            assert_eq!(n as u64, rl);
        }
        slot::release(region.nginx_side(), id);
    });
    reap(worker);
    stats
}

fn socket(size: usize, iters: usize) -> Round {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair");
    let (mut a, mut b) = (UnixStream::from(a), UnixStream::from(b));
    let echo = fork(move || {
        let mut buf = vec![0u8; size];
        while b.read_exact(&mut buf).is_ok() {
            if b.write_all(&buf).is_err() {
                return;
            }
        }
    });
    a.set_nonblocking(true).expect("nonblocking");
    let payload = vec![0xA5u8; size];
    let mut back = vec![0u8; size];
    let stats = timed(iters, || {
        // A large payload fills the socket buffer while the peer's reply fills ours: write and
        // read as each becomes possible (non-blocking, poll), as an event loop does.
        let (mut sent, mut got) = (0, 0);
        while got < size {
            let mut fds = [nix::poll::PollFd::new(
                a.as_fd(),
                if sent < size {
                    nix::poll::PollFlags::POLLIN | nix::poll::PollFlags::POLLOUT
                } else {
                    nix::poll::PollFlags::POLLIN
                },
            )];
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE).expect("poll");
            if sent < size {
                match a.write(&payload[sent..]) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("write: {e}"),
                }
            }
            match a.read(&mut back[got..]) {
                Ok(0) => panic!("echo closed"),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    });
    reap(echo);
    stats
}

fn human(size: usize) -> String {
    match size {
        s if s >= 1 << 20 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let sizes: Vec<usize> = arg("--sizes")
        .unwrap_or_else(|| "64,4096,65536,1048576".into())
        .split(',')
        .map(|s| s.parse().expect("size"))
        .collect();
    let scale: f64 = arg("--scale").map_or(1.0, |s| s.parse().expect("scale"));
    let rounds: usize = arg("--rounds").map_or(5, |s| s.parse().expect("rounds"));
    let spin = Duration::from_micros(arg("--spin-us").map_or(100, |s| s.parse().expect("spin")));
    println!(
        "pool worker polls up to {} µs before sleeping (adaptive, as poold --spin); {rounds} rounds per size, taking turns\n",
        spin.as_micros()
    );
    println!("| payload | socket p50 / p99 µs | socket rt/s | channel, copying reads: p50 / p99 µs | rt/s | ÷ socket | channel, in-place reads: p50 / p99 µs | rt/s | ÷ socket |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for size in sizes {
        let iters =
            (((64 << 20) / size.max(4096)).clamp(200, 20_000) as f64 * scale).max(20.0) as usize;
        let per_round = (iters / rounds.max(1)).max(20);
        let (mut s, mut c, mut z) = (Rounds::default(), Rounds::default(), Rounds::default());
        for _ in 0..rounds.max(1) {
            s.add(socket(size, per_round));
            c.add(channel(size, per_round, spin, false));
            z.add(channel(size, per_round, spin, true));
        }
        let (c_ratio, z_ratio) = (c.ratio(&s), z.ratio(&s));
        println!(
            "| {} | {} / {} | {:.0} | {} / {} | {:.0} | {:.2}× | {} / {} | {:.0} | {:.2}× |",
            human(size),
            us(s.latency(0.5)),
            us(s.latency(0.99)),
            s.per_sec(),
            us(c.latency(0.5)),
            us(c.latency(0.99)),
            c.per_sec(),
            c_ratio,
            us(z.latency(0.5)),
            us(z.latency(0.99)),
            z.per_sec(),
            z_ratio
        );
    }
}
