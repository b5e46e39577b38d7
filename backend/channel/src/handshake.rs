//! Fixed-size frames with attached file descriptors over unix seqpacket sockets.
//!
//! * nginx worker → poold: `Hello { layout version, pid }` with the worker's eventfd;
//! * poold → nginx worker: `Welcome { status, conn index, conn generation }` with the memfd;
//! * poold → pool worker: `ConnFd { conn index, conn generation }` with that nginx worker's
//!   eventfd, so the pool worker can wake it.
//!
//! Seqpacket keeps frame boundaries and still reports the peer's exit as end-of-file, which is how
//! poold learns that an nginx worker died.

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

pub const HELLO: [u8; 4] = *b"NPH1";
pub const WELCOME: [u8; 4] = *b"NPW1";
pub const CONN_FD: [u8; 4] = *b"NPC1";
/// Pool worker to poold, on its control socket: it is up and waiting for work.
pub const READY: [u8; 4] = *b"NPY1";
/// Pool worker to poold: it reached `max_requests`/`max_rss` and will retire once a
/// replacement is READY (it keeps serving meanwhile).
pub const RETIRING: [u8; 4] = *b"NPR1";

/// `Welcome.a` values.
pub const WELCOME_OK: u32 = 0;
pub const WELCOME_BAD_VERSION: u32 = 1;
pub const WELCOME_FULL: u32 = 2;

const FRAME_LEN: usize = 20;

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
    let bytes = frame.to_bytes();
    let iov = [IoSlice::new(&bytes)];
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
    if n != FRAME_LEN {
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
    let mut iov = [IoSliceMut::new(&mut bytes)];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let msg = recvmsg::<()>(
        sock.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut space),
        flags | MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for r in raw {
                // SAFETY: the kernel has just installed `r` in our descriptor table for this
                // message; nothing else knows the number, so we are its sole owner.
                fds.push(unsafe { OwnedFd::from_raw_fd(r) });
            }
        }
    }
    let n = msg.bytes;
    if n == 0 {
        return Ok(None);
    }
    if n != FRAME_LEN || msg.flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad frame size"));
    }
    let fd = if fds.is_empty() {
        None
    } else {
        Some(fds.swap_remove(0))
    };
    Ok(Some((Frame::from_bytes(&bytes), fd)))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

    #[test]
    fn frame_and_fd_arrive_together() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
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
}
