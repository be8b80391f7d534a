//! What a panic in leakwatch's own code does. The daemon handles what it observes on
//! threads that must outlive a bug: a panic there drops the one record or file it was
//! handling, is counted (`leakwatch_internal_errors_total{stage}`) and logged, and the
//! thread goes on. The log line never carries a formatted panic message: one built from
//! the bytes being handled (an `unwrap` of an error that quotes its input) would put a
//! secret in the journal.
use std::panic::{catch_unwind, AssertUnwindSafe};

use prometheus::IntCounterVec;

/// The `stage` labels: the reader's decoding of kernel records, the pipeline's stages by
/// record family, its periodic work (ticks, held files, the last pass at stop), the core
/// scanner's files, the TLS watcher's and the TLS blind-spot check's executables.
pub const STAGES: [&str; 11] = [
    "decode",
    "exec",
    "enforce",
    "write",
    "copy",
    "core",
    "connect",
    "periodic",
    "core_scan",
    "tls_watch",
    "tls_blind",
];

/// Panics logged one by one; past these, every `LOG_EVERY`th (a bug met by every record,
/// or every tick, would flood the journal; the counter has them all).
const LOG_FIRST: u64 = 20;
const LOG_EVERY: u64 = 1000;

/// Installs the process's panic hook: the thread and the place in the source always;
/// the message only when it is a literal (`panic!("...")`), since a formatted one may
/// quote observed bytes.
pub fn install_hook() {
    static SEEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    std::panic::set_hook(Box::new(|info| {
        if EXPECTED.get() {
            return;
        }
        let n = SEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if n > LOG_FIRST && !n.is_multiple_of(LOG_EVERY) {
            return;
        }
        let thread = std::thread::current();
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_else(|| "an unknown place".into());
        let message = match info.payload().downcast_ref::<&'static str>() {
            Some(s) => s,
            None => "(message withheld: it may quote the bytes being handled)",
        };
        let more = if n < LOG_FIRST {
            String::new()
        } else {
            format!(" ({n} panics so far; from here on one in {LOG_EVERY} is logged)")
        };
        log::error!(
            "bug: thread '{}' panicked at {place}: {message}; please report it with this line{more}",
            thread.name().unwrap_or("unnamed")
        );
    }));
}

/// Runs `f`. A panic in it is counted under `stage` and `None` returned, so the calling
/// thread goes on with its next record (the hook has logged where it happened).
pub fn guard<T>(stage: &str, errors: &IntCounterVec, f: impl FnOnce() -> T) -> Option<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(_) => {
            errors.with_label_values(&[stage]).inc();
            None
        }
    }
}

thread_local! {
    /// Set while `contained` runs: its panics are no bug of leakwatch's.
    static EXPECTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs third-party code known to panic on bad input (the `hpack` decoder on a malformed
/// header block a watched process sent): a panic is `None`, neither logged as a bug nor
/// counted, and does not use up the hook's budget of logged panics.
pub fn contained<T>(f: impl FnOnce() -> T) -> Option<T> {
    EXPECTED.set(true);
    let r = catch_unwind(AssertUnwindSafe(f)).ok();
    EXPECTED.set(false);
    r
}

/// For tests only: the value of `LEAKWATCH_FAULT_PANIC`, when set and not empty.
fn fault_mark() -> Option<&'static [u8]> {
    static MARK: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    MARK.get_or_init(|| {
        std::env::var_os("LEAKWATCH_FAULT_PANIC")
            .filter(|v| !v.is_empty())
            .map(|v| std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()).to_vec())
    })
    .as_deref()
}

/// For tests only: whether `injected_fault` strikes on `payload`.
pub fn fault_matches(payload: &[u8]) -> bool {
    fault_mark().is_some_and(|m| memchr::memmem::find(payload, m).is_some())
}

/// For tests only: with `LEAKWATCH_FAULT_PANIC` set, a write whose payload holds its value
/// panics, with the payload in the message, so a test can show that the daemon survives
/// a bug in its write stage, counts it, and does not log what it was handling.
pub fn injected_fault(payload: &[u8]) {
    if fault_matches(payload) {
        panic!(
            "injected fault on a write of {:?}",
            String::from_utf8_lossy(payload)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_counted_under_its_stage_and_the_caller_goes_on() {
        let errors = IntCounterVec::new(prometheus::Opts::new("e", "e"), &["stage"]).unwrap();
        assert_eq!(guard("write", &errors, || 7), Some(7));
        let r: Option<()> = guard("write", &errors, || panic!("a bug"));
        assert_eq!(r, None);
        let v = std::hint::black_box([1u8]);
        let r = guard("tick", &errors, || v[usize::from(v[0]) + 3]);
        assert_eq!(r, None);
        assert_eq!(errors.with_label_values(&["write"]).get(), 1);
        assert_eq!(errors.with_label_values(&["tick"]).get(), 1);
    }

    #[test]
    fn a_contained_panic_is_none_and_the_thread_is_not_left_marked() {
        assert_eq!(contained(|| 3), Some(3));
        let r: Option<()> = contained(|| panic!("a malformed block"));
        assert_eq!(r, None);
        assert!(!EXPECTED.get(), "later panics would go unlogged");
    }
}
