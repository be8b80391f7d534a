//! When the ring reader asks the probes to wake it. Records wake the reader only on request
//! (a wakeup costs the probe an irq_work, and each turn costs the reader and the worker a
//! context switch, ~30 µs here): idle, it asks and sleeps; while records keep coming it
//! takes them in turns `BUSY_POLL_MS` apart without asking. Between the two sits sparse
//! traffic: a log line, then the connect, headers and body of the request it announced,
//! a few records a millisecond apart, then nothing for a while. Waiting out the busy turn
//! put such a body 5–10 ms behind its write; so for `WINDOW` after the reader was woken
//! from idle, a turn of a few records asks again at once, out of a budget of early
//! wakeups that refills at a fixed rate. A stream, steady or thin, never lets the reader
//! go idle and keeps its batched turns (early turns for every small turn of a 500/s exec
//! loop cost the daemon 15–25 % more CPU), and the budget bounds the rest.
use std::time::{Duration, Instant};

/// While records keep coming, the reader takes them in turns this far apart instead of
/// being woken by each. Daemon CPU per exec in a 1,400/s exec loop (50 variables): 35–45 µs
/// at 2 ms, 31–32 µs at 5 ms.
pub const BUSY_POLL_MS: i32 = 5;
/// A turn of at most this many records was sparse traffic.
const SPARSE_RECORDS: usize = 4;
/// Early wakeups the reader may ask for in a row, and how many a second refill.
const BURST: f64 = 8.0;
const PER_SEC: f64 = 100.0;
/// How long after a wakeup from idle small turns may ask for early wakeups.
const WINDOW: Duration = Duration::from_millis(20);

pub struct Wake {
    budget: f64,
    at: Instant,
    /// When a record last woke the reader from idle.
    woken: Option<Instant>,
}

impl Wake {
    pub fn new(now: Instant) -> Self {
        Wake {
            budget: BURST,
            at: now,
            woken: None,
        }
    }

    /// After a turn that read `records` (> 0) at `now`, woken from idle (`from_idle`) or
    /// taken after a busy one: whether to ask the next record to wake the reader rather
    /// than look again in `BUSY_POLL_MS`.
    pub fn early(&mut self, records: usize, from_idle: bool, now: Instant) -> bool {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.budget = (self.budget + secs * PER_SEC).min(BURST);
        self.at = now;
        if from_idle {
            self.woken = Some(now);
        }
        let fresh = self
            .woken
            .is_some_and(|t| now.saturating_duration_since(t) < WINDOW);
        if records > SPARSE_RECORDS || !fresh || self.budget < 1.0 {
            return false;
        }
        self.budget -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_turns_wake_early_and_a_stream_of_them_is_bounded() {
        let t0 = Instant::now();
        let mut w = Wake::new(t0);
        // A burst of small turns: the first BURST are early, then the budget is spent.
        let early = (0..20)
            .filter(|i| w.early(1, *i == 0, t0 + Duration::from_micros(*i)))
            .count();
        assert_eq!(early, BURST as usize);
        // One second of small turns every 1 ms: at most PER_SEC (+1 for rounding) early.
        let start = t0 + Duration::from_millis(10);
        let mut w = Wake::new(start);
        // Woken from idle every 10 ms, a small turn every 1 ms.
        let n = (1..=1000)
            .filter(|i| w.early(2, i % 10 == 1, start + Duration::from_millis(*i)))
            .count();
        assert!(n <= PER_SEC as usize + BURST as usize + 1, "{n}");
        assert!(n >= PER_SEC as usize, "{n}");
    }

    #[test]
    fn a_full_turn_is_batched_and_keeps_the_budget() {
        let t0 = Instant::now();
        let mut w = Wake::new(t0);
        for i in 0..100 {
            assert!(!w.early(SPARSE_RECORDS + 1, i == 0, t0 + Duration::from_micros(i)));
        }
        assert!(w.early(1, false, t0 + Duration::from_micros(100)));
    }

    #[test]
    fn the_budget_refills_after_a_quiet_spell() {
        let t0 = Instant::now();
        let mut w = Wake::new(t0);
        while w.early(1, true, t0) {}
        assert!(!w.early(1, false, t0 + Duration::from_micros(500)));
        assert!(w.early(1, true, t0 + Duration::from_millis(20)));
    }

    #[test]
    fn a_stream_that_never_lets_the_reader_idle_is_batched() {
        let t0 = Instant::now();
        let mut w = Wake::new(t0);
        // Small turns 5 ms apart, the first woken from idle: early only within WINDOW.
        let early: Vec<bool> = (0..20)
            .map(|i| w.early(2, i == 0, t0 + Duration::from_millis(5 * i)))
            .collect();
        let n = early.iter().filter(|e| **e).count();
        assert_eq!(n, (WINDOW.as_millis() / 5) as usize, "{early:?}");
        assert!(early[..n].iter().all(|e| *e), "{early:?}");
    }
}
