//! When the daemon hands freed heap back to the kernel besides its minute trim: once a
//! burst is over. glibc keeps up to 8 MiB of free heap top while the daemon works (see
//! `daemon::tune_malloc`: handing it back and faulting it in again cost CPU under load);
//! after a burst that memory stayed resident until the next minute's trim, so RSS read
//! high for up to a minute after the load had stopped. Busy is judged by the daemon's own
//! CPU time, not by RSS: a steady load keeps RSS flat too, and trimming under it brings
//! back the churn `tune_malloc` stopped.
use std::time::Duration;

/// Anonymous resident bytes above the last idle trim's before a trim is worth it.
const GROWTH: u64 = 4 << 20;
/// CPU time per tick (second) under which the daemon is idle (it uses ~1 ms at rest).
const IDLE_CPU: Duration = Duration::from_millis(5);
/// Idle ticks in a row that mean a burst is over.
const IDLE_TICKS: u32 = 3;

/// Tracks the daemon tick by tick: a trim is due once it has been idle for `IDLE_TICKS`
/// with its anonymous RSS `GROWTH` above what it was after the last trim at rest.
#[derive(Debug, Default)]
pub struct Trim {
    /// Anonymous RSS after the last trim at rest (`None`: no trim yet).
    base: Option<u64>,
    last_cpu: Option<Duration>,
    idle: u32,
}

impl Trim {
    /// At this tick the daemon's anonymous RSS is `anon` bytes and its CPU time so far
    /// `cpu`: is a trim due?
    pub fn due(&mut self, anon: u64, cpu: Duration) -> bool {
        let busy = self
            .last_cpu
            .is_none_or(|c| cpu.saturating_sub(c) >= IDLE_CPU);
        self.last_cpu = Some(cpu);
        self.idle = if busy { 0 } else { self.idle + 1 };
        self.idle >= IDLE_TICKS && self.base.is_some_and(|b| anon >= b.saturating_add(GROWTH))
    }

    /// A trim ran (this one or the periodic one) and left `anon` bytes. Taken as the base
    /// only at rest (or as the first): a trim in the middle of a burst sees memory the
    /// burst still uses, and that base would hide what the burst frees at its end.
    pub fn trimmed(&mut self, anon: u64) {
        if self.base.is_none() || self.idle >= IDLE_TICKS {
            self.base = Some(anon);
        }
    }
}

/// The daemon's anonymous resident bytes (`/proc/self/statm` resident − shared: the heap,
/// not the binary's pages or the rings' mapped pages), 0 when unreadable.
pub fn anon_rss() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            let mut f = s.split_whitespace().skip(1);
            let resident = f.next()?.parse::<u64>().ok()?;
            let shared = f.next()?.parse::<u64>().ok()?;
            Some(resident.saturating_sub(shared))
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(4096) as u64
}

/// The daemon's user + system CPU time so far.
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given; all-zero is a valid rusage.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    /// Feeds `t` ticks of (anon MB, CPU ms in that tick); returns which were due.
    fn run(t: &mut Trim, cpu: &mut Duration, ticks: &[(u64, u64)]) -> Vec<bool> {
        ticks
            .iter()
            .map(|&(anon, ms)| {
                *cpu += Duration::from_millis(ms);
                t.due(anon * MB, *cpu)
            })
            .collect()
    }

    #[test]
    fn a_burst_is_trimmed_once_the_daemon_has_rested() {
        let (mut t, mut cpu) = (Trim::default(), Duration::ZERO);
        // No trim before the first one (start-up's).
        assert!(!run(&mut t, &mut cpu, &[(60, 1); 10]).contains(&true));
        t.trimmed(30 * MB);
        // The burst: busy, no trim however flat RSS is.
        assert!(!run(&mut t, &mut cpu, &[(40, 300); 20]).contains(&true));
        // At rest: due at the third idle tick, not before.
        let rest = run(&mut t, &mut cpu, &[(40, 1), (40, 1), (40, 1)]);
        assert_eq!(rest, [false, false, true]);
        // What the trim could not hand back is the new base: no trim again at rest.
        t.trimmed(36 * MB);
        assert!(!run(&mut t, &mut cpu, &[(36, 1); 100]).contains(&true));
        // Grown again at rest (caches filled), trimmed once.
        let d = run(&mut t, &mut cpu, &[(41, 1); 5]);
        assert_eq!(d, [true, true, true, true, true]);
        t.trimmed(41 * MB);
        assert!(!run(&mut t, &mut cpu, &[(41, 1); 10]).contains(&true));
    }

    #[test]
    fn a_steady_load_is_never_trimmed_and_its_minute_trim_sets_no_base() {
        let (mut t, mut cpu) = (Trim::default(), Duration::ZERO);
        run(&mut t, &mut cpu, &[(30, 1); 5]);
        t.trimmed(30 * MB);
        // Steady work, RSS flat well above the base: never due.
        assert!(!run(&mut t, &mut cpu, &[(45, 20); 200]).contains(&true));
        // The minute trim lands mid-load and leaves 44 MB in use: not the base, so what
        // the load frees when it ends is still trimmed once the daemon rests.
        t.trimmed(44 * MB);
        let d = run(&mut t, &mut cpu, &[(45, 20), (45, 1), (45, 1), (45, 1)]);
        assert_eq!(d, [false, false, false, true]);
    }

    #[test]
    fn under_growth_at_rest_is_not_worth_a_trim() {
        let (mut t, mut cpu) = (Trim::default(), Duration::ZERO);
        t.trimmed(30 * MB);
        assert!(!run(&mut t, &mut cpu, &[(33, 1); 50]).contains(&true));
    }

    #[test]
    fn this_process_is_measured() {
        assert!(anon_rss() > MB);
        let a = cpu_time();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_time() > a);
    }
}
