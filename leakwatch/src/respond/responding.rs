//! Whether a freeze or a kill is under way. Background work that can wait (the action
//! log's inserts, and its rewrite of a newly frozen key out of old rows, which reads every
//! exec row) waits for it: on a 2-core host it would take a core from the scan and the
//! sever, and the rewrite's cost grows with the log.
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// How often a waiter looks again.
const POLL: Duration = Duration::from_millis(2);

#[derive(Clone, Default)]
pub struct Responding(Arc<AtomicUsize>);

/// Held for the length of one sweep.
pub struct Guard(Arc<AtomicUsize>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Responding {
    pub fn start(&self) -> Guard {
        self.0.fetch_add(1, Ordering::AcqRel);
        Guard(self.0.clone())
    }

    pub fn active(&self) -> bool {
        self.0.load(Ordering::Acquire) > 0
    }

    /// Sleeps until no sweep is under way, or `max` has passed (sweeps may follow one
    /// another; the caller bounds how often it waits). How long it waited.
    pub fn wait_idle(&self, max: Duration) -> Duration {
        let t0 = Instant::now();
        while self.active() && t0.elapsed() < max {
            std::thread::sleep(POLL);
        }
        t0.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_while_a_guard_lives() {
        let r = Responding::default();
        assert!(!r.active());
        let a = r.start();
        let b = r.clone().start();
        drop(a);
        assert!(r.active());
        drop(b);
        assert!(!r.active());
        assert!(r.wait_idle(Duration::from_secs(5)) < Duration::from_secs(1));
    }

    #[test]
    fn a_waiter_gives_up_after_max() {
        let r = Responding::default();
        let _g = r.start();
        let waited = r.wait_idle(Duration::from_millis(20));
        assert!(waited >= Duration::from_millis(20));
    }
}
