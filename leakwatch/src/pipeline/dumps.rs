//! Crash dumps and diagnostic reports among ordinary writes: a stream is one when its file
//! is named like one (JVM `hs_err_pid*.log`, a Node report's default name, `core`,
//! `core.PID`) or a write starts like one (a Node report's JSON header, the JVM's fatal
//! error banner, Python's `Fatal Python error:`). Findings in it get the source
//! `crash_dump`, the kind of dump, and whether the crashed process carried credentials
//! at exec — the responder's first questions.
use super::Pipeline;

/// The kind of dump a file name says, if any.
pub fn by_name(path: &str) -> Option<&'static str> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if name.starts_with("hs_err_pid") && name.ends_with(".log") {
        return Some("jvm-hs-err");
    }
    // report.20261203.061502.4242.0.001.json
    if let Some(mid) = name
        .strip_prefix("report.")
        .and_then(|r| r.strip_suffix(".json"))
    {
        let parts: Vec<&str> = mid.split('.').collect();
        if parts.len() == 5 && parts.iter().all(|p| digits(p)) {
            return Some("node-report");
        }
    }
    if name == "core" || name.strip_prefix("core.").is_some_and(digits) {
        return Some("core");
    }
    None
}

/// The kind of dump a write's first bytes (after white space: Node starts its report
/// with a newline) begin, if any.
pub fn by_content(data: &[u8]) -> Option<&'static str> {
    let start = data
        .iter()
        .take(16)
        .take_while(|b| b.is_ascii_whitespace())
        .count();
    let data = &data[start..];
    let head = &data[..data.len().min(256)];
    // A plain window compare: 256 bytes at most, so building a `memmem` searcher per
    // call (every new stream) would cost more than the search.
    let has = |s: &[u8]| head.windows(s.len()).any(|w| w == s);
    if head.starts_with(b"{") && has(b"\"header\"") && has(b"\"reportVersion\"") {
        Some("node-report")
    } else if head.starts_with(b"#") && has(b"A fatal error has been detected by the Java Runtime")
    {
        Some("jvm-hs-err")
    } else if head.starts_with(b"Fatal Python error: ") {
        Some("python-fatal-error")
    } else {
        None
    }
}

/// What the crashed process carried at exec: (credentials seen in its argv or
/// environment, whether one of them is frozen).
pub fn at_exec(p: &Pipeline, tgid: u32) -> (usize, bool) {
    let fps: Vec<String> = p
        .shared
        .history
        .read()
        .map(|h| {
            h.iter()
                .filter(|(t, _)| *t == tgid)
                .map(|(_, f)| f.clone())
                .collect()
        })
        .unwrap_or_default();
    let frozen = crate::detect::frozen::FrozenSet::read(&p.shared.frozen)
        .keys()
        .iter()
        .any(|k| fps.iter().any(|fp| *fp == k.fingerprint()));
    let mut uniq = fps;
    uniq.sort();
    uniq.dedup();
    (uniq.len(), frozen)
}

/// Reports a dump scanned outside the write path (a kernel core): `crash_dump` findings
/// for the crashed process, with where the dump is kept.
pub fn on_report(p: &mut Pipeline, r: crate::crash::DumpReport) {
    use crate::{pipeline::Hit, source::Source};
    p.metrics
        .scanned_bytes
        .with_label_values(&[Source::CrashDump.as_str()])
        .inc_by(r.bytes);
    for problem in &r.problems {
        log::warn!("core dump of pid {} ({}): {problem}", r.pid, r.comm);
    }
    if r.hits.is_empty() {
        return;
    }
    let (creds, frozen) = at_exec(p, r.pid);
    let mut info = crate::procs::ProcInfo {
        interpreter: None,
        pid: r.pid,
        ppid: r.ppid,
        uid: r.uid,
        comm: r.comm.clone(),
        exe: r.exe.clone(),
        unit: r.cgroup.as_deref().and_then(crate::procs::unit_of),
        cgroup: r.cgroup.clone(),
    };
    if info.exe.is_empty() {
        info.exe = p.procs.exe_seen(r.pid, &r.comm).unwrap_or_default();
    }
    let hits = r
        .hits
        .iter()
        .map(|f| {
            let mut h = Hit {
                rule: f.rule.clone(),
                source: Source::CrashDump,
                fingerprint: f.fingerprint.clone(),
                redacted: f.redacted.clone(),
                path: r.path.clone(),
                remote: None,
                extra: Default::default(),
                expected: false,
            }
            .with("dump", r.kind.as_str())
            .with("dump_via", r.how.as_str())
            .with("offset", f.offset)
            .with("bytes", r.bytes)
            .with("signal", r.signal)
            .with("credentials_at_exec", creds)
            .with("frozen_at_exec", frozen);
            if r.tid != 0 {
                h = h.with("tid", r.tid);
            }
            h
        })
        .collect();
    p.report.report(&info, hits);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumps_are_known_by_name() {
        assert_eq!(by_name("/tmp/hs_err_pid4242.log"), Some("jvm-hs-err"));
        assert_eq!(
            by_name("/srv/app/report.20261203.061502.4242.0.001.json"),
            Some("node-report")
        );
        assert_eq!(by_name("/var/crash/core.4242"), Some("core"));
        assert_eq!(by_name("/var/crash/core"), Some("core"));
        for no in [
            "/tmp/report.json",
            "/etc/core.conf",
            "/tmp/hs_err.txt",
            "/tmp/core.d",
        ] {
            assert_eq!(by_name(no), None, "{no}");
        }
    }

    #[test]
    fn dumps_are_known_by_their_first_bytes() {
        let node =
            b"{\n  \"header\": {\n    \"reportVersion\": 3,\n    \"event\": \"JavaScript API\"";
        assert_eq!(by_content(node), Some("node-report"));
        // Node 20 starts its report with a newline.
        let node = [b"\n".as_slice(), node].concat();
        assert_eq!(by_content(&node), Some("node-report"));
        let jvm = b"#\n# A fatal error has been detected by the Java Runtime Environment:\n#";
        assert_eq!(by_content(jvm), Some("jvm-hs-err"));
        assert_eq!(
            by_content(b"Fatal Python error: Aborted\n\nCurrent thread"),
            Some("python-fatal-error")
        );
        assert_eq!(by_content(b"{\"level\":\"info\",\"msg\":\"header\"}"), None);
        assert_eq!(by_content(b"# A comment about the Java Runtime"), None);
    }
}
