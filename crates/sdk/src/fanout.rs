//! Fan-out inside a request (ABI 1.2): tasks that the pool's other workers run with the
//! handler's [`Handler::run_task`](crate::Handler::run_task), under the pool's one bound.
//!
//! The caller keeps every input until its task is answered: when no worker is free, the host
//! hands a task back ([`Ready::Yours`]) and the caller runs it itself, so a fan-out completes
//! at `workers=1`, when every worker fans out at once, and nested.

use crate::error::{Error, ErrorKind, Result};
use crate::host::{Detached, Level};
use ngx_pool_abi as abi;
use std::io::Read;
use std::time::Duration;

/// A queued task of this request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TaskId(u64);

impl TaskId {
    /// The host's handle, for a language runtime that keeps it as a number.
    pub fn raw(self) -> u64 {
        self.0
    }
    /// A handle from [`raw`](TaskId::raw). The host checks every handle: a made-up one gets
    /// an error, never another request's task.
    pub fn from_raw(raw: u64) -> TaskId {
        TaskId(raw)
    }
}

/// What [`Fanout::wait`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ready {
    /// This task is answered: [`Fanout::result`].
    Answered(TaskId),
    /// No worker had taken this task: the host gave it back; run it yourself. The host has
    /// forgotten it.
    Yours(TaskId),
}

/// The fan-out of a request (or of a task: fan-outs nest), from
/// [`Request::fanout`](crate::Request::fanout) or [`Task::fanout`].
#[derive(Clone, Copy)]
pub struct Fanout {
    handle: Detached,
}

impl Fanout {
    pub(crate) fn new(handle: Detached) -> Fanout {
        Fanout { handle }
    }

    /// How many workers the pool may run at once (what bounds a fan-out's parallelism).
    pub fn pool_workers(&self) -> u32 {
        self.handle.pool_workers()
    }

    /// Queues a task with `input` for the pool's workers; `Ok(None)` when there is no room now
    /// (run it yourself).
    pub fn submit(&self, input: &[u8]) -> Result<Option<TaskId>> {
        match self.handle.task_submit(input) {
            Ok(t) => Ok(Some(TaskId(t))),
            Err(abi::NGX_POOL_ERR_FULL) => Ok(None),
            Err(rc) => Err(Error::from_status(rc, "queueing a task")),
        }
    }

    /// Waits until one of `tasks` is answered, or hands one back to run here. Errors:
    /// [`ErrorKind::Timeout`] past `timeout`, [`ErrorKind::Gone`] when the request is
    /// cancelled (its tasks are cancelled too).
    pub fn wait(&self, tasks: &[TaskId], timeout: Option<Duration>) -> Result<Ready> {
        let ids: Vec<u64> = tasks.iter().map(|t| t.0).collect();
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i64::MAX as u128) as i64);
        match self.handle.task_wait(&ids, ms) {
            Ok((abi::NGX_POOL_TASK_YOURS, t)) => Ok(Ready::Yours(TaskId(t))),
            Ok((_, t)) => Ok(Ready::Answered(TaskId(t))),
            Err(rc) => Err(Error::from_status(rc, "waiting for tasks")),
        }
    }

    /// The output of an answered task ([`ErrorKind::Lost`] if its worker died), released.
    pub fn result(&self, task: TaskId) -> Result<Vec<u8>> {
        let out = self
            .handle
            .task_result(task.0)
            .map_err(|rc| Error::from_status(rc, "a task"));
        self.handle.task_release(task.0);
        out
    }

    /// Forgets a task (cancelled if not answered yet).
    pub fn release(&self, task: TaskId) {
        self.handle.task_release(task.0);
    }

    /// Runs `run_here` over every input on the pool: each input is a task for the pool's
    /// workers, or run here when no worker is free (`run_here` must do what the handler's
    /// `run_task` does). The outputs in the inputs' order; a task whose worker died is an
    /// [`ErrorKind::Lost`] error in its place.
    pub fn map<I, F>(&self, inputs: &[I], run_here: F) -> Result<Vec<Result<Vec<u8>>>>
    where
        I: AsRef<[u8]>,
        F: Fn(&[u8]) -> Result<Vec<u8>>,
    {
        let mut results: Vec<Option<Result<Vec<u8>>>> = (0..inputs.len()).map(|_| None).collect();
        let mut pending: Vec<(TaskId, usize)> = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            match self.submit(input.as_ref())? {
                Some(t) => pending.push((t, i)),
                None => results[i] = Some(run_here(input.as_ref())),
            }
        }
        let released = Release {
            fanout: *self,
            tasks: &mut pending,
        };
        while !released.tasks.is_empty() {
            let ids: Vec<TaskId> = released.tasks.iter().map(|(t, _)| *t).collect();
            let ready = self.wait(&ids, None)?;
            let (Ready::Answered(t) | Ready::Yours(t)) = ready;
            let Some(at) = released.tasks.iter().position(|(p, _)| *p == t) else {
                return Err(Error::new(
                    ErrorKind::State,
                    "the host named a task not ours",
                ));
            };
            let (_, i) = released.tasks.swap_remove(at);
            results[i] = Some(match ready {
                Ready::Answered(t) => self.result(t),
                Ready::Yours(_) => run_here(inputs[i].as_ref()),
            });
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::new(ErrorKind::State, "no result"))))
            .collect())
    }
}

/// Releases the tasks a `map` still holds when it returns early.
struct Release<'a> {
    fanout: Fanout,
    tasks: &'a mut Vec<(TaskId, usize)>,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        for (t, _) in self.tasks.drain(..) {
            self.fanout.release(t);
        }
    }
}

/// A fan-out task being run, for [`Handler::run_task`](crate::Handler::run_task): its input
/// and its output.
pub struct Task {
    handle: Detached,
}

impl Task {
    pub(crate) fn new(handle: Detached) -> Task {
        Task { handle }
    }

    /// The whole input.
    pub fn input(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut r = TaskInput {
            handle: self.handle,
        };
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    /// Appends output bytes (they stream to the caller as it reads them).
    pub fn write(&self, data: &[u8]) -> Result {
        match self.handle.write(data) {
            abi::NGX_POOL_OK => Ok(()),
            rc => Err(Error::from_status(rc, "writing a task's output")),
        }
    }

    /// True once the request this task serves no longer wants it.
    pub fn is_cancelled(&self) -> bool {
        self.handle.is_cancelled()
    }

    /// A nested fan-out, with this task's deadline.
    pub fn fanout(&self) -> Fanout {
        Fanout::new(self.handle)
    }

    /// Writes `msg` to error_log.
    pub fn log(&self, level: Level, msg: &str) {
        self.handle.log(level, msg);
    }
}

struct TaskInput {
    handle: Detached,
}

impl Read for TaskInput {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.handle
            .read(buf)
            .map_err(|rc| Error::from_status(rc, "reading a task's input").into_io())
    }
}
