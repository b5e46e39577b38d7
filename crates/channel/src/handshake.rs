//! Fixed-size frames with attached file descriptors over unix seqpacket sockets.
//!
//! * nginx worker → poold: `Hello { layout version, pid }` and the attachment secret (see
//!   [`send_hello`]) with the worker's eventfd;
//! * poold → nginx worker: `Welcome { status, conn index, conn generation }` with the memfd (or,
//!   refused, a status saying why and no memfd);
//! * poold → pool worker: `ConnFd { conn index, conn generation }` with that nginx worker's
//!   eventfd, so the pool worker can wake it.
//!
//! Seqpacket keeps frame boundaries and still reports the peer's exit as end-of-file, which is how
//! poold learns that an nginx worker died.

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

pub const HELLO: [u8; 4] = *b"NPH1";
pub const WELCOME: [u8; 4] = *b"NPW1";
pub const CONN_FD: [u8; 4] = *b"NPC1";
/// Pool worker to poold, on its control socket: it is up and waiting for work.
pub const READY: [u8; 4] = *b"NPY1";
/// Pool worker to poold: it reached `max_requests`/`max_rss` and will retire once a
/// replacement is READY (it keeps serving meanwhile).
pub const RETIRING: [u8; 4] = *b"NPR1";
/// nginx worker to poold, on its attachment: the region failed [`crate::Region::verify`] here
/// (some process wrote over it); poold checks it too and starts a new generation.
pub const CORRUPT: [u8; 4] = *b"NPX1";

/// `Welcome.a` values.
pub const WELCOME_OK: u32 = 0;
pub const WELCOME_BAD_VERSION: u32 = 1;
pub const WELCOME_FULL: u32 = 2;
/// The peer's user (SO_PEERCRED) is not one poold admits; `Welcome.b` is that uid.
pub const WELCOME_BAD_USER: u32 = 3;
/// The peer did not present this poold's attachment secret: not a worker of the nginx master
/// that started it.
pub const WELCOME_BAD_SECRET: u32 = 4;

const FRAME_LEN: usize = 20;

/// The attachment secret's length: 256 random bits, never guessed.
pub const SECRET_LEN: usize = 32;
/// What a managed poold's nginx workers prove they are with (see the README's "Security
/// model"): the nginx master makes one per poold it starts and hands it to that poold through
/// an inherited descriptor, never argv or the environment (world-readable in /proc).
pub type Secret = [u8; SECRET_LEN];
/// A Hello is a frame and the secret; an all-zero secret is "none" (an external pool's
/// nginx workers have none).
const HELLO_LEN: usize = FRAME_LEN + SECRET_LEN;

/// One frame: a kind and four numbers whose meaning depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: [u8; 4],
    pub a: u32,
    pub b: u32,
    pub c: u32,
    pub d: u32,
}

impl Frame {
    pub fn new(kind: [u8; 4], a: u32, b: u32, c: u32) -> Frame {
        Frame {
            kind,
            a,
            b,
            c,
            d: 0,
        }
    }

    fn to_bytes(self) -> [u8; FRAME_LEN] {
        let mut out = [0u8; FRAME_LEN];
        out[..4].copy_from_slice(&self.kind);
        for (i, v) in [self.a, self.b, self.c, self.d].into_iter().enumerate() {
            out[4 + i * 4..8 + i * 4].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    fn from_bytes(b: &[u8; FRAME_LEN]) -> Frame {
        let n = |i: usize| u32::from_le_bytes(b[4 + i * 4..8 + i * 4].try_into().expect("4 bytes"));
        Frame {
            kind: b[..4].try_into().expect("4 bytes"),
            a: n(0),
            b: n(1),
            c: n(2),
            d: n(3),
        }
    }
}

/// Sends `frame` with `fd` attached (if any).
pub fn send_frame(sock: impl AsFd, frame: Frame, fd: Option<impl AsFd>) -> io::Result<()> {
    send_bytes(sock, &frame.to_bytes(), fd)
}

/// Sends an nginx worker's Hello: its layout version and pid, the attachment secret of the
/// pool's poold (`None`: all zero, for an external pool), with its eventfd.
pub fn send_hello(
    sock: impl AsFd,
    version: u32,
    pid: u32,
    secret: Option<&Secret>,
    eventfd: impl AsFd,
) -> io::Result<()> {
    let mut bytes = [0u8; HELLO_LEN];
    bytes[..FRAME_LEN].copy_from_slice(&Frame::new(HELLO, version, pid, 0).to_bytes());
    if let Some(s) = secret {
        bytes[FRAME_LEN..].copy_from_slice(s);
    }
    send_bytes(sock, &bytes, Some(eventfd))
}

/// A Hello as poold received it.
pub struct Hello {
    pub version: u32,
    pub pid: u32,
    /// All zero when the sender presented none (or sent an older, shorter Hello).
    pub secret: Secret,
    pub eventfd: Option<OwnedFd>,
}

/// Receives a Hello (`Ok(None)`: end of file). An older module's shorter Hello is read too, so
/// that its layout version can be refused with a reason; anything else is an error.
pub fn recv_hello(sock: impl AsFd, flags: MsgFlags) -> io::Result<Option<Hello>> {
    let mut bytes = [0u8; HELLO_LEN];
    let Some((n, fd)) = recv_bytes(sock, &mut bytes, flags)? else {
        return Ok(None);
    };
    let frame = Frame::from_bytes(bytes[..FRAME_LEN].try_into().expect("frame length"));
    if (n != FRAME_LEN && n != HELLO_LEN) || frame.kind != HELLO {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a hello"));
    }
    Ok(Some(Hello {
        version: frame.a,
        pid: frame.b,
        secret: bytes[FRAME_LEN..].try_into().expect("secret length"),
        eventfd: fd,
    }))
}

/// Whether `a` and `b` are equal, in a time that does not depend on where they differ.
pub fn same_secret(a: &Secret, b: &Secret) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The nginx side of a whole handshake, blocking: connects to `path`, says Hello (with
/// `secret`), and returns poold's Welcome, the memfd if any, and the socket and eventfd (which
/// must stay open while attached). For tools and tests; the module's own is non-blocking.
pub fn attach_blocking(
    path: &std::path::Path,
    version: u32,
    secret: Option<&Secret>,
) -> io::Result<(Frame, Option<OwnedFd>, OwnedFd, OwnedFd)> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(sock.as_raw_fd(), &UnixAddr::new(path)?)?;
    let efd: OwnedFd =
        nix::sys::eventfd::EventFd::from_flags(nix::sys::eventfd::EfdFlags::EFD_CLOEXEC)?.into();
    send_hello(&sock, version, std::process::id(), secret, &efd)?;
    match recv_frame(&sock, MsgFlags::empty())? {
        Some((welcome, memfd)) => Ok((welcome, memfd, sock, efd)),
        None => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "poold closed the connection without a welcome",
        )),
    }
}

fn send_bytes(sock: impl AsFd, bytes: &[u8], fd: Option<impl AsFd>) -> io::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let raw: Vec<RawFd> = fd.iter().map(|f| f.as_fd().as_raw_fd()).collect();
    let cmsgs: Vec<ControlMessage<'_>> = if raw.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    let n = sendmsg::<()>(
        sock.as_fd().as_raw_fd(),
        &iov,
        &cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    if n != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short frame write",
        ));
    }
    Ok(())
}

/// Receives one frame and the descriptor attached to it. `Ok(None)` means end of file.
/// Extra descriptors (a confused peer) are closed; a wrong-sized frame is an error.
pub fn recv_frame(
    sock: impl AsFd,
    flags: MsgFlags,
) -> io::Result<Option<(Frame, Option<OwnedFd>)>> {
    let mut bytes = [0u8; FRAME_LEN];
    match recv_bytes(sock, &mut bytes, flags)? {
        None => Ok(None),
        Some((n, _)) if n != FRAME_LEN => {
            Err(io::Error::new(io::ErrorKind::InvalidData, "bad frame size"))
        }
        Some((_, fd)) => Ok(Some((Frame::from_bytes(&bytes), fd))),
    }
}

/// Room for the control data of one message: as many descriptors as one SCM_RIGHTS message
/// may carry (the kernel's SCM_MAX_FD), in 8-byte words so the buffer is aligned for cmsghdr.
const CONTROL_WORDS: usize = (253 * 4 + 64) / 8;

/// Receives one message into `bytes`: its length and the first descriptor attached to it
/// (others are closed). `Ok(None)` means end of file; a message longer than `bytes`, or with
/// more descriptors than fit (the kernel then cut them off), an error. Every descriptor the
/// kernel installed is owned and closed whatever the outcome: a peer sending many must not
/// leak them into this process (it would run poold out of descriptors).
fn recv_bytes(
    sock: impl AsFd,
    bytes: &mut [u8],
    flags: MsgFlags,
) -> io::Result<Option<(usize, Option<OwnedFd>)>> {
    let mut control = [0u64; CONTROL_WORDS];
    let mut iov = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one; the pointers set below stay valid (locals
    // of this frame) for the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` describes one writable buffer of `bytes.len()` bytes and an aligned
    // control buffer of `msg_controllen` bytes, both alive for the call.
    let n = unsafe {
        libc::recvmsg(
            sock.as_fd().as_raw_fd(),
            &mut msg,
            flags.bits() | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = installed_fds(&msg);
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many descriptors with a frame",
        ));
    }
    if n == 0 {
        return Ok(None);
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad frame size"));
    }
    let fd = if fds.is_empty() {
        None
    } else {
        Some(fds.swap_remove(0))
    };
    Ok(Some((n as usize, fd)))
}

/// The descriptors the kernel installed for a received message, each now owned (so closed
/// when dropped), truncated control data included.
fn installed_fds(msg: &libc::msghdr) -> Vec<OwnedFd> {
    let mut out = Vec::new();
    // SAFETY: the CMSG_* functions walk the control buffer the kernel filled for `msg`, within
    // its `msg_controllen`; each SCM_RIGHTS header's length counts exactly the descriptors the
    // kernel installed in our table for this message, which nothing else knows: we own them.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let len = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..len {
                    out.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    out
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

    /// Two connected ends of a seqpacket socket, as poold's connections are.
    fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    #[test]
    fn a_message_with_many_descriptors_leaks_none() {
        let (a, b) = seqpacket_pair();
        // As many copies of a pipe's write end as one message may carry (before the fix, a
        // message with more than 4 made the receive fail with the 4 it kept open): once every
        // copy is closed, the read end sees end of file.
        let (r, w) = nix::unistd::pipe().unwrap();
        let copies: Vec<OwnedFd> = (0..253).map(|_| w.try_clone().unwrap()).collect();
        drop(w);
        let raw: Vec<RawFd> = copies.iter().map(|f| f.as_raw_fd()).collect();
        let frame = [0u8; FRAME_LEN];
        let iov = [IoSlice::new(&frame)];
        let cmsgs = [ControlMessage::ScmRights(&raw)];
        sendmsg::<()>(b.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None).unwrap();
        drop(copies);
        let mut buf = [0u8; FRAME_LEN];
        let (n, first) = recv_bytes(&a, &mut buf, MsgFlags::empty())
            .unwrap()
            .unwrap();
        assert_eq!(n, FRAME_LEN);
        drop(first);
        let mut one = [0u8; 1];
        assert_eq!(
            nix::unistd::read(r.as_raw_fd(), &mut one).unwrap(),
            0,
            "a descriptor stayed open"
        );
    }

    #[test]
    fn frame_and_fd_arrive_together() {
        let (a, b) = seqpacket_pair();
        let f = Frame::new(HELLO, 1, 2, 3);
        send_frame(&a, f, Some(&a)).unwrap();
        let (got, fd) = recv_frame(&b, MsgFlags::empty()).unwrap().unwrap();
        assert_eq!(got, f);
        assert!(fd.is_some());
        drop(fd); // it is a copy of `a`: keep it and `a` never reaches end of file
        send_frame(&a, f, None::<&OwnedFd>).unwrap();
        assert!(recv_frame(&b, MsgFlags::empty())
            .unwrap()
            .unwrap()
            .1
            .is_none());
        drop(a);
        assert!(recv_frame(&b, MsgFlags::empty()).unwrap().is_none());
    }

    #[test]
    fn hello_carries_the_secret_and_a_short_one_reads_as_none() {
        let (a, b) = seqpacket_pair();
        let secret: Secret = std::array::from_fn(|i| i as u8 + 1);
        send_hello(&a, 7, 42, Some(&secret), &a).unwrap();
        let h = recv_hello(&b, MsgFlags::empty()).unwrap().unwrap();
        assert_eq!((h.version, h.pid), (7, 42));
        assert!(same_secret(&h.secret, &secret) && h.eventfd.is_some());
        drop(h);
        // An older module's Hello, a bare frame: read, with no secret.
        send_frame(&a, Frame::new(HELLO, 6, 43, 0), Some(&a)).unwrap();
        let h = recv_hello(&b, MsgFlags::empty()).unwrap().unwrap();
        assert_eq!((h.version, h.pid, h.secret), (6, 43, [0; SECRET_LEN]));
        assert!(!same_secret(&h.secret, &secret));
        drop(h);
        // Anything else is not a Hello; a Hello is too long for a frame.
        send_frame(&a, Frame::new(WELCOME, 0, 0, 0), None::<&OwnedFd>).unwrap();
        assert!(recv_hello(&b, MsgFlags::empty()).is_err());
        send_hello(&a, 7, 42, None, &a).unwrap();
        assert!(recv_frame(&b, MsgFlags::empty()).is_err());
    }
}
