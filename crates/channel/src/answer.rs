//! The nginx side of reading an answer's body out of the arena into nginx's own buffers (what
//! the module's buffered responses do): every end of the stream checked once, here: the length
//! the head announced, the total the worker published when done, a worker that failed, a slot
//! that is no longer ours.

use crate::region::Region;
use crate::slot::{self, SlotId, SlotState};
use crate::stream::{self, Direction, StreamReader};

/// A response body being read out of the arena by the nginx worker that owns the slot.
#[derive(Debug)]
pub struct AnswerReader {
    id: SlotId,
    reader: StreamReader,
    /// Length of the response head (the stream's body starts after it).
    head_len: u64,
    /// The body length the head announced, if any.
    declared: Option<u64>,
}

/// One step of [`AnswerReader::fill`].
#[derive(Debug, PartialEq, Eq)]
pub enum Fill {
    /// This many bytes were copied.
    Data(usize),
    /// Nothing is published yet; the pool worker wakes the nginx worker when there is (asked).
    Again,
    /// The whole answer was read.
    End,
    /// The stream broke or the worker failed: why.
    Broken(String),
}

impl AnswerReader {
    /// Reads slot `id`'s response with `reader`, which stands after the `head_len`-byte head.
    pub fn new(id: SlotId, reader: StreamReader, head_len: u64, declared: Option<u64>) -> Self {
        AnswerReader {
            id,
            reader,
            head_len,
            declared,
        }
    }

    /// Copies published bytes into `bufs` in order, each filled before the next (as `readv`
    /// does), frees the chunks they came from and wakes the handler if it waits for credit.
    pub fn fill(&mut self, region: &Region, bufs: &mut [&mut [u8]]) -> Fill {
        let (id, dir) = (self.id, Direction::Response);
        let mut asked = false;
        loop {
            let mut n = 0usize;
            for buf in bufs.iter_mut() {
                match self.reader.read(region, id, dir, buf) {
                    Ok(k) => {
                        n += k;
                        if k < buf.len() {
                            break;
                        }
                    }
                    Err(e) => return Fill::Broken(format!("pool worker's response: {e}")),
                }
            }
            let position = self.reader.position();
            if let Some(d) = self.declared {
                if position.saturating_sub(self.head_len) > d {
                    return Fill::Broken(format!(
                        "pool worker's response body is longer than the {d} bytes announced"
                    ));
                }
            }
            if n > 0 {
                if self.reader.release(region, id, dir, position) {
                    stream::notify_worker(region, id);
                }
                return Fill::Data(n);
            }
            match slot::state_of(region, id) {
                Some(SlotState::Done) => {
                    let total = slot::response(region, id).map_or(0, |(_, t)| t);
                    if total != position {
                        return Fill::Broken(format!(
                            "pool worker's response: {total} bytes announced, {position} published"
                        ));
                    }
                    let body = total.saturating_sub(self.head_len);
                    if let Some(d) = self.declared.filter(|d| *d != body) {
                        return Fill::Broken(format!(
                            "pool worker's response body is {body} bytes, not the {d} announced"
                        ));
                    }
                    return Fill::End;
                }
                Some(SlotState::Streaming) if !asked => {
                    // Ask to be told of more bytes, then look once more: they may have come
                    // just before.
                    stream::want_nginx_wake(region, id);
                    asked = true;
                }
                Some(SlotState::Streaming) => return Fill::Again,
                Some(SlotState::Failed) => {
                    let reason = slot::fail_reason(region, id);
                    return Fill::Broken(format!("request failed in the pool: {reason:?}"));
                }
                other => {
                    return Fill::Broken(format!("request lost its slot (state {other:?})"));
                }
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::layout::Geometry;
    use crate::slot as worker;
    use crate::stream::StreamWriter;

    /// A slot taken by worker 0, its request queued by nginx connection 0.
    fn running(r: &Region) -> SlotId {
        let id = slot::alloc(r.nginx_side(), 0, 1).unwrap();
        stream::write_all(r, id, Direction::Request, &[b"head"]).unwrap();
        assert!(slot::enqueue(r.nginx_side(), id, 4, 4));
        assert_eq!(worker::take(r.pool_side(), 0), Some(id));
        id
    }

    fn answer(r: &Region, id: SlotId, head: &[u8], body: &[u8], done: bool) {
        let mut w = StreamWriter::new();
        w.append(r, id, Direction::Response, head).unwrap();
        w.append(r, id, Direction::Response, body).unwrap();
        w.publish(r, id, Direction::Response);
        let total = w.written();
        if done {
            worker::finish(r.pool_side(), id, head.len() as u32, total);
        } else {
            worker::start_streaming(r.pool_side(), id, head.len() as u32);
        }
    }

    fn after_head(r: &Region, id: SlotId, head_len: usize) -> StreamReader {
        let mut reader = StreamReader::new();
        let mut head = vec![0u8; head_len];
        assert_eq!(
            reader.read(r, id, Direction::Response, &mut head).unwrap(),
            head_len
        );
        reader
    }

    #[test]
    fn a_whole_answer_fills_buffers_in_order_then_ends() {
        let r = Region::create("a", Geometry::for_tests(2, 64), 1).unwrap();
        let id = running(&r);
        let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        answer(&r, id, b"HEAD", &body, true);
        let mut a = AnswerReader::new(id, after_head(&r, id, 4), 4, Some(5000));
        let (mut x, mut y) = (vec![0u8; 3000], vec![0u8; 3000]);
        assert_eq!(a.fill(&r, &mut [&mut x, &mut y]), Fill::Data(5000));
        assert_eq!(&x[..], &body[..3000]);
        assert_eq!(&y[..2000], &body[3000..]);
        assert_eq!(a.fill(&r, &mut [&mut x]), Fill::End);
    }

    #[test]
    fn more_than_announced_a_short_total_and_a_failed_worker_are_broken() {
        let r = Region::create("a", Geometry::for_tests(4, 64), 1).unwrap();
        let id = running(&r);
        answer(&r, id, b"HEAD", &[7u8; 100], true);
        let mut a = AnswerReader::new(id, after_head(&r, id, 4), 4, Some(50));
        assert!(matches!(
            a.fill(&r, &mut [&mut [0u8; 200]]),
            Fill::Broken(_)
        ));

        let id = running(&r);
        answer(&r, id, b"HEAD", &[7u8; 100], true);
        let mut a = AnswerReader::new(id, after_head(&r, id, 4), 4, Some(150));
        assert_eq!(a.fill(&r, &mut [&mut [0u8; 200]]), Fill::Data(100));
        assert!(matches!(
            a.fill(&r, &mut [&mut [0u8; 200]]),
            Fill::Broken(_)
        ));

        let id = running(&r);
        answer(&r, id, b"HEAD", &[7u8; 10], false);
        let mut a = AnswerReader::new(id, after_head(&r, id, 4), 4, None);
        assert_eq!(a.fill(&r, &mut [&mut [0u8; 200]]), Fill::Data(10));
        assert_eq!(a.fill(&r, &mut [&mut [0u8; 200]]), Fill::Again);
        worker::fail(r.pool_side(), id, slot::FailReason::WorkerDied);
        assert!(matches!(
            a.fill(&r, &mut [&mut [0u8; 200]]),
            Fill::Broken(_)
        ));
    }
}
