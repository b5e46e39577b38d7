//! A pool of dynamic size (`workers=MIN-MAX`, php-fpm's `pm = dynamic`): while requests wait in
//! the queue it grows, every GROW_TICK, by as many workers as wait but at most doubling (no
//! herd), up to MAX, forked from the preloaded manager so they serve at once; it shrinks by one
//! worker idle for `idle_timeout`, down to MIN. The bound stays MAX: the region's slots are
//! MAX + queue whatever the size.

use super::*;

/// How often a dynamic pool looks at its queue (poold's tick while it is dynamic): a burst is
/// met within this, at the cost of a poll wake-up per tick while idle.
pub(super) const GROW_TICK: Duration = Duration::from_millis(50);

impl Supervisor {
    /// Called on each tick: grow or shrink by at most one worker.
    pub(super) fn resize(&mut self) -> io::Result<()> {
        let Some(min) = self.cfg.pool.min_workers else {
            return Ok(());
        };
        let (min, max) = (min as usize, self.cfg.pool.workers as usize);
        let now = Instant::now();
        // Serving or about to (a respawn pending); retiring ones are counted with their
        // replacements, shrinking ones are on their way out.
        let serving = |w: &WorkerSlot| {
            (w.pid.is_some() && !w.shrinking && !w.replaced)
                || (w.pid.is_none() && w.respawn_at.is_some())
        };
        let size = self.workers.iter().filter(|w| serving(w)).count();
        let waiting = ngx_pool_channel::queue::depth(&self.region);
        if waiting > 0 && size < max && self.last_grow.is_none_or(|t| now - t >= GROW_TICK) {
            let grow = (waiting as usize).min(max - size).min(size.max(1));
            let spares: Vec<usize> = (0..self.workers.len())
                .filter(|&j| {
                    let w = &self.workers[j];
                    w.pid.is_none() && w.respawn_at.is_none() && w.replacing.is_none()
                })
                .take(grow)
                .collect();
            if !spares.is_empty() {
                self.last_grow = Some(now);
                log!(
                    "info",
                    "{waiting} requests wait: the pool grows to {} workers (at most {max})",
                    size + spares.len()
                );
                for j in spares {
                    self.spawn(j)?;
                }
                return Ok(());
            }
        }
        // Who has been idle, and since when.
        for i in 0..self.workers.len() {
            let served: u64 = self
                .entries(i)
                .map(|e| e.served.load(Ordering::Relaxed))
                .sum();
            let busy = self
                .entries(i)
                .any(|e| e.current.load(Ordering::Relaxed) != 0);
            let w = &mut self.workers[i];
            if w.pid.is_none() {
                continue;
            }
            if busy || served != w.last_served {
                w.last_served = served;
                w.idle_since = None;
            } else if w.idle_since.is_none() {
                w.idle_since = Some(now);
            }
        }
        if size <= min || waiting > 0 {
            return Ok(());
        }
        let idle_for = Duration::from_millis(self.cfg.pool.idle_timeout_ms);
        let longest = (0..self.workers.len())
            .filter(|&i| serving(&self.workers[i]) && self.workers[i].pid.is_some())
            .filter_map(|i| self.workers[i].idle_since.map(|t| (t, i)))
            .filter(|(t, _)| now - *t >= idle_for)
            .min();
        if let Some((_, i)) = longest {
            self.workers[i].shrinking = true;
            log!(
                "info",
                "pool worker {} idle for {idle_for:?}: the pool shrinks to {} workers (at least {min})",
                self.workers[i].pid.map_or(0, |p| p.as_raw()),
                size - 1
            );
            self.tell_retire(i);
        }
        Ok(())
    }
}
