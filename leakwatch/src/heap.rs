//! When the daemon hands freed heap back to the kernel besides its minute trim: once a
//! burst is over. glibc keeps up to 8 MiB of free heap top while the daemon works (see
//! `daemon::tune_malloc`: handing it back and faulting it in again cost CPU under load);
//! after a burst that memory stayed resident until the next minute's trim, so RSS read
//! high for up to a minute after the load had stopped.

/// Resident bytes the trim may hand back before it is worth a trim.
const GROWTH: u64 = 4 << 20;
/// RSS moving less than this between ticks is flat.
const STILL: u64 = 1 << 20;
/// Ticks (seconds) of flat RSS that mean the burst is over.
const FLAT_TICKS: u32 = 3;

/// Tracks RSS tick by tick: a trim is due once RSS has grown `GROWTH` past what it was
/// after the last trim and has then stayed flat for `FLAT_TICKS`.
#[derive(Debug, Default)]
pub struct Trim {
    /// RSS after the last trim (`None`: no trim yet; start-up has its own).
    base: Option<u64>,
    prev: u64,
    flat: u32,
}

impl Trim {
    /// RSS at this tick is `rss` bytes: is a trim due?
    pub fn due(&mut self, rss: u64) -> bool {
        if rss.abs_diff(self.prev) < STILL {
            self.flat += 1;
        } else {
            self.flat = 0;
        }
        self.prev = rss;
        self.flat >= FLAT_TICKS && self.base.is_some_and(|b| rss >= b.saturating_add(GROWTH))
    }

    /// A trim ran (this one or the periodic one); RSS is now `rss`. What it could not
    /// hand back (memory in use, ring pages touched) is the new base, so an idle daemon
    /// is not trimmed again and again.
    pub fn trimmed(&mut self, rss: u64) {
        self.base = Some(rss);
        self.prev = rss;
        self.flat = 0;
    }
}

/// The daemon's resident set in bytes (`/proc/self/statm`), 0 when unreadable.
pub fn rss() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(4096) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    #[test]
    fn a_burst_is_trimmed_once_rss_has_stayed_flat() {
        let mut t = Trim::default();
        // No trim before the first one (start-up's).
        assert!(!(0..10).any(|_| t.due(60 * MB)));
        t.trimmed(50 * MB);
        // The burst: RSS climbs, no trim while it does.
        let climbing: Vec<bool> = [52, 56, 61, 66, 70].iter().map(|m| t.due(m * MB)).collect();
        assert!(climbing.iter().all(|d| !d), "{climbing:?}");
        // Then flat: due at the third flat tick, not before.
        let flat: Vec<bool> = (0..3).map(|_| t.due(70 * MB)).collect();
        assert_eq!(flat, [false, false, true]);
        // What the trim could not hand back is the new base: no trim again while idle.
        t.trimmed(62 * MB);
        assert!(!(0..100).any(|_| t.due(62 * MB)));
    }

    #[test]
    fn small_growth_or_jitter_is_not_worth_a_trim() {
        let mut t = Trim::default();
        t.trimmed(50 * MB);
        // Under GROWTH above the base, however long it stays.
        assert!(!(0..20).any(|_| t.due(53 * MB)));
        // Jitter under STILL still counts as flat once the growth is there.
        let d: Vec<bool> = [55 * MB, 55 * MB + MB / 2, 55 * MB, 55 * MB + MB / 4]
            .iter()
            .map(|r| t.due(*r))
            .collect();
        assert_eq!(d, [false, false, false, true]);
    }

    #[test]
    fn rss_reads_this_process() {
        assert!(rss() > MB);
    }
}
