//! The caller's side of fan-out: the tasks one request (or task) has queued for the pool's
//! other workers, moved along while it waits (input written as runners read it, output read as
//! they write it), and taken back for the caller to run itself when nobody else would.
//!
//! The slot protocol is [`ngx_pool_channel::slot::task`]'s; this is what the ABI's `task_*`
//! functions do, in safe Rust. The host never runs a task itself: a task taken back is handed to
//! the handler (`NGX_POOL_TASK_YOURS`), which still holds what it needs to run it, so no host
//! call is ever re-entered.

use ngx_pool_channel::chain::ChainError;
use ngx_pool_channel::slot::{self, FailReason, SlotId, SlotState};
use ngx_pool_channel::stream::{self, Direction, StreamReader, StreamWriter};
use ngx_pool_channel::sys::monotonic_ms;
use ngx_pool_channel::Region;
use std::time::Duration;

/// The longest a waiting caller sleeps before it looks at its own request again (it is woken
/// earlier by its tasks' progress; a client that went away is seen within this).
const WAIT_SLICE: Duration = Duration::from_millis(20);
/// How long a queued task is left to an idle worker before its caller takes it back.
const TAKE_BACK_GRACE: Duration = Duration::from_millis(25);

/// The most tasks one request may hold at once: a handler that never releases its tasks is
/// held to this, not to the pool's memory.
const MAX_CALLS: usize = 1 << 16;

use ngx_pool_abi::HostStatus as Status;

/// One task this caller queued.
struct Call {
    id: SlotId,
    /// Input bytes not yet written to the task's request stream.
    input: Vec<u8>,
    input_at: usize,
    writer: StreamWriter,
    reader: StreamReader,
    output: Vec<u8>,
    /// The state this caller last saw, to tell whether a wake-up brought news.
    seen: Option<SlotState>,
    answer: Option<Result<(), Status>>,
    /// When it was queued: a caller takes it back at once only when no worker is idle.
    queued_at: std::time::Instant,
}

impl Call {
    fn handle(&self) -> u64 {
        self.id.encode()
    }
}

/// Who is calling: the pool worker, and the request (or task) its tasks belong to.
#[derive(Clone, Copy)]
pub struct Caller {
    pub worker: u32,
    pub pid: u32,
    /// The slot of the request or task running now: once it no longer wants an answer, its
    /// tasks are cancelled.
    pub own: SlotId,
    /// Its deadline (CLOCK_MONOTONIC ms), 0 for none; tasks inherit it.
    pub deadline_ms: u64,
}

/// The tasks of the request (or task) running now.
pub struct Calls<'r> {
    region: &'r Region,
    caller: Caller,
    calls: Vec<Call>,
    buf: Vec<u8>,
}

impl<'r> Calls<'r> {
    pub fn new(region: &'r Region, caller: Caller) -> Calls<'r> {
        Calls {
            region,
            caller,
            calls: Vec::new(),
            buf: Vec::new(),
        }
    }

    fn find(&self, handle: u64) -> Option<usize> {
        self.calls.iter().position(|c| c.handle() == handle)
    }

    /// `task_submit`: queues a task with `input`; its handle, or `NGX_POOL_ERR_FULL` (run it
    /// yourself).
    pub fn submit(&mut self, input: &[u8]) -> Result<u64, Status> {
        let side = self.region.pool_side();
        if self.calls.len() >= MAX_CALLS {
            return Err(Status::Full);
        }
        let c = self.caller;
        let full = || {
            slot::count_inline(side);
            Status::Full
        };
        let id = slot::alloc_task(side, c.worker, c.pid, c.deadline_ms).ok_or_else(full)?;
        let mut call = Call {
            id,
            input: input.to_vec(),
            input_at: 0,
            writer: StreamWriter::new(),
            reader: StreamReader::new(),
            output: Vec::new(),
            seen: Some(SlotState::Queued),
            answer: None,
            queued_at: std::time::Instant::now(),
        };
        // A queued task holds no more of the arena than a queued request may.
        let first = self.region.geometry().queued_window() as usize;
        let n = first.min(input.len());
        let appended = call
            .writer
            .append(self.region, id, Direction::Request, &input[..n]);
        if appended.is_err() || !slot::submit_task(side, id, input.len() as u64) {
            slot::release_task(side, id);
            return Err(full());
        }
        call.writer.publish(self.region, id, Direction::Request);
        call.input_at = n;
        if call.input_at == call.input.len() {
            call.input = Vec::new();
        }
        let handle = call.handle();
        self.calls.push(call);
        Ok(handle)
    }

    /// `task_wait` (see the ABI): `(NGX_POOL_OK, task)` answered, `(NGX_POOL_TASK_YOURS, task)`
    /// taken back, or an error status.
    pub fn wait(
        &mut self,
        wanted: &[u64],
        timeout_ms: Option<u64>,
    ) -> Result<(Status, u64), Status> {
        let until = timeout_ms.map(|t| monotonic_ms().saturating_add(t));
        let side = self.region.pool_side();
        loop {
            let mut progressed = false;
            for i in 0..self.calls.len() {
                progressed |= self.pump(i);
            }
            let mut unknown = None;
            for &h in wanted {
                match self.find(h) {
                    Some(i) if self.calls[i].answer.is_some() => return Ok((Status::Ok, h)),
                    Some(_) => {}
                    None => unknown = Some(h),
                }
            }
            if unknown.is_some() {
                return Err(Status::State);
            }
            if self.caller_gone() {
                self.cancel_all(true);
                return Err(Status::Gone);
            }
            let now = monotonic_ms();
            if until.is_some_and(|u| now >= u) {
                return Err(Status::Timeout);
            }
            if progressed {
                continue;
            }
            if let Some(h) = self.take_back(wanted) {
                return Ok((Status::TaskYours, h));
            }
            let ids: Vec<SlotId> = self
                .calls
                .iter()
                .filter(|c| c.answer.is_none())
                .map(|c| c.id)
                .collect();
            let slice = until.map_or(WAIT_SLICE, |u| {
                WAIT_SLICE.min(Duration::from_millis(u.saturating_sub(now).max(1)))
            });
            let region = self.region;
            let calls = &self.calls;
            slot::caller_wait(side, self.caller.worker, &ids, slice, || {
                calls.iter().filter(|c| c.answer.is_none()).any(|c| {
                    slot::state_of(region, c.id) != c.seen
                        || stream::published(region, c.id, Direction::Response)
                            > c.reader.position()
                        || (c.input_at < c.input.len()
                            && c.writer.room(region, c.id, Direction::Request) > 0)
                })
            });
        }
    }

    /// `task_result`: the answer of an answered task.
    pub fn result(&self, handle: u64) -> Result<&[u8], Status> {
        let i = self.find(handle).ok_or(Status::State)?;
        match self.calls[i].answer {
            Some(Ok(())) => Ok(&self.calls[i].output),
            Some(Err(status)) => Err(status),
            None => Err(Status::State),
        }
    }

    /// `task_release`: forgets a task (cancelled if unanswered, its runner left to finish).
    pub fn release(&mut self, handle: u64) {
        if let Some(i) = self.find(handle) {
            let call = self.calls.remove(i);
            if call.answer.is_none() {
                slot::cancel_task(self.region.pool_side(), call.id, false);
            }
        }
    }

    /// True once the request (or task) these tasks serve no longer wants an answer, or has
    /// passed its deadline.
    fn caller_gone(&self) -> bool {
        let own = slot::state_of(self.region, self.caller.own);
        let wanted = matches!(own, Some(SlotState::Running) | Some(SlotState::Streaming));
        let late = self.caller.deadline_ms != 0 && monotonic_ms() > self.caller.deadline_ms;
        !wanted || late
    }

    fn cancel_all(&mut self, stop: bool) {
        let side = self.region.pool_side();
        for c in self.calls.iter_mut().filter(|c| c.answer.is_none()) {
            slot::cancel_task(side, c.id, stop);
            c.answer = Some(Err(Status::Gone));
        }
    }

    /// Takes back a queued task, one of `wanted` if any is queued, else the newest: its handle.
    fn take_back(&mut self, wanted: &[u64]) -> Option<u64> {
        let side = self.region.pool_side();
        // A worker waiting for work takes a task within microseconds, unless the cores are
        // busy: until the grace is over the caller waits for it, or it would run a long task
        // itself while a short one it queued after finishes elsewhere (imap_unordered's first
        // answer would be the long one).
        let someone_idle = slot::some_worker_idle(self.region);
        let queued = |c: &Call| {
            c.answer.is_none()
                && slot::state_of(self.region, c.id) == Some(SlotState::Queued)
                && (!someone_idle || c.queued_at.elapsed() >= TAKE_BACK_GRACE)
        };
        let pick = wanted
            .iter()
            .filter_map(|&h| self.find(h))
            .find(|&i| queued(&self.calls[i]))
            .or_else(|| {
                (0..self.calls.len())
                    .rev()
                    .find(|&i| queued(&self.calls[i]))
            })?;
        if !slot::take_back(side, self.calls[pick].id) {
            return None;
        }
        Some(self.calls.remove(pick).handle())
    }

    /// Moves task `i` along: more input in, output out, its answer once there. True if
    /// anything moved.
    fn pump(&mut self, i: usize) -> bool {
        let region = self.region;
        let side = region.pool_side();
        let call = &mut self.calls[i];
        if call.answer.is_some() {
            return false;
        }
        let state = slot::state_of(region, call.id);
        let mut moved = state != call.seen;
        call.seen = state;
        match state {
            Some(SlotState::Queued) | Some(SlotState::Running) | Some(SlotState::Streaming) => {
                moved |= feed(region, call);
                if state != Some(SlotState::Queued) {
                    moved |= drain(region, call, &mut self.buf).unwrap_or(false);
                }
            }
            Some(SlotState::Done) => {
                let total = slot::response(region, call.id).map_or(0, |(_, t)| t);
                let read = drain(region, call, &mut self.buf);
                call.answer = Some(match read {
                    Ok(_) if call.reader.position() == total => Ok(()),
                    _ => Err(Status::Io),
                });
                slot::release_task(side, call.id);
                moved = true;
            }
            Some(SlotState::Failed) => {
                call.answer = Some(Err(status_of(slot::fail_reason(region, call.id))));
                slot::release_task(side, call.id);
                moved = true;
            }
            // Not ours any more (only a corrupt region or poold's reclaiming does that).
            _ => {
                call.answer = Some(Err(Status::Io));
                moved = true;
            }
        }
        moved
    }
}

impl Drop for Calls<'_> {
    fn drop(&mut self) {
        let side = self.region.pool_side();
        for c in self.calls.iter().filter(|c| c.answer.is_none()) {
            slot::cancel_task(side, c.id, false);
        }
    }
}

/// Writes as much of the rest of `call`'s input as its window allows.
fn feed(region: &Region, call: &mut Call) -> bool {
    if call.input_at >= call.input.len() {
        return false;
    }
    let room = call.writer.room(region, call.id, Direction::Request) as usize;
    let n = room.min(call.input.len() - call.input_at);
    if n == 0 {
        return false;
    }
    let before = call.writer.written();
    let res = call.writer.append(
        region,
        call.id,
        Direction::Request,
        &call.input[call.input_at..call.input_at + n],
    );
    let wrote = (call.writer.written() - before) as usize;
    if wrote == 0 {
        // The arena is full: others free it as their readers go on; looked at again later.
        return matches!(res, Err(e) if e != ChainError::ArenaFull);
    }
    call.writer.publish(region, call.id, Direction::Request);
    call.input_at += wrote;
    if call.input_at == call.input.len() {
        call.input = Vec::new();
    }
    stream::notify_worker(region, call.id);
    true
}

/// Reads what `call`'s runner has published of its output; true if it read any.
fn drain(region: &Region, call: &mut Call, buf: &mut Vec<u8>) -> Result<bool, ChainError> {
    buf.resize(64 << 10, 0);
    let mut any = false;
    loop {
        let n = call
            .reader
            .read(region, call.id, Direction::Response, buf)?;
        if n == 0 {
            break;
        }
        call.output.extend_from_slice(&buf[..n]);
        any = true;
    }
    if any
        && call
            .reader
            .release(region, call.id, Direction::Response, call.reader.position())
    {
        // Credit for a runner waiting to write more.
        stream::notify_worker(region, call.id);
    }
    Ok(any)
}

/// The status `task_result` gives for a task that failed this way.
fn status_of(reason: FailReason) -> Status {
    match reason {
        FailReason::WorkerDied => Status::Lost,
        FailReason::Timeout => Status::Gone,
        FailReason::HandlerError | FailReason::BadResponse | FailReason::Other => Status::Error,
        FailReason::BadRequest | FailReason::Undelivered => Status::Io,
    }
}
