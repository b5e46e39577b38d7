//! The pool side of one request, as one operation per step: [`take`] it (read its head from the
//! request stream and check it), read its body as it arrives ([`BodyIn`], a `Read`), and answer
//! ([`AnswerOut`]: streamed within the credit window, or whole in one hand-over), or [`fail`]
//! it. poold's pool workers and the channel's multi-process test serve requests through these
//! alone; what a worker decides (which handler, what the response rules are) is theirs.
//!
//! The nginx worker that owns a request is woken through its eventfd, which the pool side holds
//! in a table of its own ([`Notify`]): the channel says when to wake it, the caller how.

use crate::chain::ChainError;
use crate::message::{decode_request_head, RequestView};
use crate::region::Region;
use crate::slot::{self, FailReason, Handover, SlotId, SlotState};
use crate::stream::{self, Direction, StreamReader, StreamWriter};
use std::cell::RefCell;
use std::io::{self, Read};
use std::time::Duration;

/// How a pool worker wakes the nginx worker of a connection (its eventfd).
pub trait Notify {
    /// Wakes the nginx worker of connection `conn` (generation `conn_gen`) if it waits
    /// (`slot::needs_wake` says so).
    fn wake(&mut self, region: &Region, conn: u32, conn_gen: u32);

    /// Wakes the nginx worker that owns slot `id` if it asked to be told of progress.
    fn progress(&mut self, region: &Region, id: SlotId) {
        if stream::nginx_wants_wake(region, id) {
            if let Some(v) = slot::view(region, id.index) {
                self.wake(region, v.conn, v.conn_gen);
            }
        }
    }
}

/// How long a pool worker sleeps before looking at its slot again while it waits for nginx
/// (it is woken earlier on progress; this bounds the wait if a wake-up is lost with a crash).
const STREAM_WAIT: Duration = Duration::from_millis(100);

/// The longest sleep of [`BodyIn::read_wait`]: nginx wakes the worker on every byte, when it
/// gives the request up, and (poold's reclaim) when its worker dies, so this only bounds a lost
/// wake-up; an idle upgraded connection costs one look a minute.
const OPEN_WAIT: Duration = Duration::from_secs(60);

/// Whether nginx still wants request `id`'s answer (and sends its body): it runs, or its
/// answer streams (an upgraded connection's body arrives all along).
fn live(region: &Region, id: SlotId) -> bool {
    matches!(
        slot::state_of(region, id),
        Some(SlotState::Running | SlotState::Streaming)
    )
}

/// Why a request could not be taken: the reason it fails with, and a line for the log.
#[derive(Debug)]
pub struct Refused {
    pub reason: FailReason,
    pub why: String,
}

impl Refused {
    fn bad(id: SlotId, why: impl std::fmt::Display) -> Refused {
        Refused {
            reason: FailReason::BadRequest,
            why: format!("request in slot {}: {why}", id.index),
        }
    }
}

/// A request taken by a pool worker: its decoded head, and its two streams.
pub struct Taken<'h, 'r, N: Notify> {
    pub view: RequestView<'h>,
    /// The body's length, as the head says (and the slot's total agrees).
    pub body_len: u64,
    pub body: BodyIn<'r, N>,
    pub answer: AnswerOut<'r, N>,
}

/// Takes request `id`, just popped from the queue: its head is read into `head` (a buffer kept
/// from one request to the next) and checked against the slot's lengths and the region's
/// message limit. A `Refused` request is to be [`fail`]ed with its reason.
pub fn take<'h, 'r, N: Notify>(
    region: &'r Region,
    id: SlotId,
    head: &'h mut Vec<u8>,
    notify: &'r RefCell<N>,
) -> Result<Taken<'h, 'r, N>, Refused> {
    let Some((head_len, total)) = slot::request(region, id) else {
        return Err(Refused::bad(id, "not a request"));
    };
    if u64::from(head_len) > region.geometry().message_limit() || u64::from(head_len) > total {
        return Err(Refused::bad(
            id,
            format_args!("a head of {head_len} bytes; refused"),
        ));
    }
    let mut body = BodyIn::new(region, id, total, notify);
    head.clear();
    head.resize(head_len as usize, 0);
    body.read_exact(head)
        .map_err(|e| Refused::bad(id, format_args!("its head: {e}")))?;
    let (view, body_len) = decode_request_head(head).map_err(|e| Refused::bad(id, e))?;
    if u64::from(head_len).checked_add(body_len) != Some(total) {
        return Err(Refused::bad(id, "lengths disagree"));
    }
    let mut answer = AnswerOut::new(region, id, notify);
    if body_len >= crate::message::OPEN_BODY {
        // An upgrade nginx offers: its answer may flow for hours, on a small window.
        answer
            .writer
            .limit_window(region, region.geometry().tunnel_window());
    }
    Ok(Taken {
        view,
        body_len,
        body,
        answer,
    })
}

/// Takes a fan-out task or a raw stream `id` (no head): its input, as many bytes as the slot
/// says, and its output.
pub fn take_raw<'r, N: Notify>(
    region: &'r Region,
    id: SlotId,
    notify: &'r RefCell<N>,
) -> Result<(BodyIn<'r, N>, AnswerOut<'r, N>), Refused> {
    let Some((_, total)) = slot::request(region, id) else {
        return Err(Refused::bad(id, "not a request"));
    };
    Ok((
        BodyIn::new(region, id, total, notify),
        AnswerOut::new(region, id, notify),
    ))
}

/// Fails request `id` with `reason`; whom to wake (the nginx worker, the caller of a task) is
/// in the hand-over.
pub fn fail(region: &Region, id: SlotId, reason: FailReason) -> Handover {
    observe_run(region, id);
    slot::fail(region.pool_side(), id, reason)
}

/// Counts how long request `id` ran in this worker (from its taking to now) in the pool's
/// run-time histogram; fan-out tasks are not requests and are not counted.
fn observe_run(region: &Region, id: SlotId) {
    let Some(s) = region.slot(id.index) else {
        return;
    };
    if slot::is_task(s) {
        return;
    }
    let started = s.started_us.load(std::sync::atomic::Ordering::Relaxed);
    let ran = crate::sys::monotonic_us().saturating_sub(started);
    region.header().stats.run_time.observe(ran);
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "nginx no longer wants the response",
    )
}

/// The request body as the handler reads it: from the request stream, as nginx writes it.
pub struct BodyIn<'r, N: Notify> {
    region: &'r Region,
    id: SlotId,
    reader: StreamReader,
    total: u64,
    notify: &'r RefCell<N>,
}

impl<'r, N: Notify> BodyIn<'r, N> {
    fn new(region: &'r Region, id: SlotId, total: u64, notify: &'r RefCell<N>) -> Self {
        BodyIn {
            region,
            id,
            reader: StreamReader::new(),
            total,
            notify,
        }
    }
}

impl<N: Notify> BodyIn<'_, N> {
    /// How many bytes the stream holds in all (a task's input; a request's head and body).
    pub fn total(&self) -> u64 {
        self.total
    }
}

impl<N: Notify> Read for BodyIn<'_, N> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let (region, id, dir) = (self.region, self.id, Direction::Request);
        loop {
            let pos = self.reader.position();
            if pos >= self.total || out.is_empty() {
                return Ok(0);
            }
            let want = ((self.total - pos) as usize).min(out.len());
            let n = self.reader.read(region, id, dir, &mut out[..want])?;
            if n > 0 {
                if self.reader.release(region, id, dir, self.reader.position()) {
                    self.notify.borrow_mut().progress(region, id);
                }
                return Ok(n);
            }
            if !live(region, id) {
                return Err(gone());
            }
            // nginx may be holding back more body until told we are reading (a request it
            // wrote while queued stops at the queued window).
            self.notify.borrow_mut().progress(region, id);
            stream::worker_wait(region, id, STREAM_WAIT, || {
                stream::published(region, id, dir) > pos || !live(region, id)
            });
        }
    }
}

impl<N: Notify> BodyIn<'_, N> {
    /// As `read`, but sleeps at most `limit` (`None`: as long as it takes) and returns
    /// `Ok(None)` when that passes with no byte, or when `interrupted()` holds: another thread
    /// sets what it looks at and then wakes this slot ([`stream::notify_worker`]); it is asked
    /// after the wait is armed, so no such wake-up is lost.
    pub fn read_wait(
        &mut self,
        out: &mut [u8],
        limit: Option<Duration>,
        interrupted: &dyn Fn() -> bool,
    ) -> io::Result<Option<usize>> {
        let (region, id, dir) = (self.region, self.id, Direction::Request);
        let until = limit.map(|l| std::time::Instant::now() + l);
        loop {
            let pos = self.reader.position();
            if pos >= self.total || out.is_empty() {
                return Ok(Some(0));
            }
            let want = ((self.total - pos) as usize).min(out.len());
            let n = self.reader.read(region, id, dir, &mut out[..want])?;
            if n > 0 {
                if self.reader.release(region, id, dir, self.reader.position()) {
                    self.notify.borrow_mut().progress(region, id);
                }
                return Ok(Some(n));
            }
            if !live(region, id) {
                return Err(gone());
            }
            if interrupted() {
                return Ok(None);
            }
            let left = until.map(|u| u.saturating_duration_since(std::time::Instant::now()));
            if left == Some(Duration::ZERO) {
                return Ok(None);
            }
            self.notify.borrow_mut().progress(region, id);
            stream::worker_wait(region, id, left.unwrap_or(OPEN_WAIT).min(OPEN_WAIT), || {
                stream::published(region, id, dir) > pos || !live(region, id) || interrupted()
            });
        }
    }
}

/// The answer as the pool worker writes it, onto the response stream.
pub struct AnswerOut<'r, N: Notify> {
    region: &'r Region,
    id: SlotId,
    writer: StreamWriter,
    head_len: u32,
    notify: &'r RefCell<N>,
}

impl<'r, N: Notify> AnswerOut<'r, N> {
    fn new(region: &'r Region, id: SlotId, notify: &'r RefCell<N>) -> Self {
        AnswerOut {
            region,
            id,
            writer: StreamWriter::new(),
            head_len: 0,
            notify,
        }
    }

    /// Whether nginx gave the request up (its client went away, its deadline passed).
    pub fn abandoned(&self) -> bool {
        slot::state_of(self.region, self.id) == Some(SlotState::Abandoned)
    }

    /// Appends `data`, waiting for credit (`windowed`) and for free chunks while the slot stays
    /// in `state`.
    fn append(&mut self, mut data: &[u8], state: SlotState, windowed: bool) -> io::Result<()> {
        let (region, id, dir) = (self.region, self.id, Direction::Response);
        while !data.is_empty() {
            if slot::state_of(region, id) != Some(state) {
                return Err(gone());
            }
            let room = if windowed {
                self.writer.room(region, id, dir)
            } else {
                u64::MAX
            };
            if room == 0 {
                stream::worker_wait(region, id, STREAM_WAIT, || {
                    self.writer.room(region, id, dir) > 0
                        || slot::state_of(region, id) != Some(state)
                });
                continue;
            }
            let n = (room.min(data.len() as u64)) as usize;
            let before = self.writer.written();
            let res = self.writer.append(region, id, dir, &data[..n]);
            data = &data[(self.writer.written() - before) as usize..];
            match res {
                Ok(()) => {}
                Err(ChainError::ArenaFull) => {
                    // Others hold the arena; their readers free it as their clients read.
                    stream::worker_wait(region, id, Duration::from_millis(2), || false);
                }
                Err(e) => return Err(e.into()),
            }
            if windowed {
                self.writer.publish(region, id, dir);
                self.notify.borrow_mut().progress(region, id);
            }
        }
        Ok(())
    }

    /// Starts a streamed answer with `head`: nginx sends it and then the body as it comes.
    pub fn start(&mut self, head: &[u8]) -> io::Result<()> {
        self.append(head, SlotState::Running, false)?;
        self.writer
            .publish(self.region, self.id, Direction::Response);
        self.head_len = head.len() as u32;
        match slot::start_streaming(self.region.pool_side(), self.id, self.head_len) {
            Handover::Deliver { conn, conn_gen } => {
                self.notify.borrow_mut().wake(self.region, conn, conn_gen);
                Ok(())
            }
            Handover::Abandoned => Err(gone()),
            Handover::ToCaller => Ok(()),
        }
    }

    /// Body bytes of a streamed answer, within the credit window nginx gives.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.append(data, SlotState::Streaming, true)
    }

    /// A streamed answer is complete.
    pub fn end(&mut self) -> Handover {
        observe_run(self.region, self.id);
        slot::finish(
            self.region.pool_side(),
            self.id,
            self.head_len,
            self.writer.written(),
        )
    }

    /// An answer buffered whole: head and body in one go, handed over once.
    pub fn whole(&mut self, head: &[u8], body: &[u8]) -> io::Result<Handover> {
        self.append(head, SlotState::Running, false)?;
        self.append(body, SlotState::Running, false)?;
        self.writer
            .publish(self.region, self.id, Direction::Response);
        observe_run(self.region, self.id);
        Ok(slot::finish(
            self.region.pool_side(),
            self.id,
            head.len() as u32,
            self.writer.written(),
        ))
    }

    /// Output of a fan-out task (no head), within the caller's credit window.
    pub fn task_write(&mut self, data: &[u8]) -> io::Result<()> {
        self.append(data, SlotState::Running, true)
    }

    /// A fan-out task's output is complete: published and handed to its caller.
    pub fn task_end(&mut self) -> Handover {
        self.writer
            .publish(self.region, self.id, Direction::Response);
        slot::finish(self.region.pool_side(), self.id, 0, self.writer.written())
    }
}
