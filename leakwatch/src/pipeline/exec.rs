//! The exec stage: an exec's argv strings and env values are scanned (frozen credentials
//! first, so a kill never waits for the rule scan), the holders remembered for `freeze`, and
//! a capture the kernel had to cut is reported as `lost`.
use leakwatch_common::EXEC_F_COUNT_INCOMPLETE;

use super::{report::Hit, Pipeline, HISTORY};
use crate::{
    detect::Detector,
    events::{ExecEvent, Strings},
    procs::{ProcInfo, Procs},
    source::Source,
};

/// Who exec'd: live /proc data when the exec has completed, else the event's. `exe` is the
/// file exec'd, made absolute (`Procs::saw_exec`), as in write alerts: for a script, the
/// script, and `interpreter` what the kernel runs it with.
pub fn describe(procs: &mut Procs, ev: &ExecEvent) -> ProcInfo {
    let comm = ev.new_comm();
    // A killed exec was not remembered (`saw_exec`): an image seen under this comm is an
    // earlier one.
    let seen = (!ev.killed())
        .then(|| procs.exe_seen(ev.task.tgid, &comm))
        .flatten();
    let mut info = ProcInfo {
        pid: ev.task.tgid,
        ppid: ev.task.ppid,
        uid: ev.task.uid,
        comm: comm.clone(),
        exe: ev.filename.clone(),
        ..Default::default()
    };
    if let Some(l) = procs.live(ev.task.tgid) {
        if l.ppid != 0 {
            info.ppid = l.ppid;
        }
        if l.comm == comm && !l.exe.is_empty() {
            // /proc's image, as before, unless the file exec'd is a script: then the
            // script (as write alerts name it) and its interpreter.
            let script = seen
                .as_deref()
                .and_then(|s| crate::procs::interpreter(s, &l.exe).map(|i| (s, i)));
            match script {
                Some((s, i)) => {
                    info.exe = s.to_string();
                    info.interpreter = Some(i);
                }
                None if this_image(
                    seen.as_deref().unwrap_or(&ev.filename),
                    &ev.filename,
                    &l.exe,
                ) =>
                {
                    info.exe = l.exe
                }
                // The process exec'd again since (`env` running what it was asked to):
                // during an exec /proc shows the new image under the old name for a
                // moment, and this exec's finding must not carry, nor be deduplicated
                // as, the next one's.
                None => info.exe = seen.unwrap_or_else(|| ev.filename.clone()),
            }
        }
        info.cgroup = l.cgroup;
        info.unit = l.unit;
    }
    if info.cgroup.is_none() {
        info.cgroup = procs.cgroup_path(ev.task.cgroup_id);
        info.unit = info.cgroup.as_deref().and_then(crate::procs::unit_of);
    }
    info
}

pub(super) fn on_exec(p: &mut Pipeline, ev: ExecEvent) {
    p.metrics
        .events
        .with_label_values(&[ev.task.probe_name()])
        .inc();
    if !ev.killed() {
        p.procs.saw_exec(ev.task.tgid, &ev.filename, &ev.new_comm());
        p.ours.remove(&ev.task.tgid);
        p.tls.exec(ev.task.tgid, &ev.filename);
    }
    let (engine, frozen) = (p.engine.clone(), p.shared.frozen.clone());
    let fz = Some(crate::detect::frozen::FrozenSet::read(&frozen));
    let d = Detector::new(&engine, fz.as_deref());
    let clean = &mut p.clean;
    clean.under(&engine, fz.as_deref().map_or(0, |f| f.generation()));
    // The strings not scanned clean before, looked up once for both passes. An environment
    // seen whole before (an exec loop's, a service's) is one lookup, not one per variable,
    // and is not even split into strings.
    let env_area = ev.env_area();
    let env_clean = clean.contains_area(env_area);
    let mut todo: Vec<(&[u8], Source, usize)> = Vec::new();
    for (i, a) in ev.argv().enumerate() {
        if !clean.contains(a) {
            todo.push((a, Source::Argv, i));
        }
    }
    if !env_clean {
        for (i, e) in ev.env().enumerate() {
            if !clean.contains(e) {
                todo.push((e, Source::Env, i));
            }
        }
    }
    // Frozen credentials first: the kill must not wait for the rule scan.
    let mut first_frozen = None;
    // A frozen key that is a whole value the kernel matches (an argument, or what follows
    // the first `=`) in an exec the kernel let run: its kernel hash must be wrong.
    let mut missed: Option<(String, Vec<u8>)> = None;
    let mut env_found = false;
    for &(bytes, source, _) in &todo {
        for f in d.frozen_only(bytes) {
            env_found |= source == Source::Env;
            let value_at = bytes.iter().position(|&b| b == b'=').map_or(0, |i| i + 1);
            if f.end == bytes.len() && (f.start == 0 || f.start == value_at) && missed.is_none() {
                missed = Some((f.fingerprint.clone(), bytes[f.start..f.end].to_vec()));
            }
            if first_frozen.is_none() {
                first_frozen = Some(f);
            }
        }
    }
    if let Some(f) = first_frozen {
        p.ctx.kill_exec(&ev, f.fingerprint);
    }
    let mut hits = Vec::new();
    // Spans found only in the joined command line: (argument, start, end, preview).
    let mut spans: Vec<(usize, usize, usize, String)> = Vec::new();
    let mut scanned = [0u64; 2];
    for &(bytes, source, i) in &todo {
        scanned[usize::from(source == Source::Env)] += bytes.len() as u64;
        let found = d.scan(bytes);
        if found.is_empty() {
            clean.insert(bytes);
            continue;
        }
        env_found |= source == Source::Env;
        for f in found {
            hits.push(annotate(Hit::new(source, f), bytes, i));
        }
    }
    // What only the whole command line shows (`curl -u USER:PASS`, `mysql -pPASS` after
    // other flags): the joined arguments, unless seen clean before.
    let args: Vec<&[u8]> = ev.argv().collect();
    if args.len() > 1 {
        let alone = argv_found(&hits);
        // NUL-joined: a key no single argument (which has no NUL) can share.
        let mut line = args.join(&b'\0');
        if !clean.contains(&line) {
            scanned[0] += line.len() as u64;
            let more = super::cmdline::findings(&args, &d, &alone);
            if more.is_empty() {
                clean.insert(&line);
            }
            for (i, f) in more {
                spans.push((i, f.start, f.end, f.redacted.clone()));
                hits.push(annotate(Hit::new(Source::Argv, f), args[i], i));
            }
        }
        crate::wipe::vec(&mut line);
    }
    if !env_clean && !env_found && !ev.truncated() {
        clean.insert_area(env_area);
    }
    for (i, src) in [Source::Argv, Source::Env].into_iter().enumerate() {
        p.metrics
            .scanned_bytes
            .with_label_values(&[src.as_str()])
            .inc_by(scanned[i]);
    }
    if p.actions.enabled() {
        let row = action_row(p, &ev, &d, &hits, &spans);
        p.actions.record(row);
    }
    drop(fz);
    // After the read guard is gone: the repair reloads the frozen set.
    if let Some((fp, mut plain)) = missed {
        if !ev.killed() {
            p.ctx.check_kernel_hash(&fp, &plain);
        }
        crate::wipe::vec(&mut plain);
    }
    let truncated = ev.truncated();
    if hits.is_empty() && !truncated {
        return;
    }
    let info = describe(&mut p.procs, &ev);
    if truncated {
        p.metrics.exec_truncated.inc();
        p.metrics.exec_bytes_dropped.inc_by(ev.bytes_dropped);
        let lost = Truncated {
            since: std::time::Instant::now(),
            info: info.clone(),
            comm: ev.task.comm.to_string(),
            captured: ev.strings_count() as u64,
            strings_dropped: 0,
            bytes_dropped: ev.bytes_dropped,
            counted: ev.task.flags & EXEC_F_COUNT_INCOMPLETE == 0,
            seen: hits.iter().map(|h| h.fingerprint.clone()).collect(),
        };
        if p.pending_lost.len() >= 4096 {
            p.report.alerts().emit(lost.alert());
        } else {
            // What the kernel could not copy (past 128 KiB, 9,000 arguments, pages the
            // caller had not touched) is in the new image's /proc entries once it runs:
            // `tick` reads and scans them there, or reports the loss.
            p.pending_lost.push(lost);
        }
    }
    remember(p, ev.task.tgid, &hits);
    let hits: Vec<Hit> = hits
        .into_iter()
        .map(|h| {
            h.with("filename", ev.filename.clone())
                .with("tid", ev.task.pid)
        })
        .collect();
    if hits.is_empty() {
        return;
    }
    p.report.report_at(&info, hits, ev.task.ktime_ns);
}

/// A cut exec capture: recovered from /proc, or reported as `lost`.
pub(super) struct Truncated {
    since: std::time::Instant,
    info: crate::procs::ProcInfo,
    /// The new image's comm.
    comm: String,
    captured: u64,
    /// Known once the new image's /proc entries are read (`recover`).
    strings_dropped: u64,
    bytes_dropped: u64,
    /// `strings_dropped` is known (else it is a lower bound).
    counted: bool,
    /// Fingerprints already reported from the captured part.
    seen: Vec<String>,
}

impl Truncated {
    fn alert(&self) -> crate::alerts::Alert {
        super::report::base_alert("lost", &self.info)
            .with("reason", "exec_capture_truncated")
            .with("strings_dropped", self.strings_dropped)
            .with("bytes_dropped", self.bytes_dropped)
            .with("lower_bound", !self.counted)
    }

    /// Does the process still run the exec's image (not gone, not exec'd again)? Its comm
    /// says so.
    fn runs(&self) -> bool {
        let pid = self.info.pid;
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim_end() == self.comm)
    }
}

/// The new image's argv and environment as /proc has them (complete: the kernel copied
/// them), scanned like an exec's; what the capture already reported is not repeated.
/// False when the process is gone or does not run the image.
fn recover(p: &mut Pipeline, t: &mut Truncated) -> bool {
    let pid = t.info.pid;
    if !t.runs() {
        return false;
    }
    let read = |f: &str| std::fs::read(format!("/proc/{pid}/{f}")).ok();
    let (Some(mut argv), Some(mut env)) = (read("cmdline"), read("environ")) else {
        return false;
    };
    let n = (memchr::memchr_iter(0, &argv).count() + memchr::memchr_iter(0, &env).count()) as u64;
    t.strings_dropped = n.saturating_sub(t.captured);
    t.counted = true;
    p.metrics.exec_strings_dropped.inc_by(t.strings_dropped);
    let (engine, frozen) = (p.engine.clone(), p.shared.frozen.clone());
    let fz = Some(crate::detect::frozen::FrozenSet::read(&frozen));
    let d = Detector::new(&engine, fz.as_deref());
    let mut hits = Vec::new();
    for (area, source) in [(&argv, Source::Argv), (&env, Source::Env)] {
        for (i, bytes) in Strings::of(area).enumerate() {
            for f in d.scan(bytes) {
                hits.push(annotate(Hit::new(source, f), bytes, i));
            }
        }
    }
    let args: Vec<&[u8]> = Strings::of(&argv).collect();
    for (i, f) in super::cmdline::findings(&args, &d, &argv_found(&hits)) {
        hits.push(annotate(Hit::new(Source::Argv, f), args[i], i));
    }
    drop(args);
    drop(fz);
    crate::wipe::vec(&mut argv);
    crate::wipe::vec(&mut env);
    hits.retain(|h| !t.seen.contains(&h.fingerprint));
    p.metrics.exec_recovered.inc();
    if hits.is_empty() {
        return true;
    }
    let info = p.procs.live(pid).unwrap_or_else(|| t.info.clone());
    remember(p, pid, &hits);
    let hits = hits
        .into_iter()
        .map(|h| h.with("filename", info.exe.clone()).with("from", "proc"))
        .collect();
    p.report.report(&info, hits);
    true
}

/// Recovers cut captures from the new image's /proc entries, or reports them lost (`all`:
/// every one now, at stop).
pub(super) fn tick(p: &mut Pipeline, all: bool) {
    let (due, wait): (Vec<Truncated>, Vec<Truncated>) = std::mem::take(&mut p.pending_lost)
        .into_iter()
        .partition(|t| all || t.since.elapsed() >= PENDING_FOR);
    p.pending_lost = wait;
    for mut t in due {
        // Recovered from /proc: nothing was lost after all (counted, not alerted).
        if !recover(p, &mut t) {
            p.report.alerts().emit(t.alert());
        }
    }
}

/// How long a cut capture waits for its new image to be readable in /proc.
const PENDING_FOR: std::time::Duration = std::time::Duration::from_millis(200);

/// Remembers that `tgid` carried these credentials, for `freeze` to find it.
fn remember(p: &Pipeline, tgid: u32, hits: &[Hit]) {
    if let Ok(mut hist) = p.shared.history.write() {
        for h in hits {
            if hist.len() >= HISTORY {
                hist.pop_front();
            }
            hist.push_back((tgid, h.fingerprint.clone()));
        }
    }
}

/// (argument index, fingerprint) of each argv hit.
fn argv_found(hits: &[Hit]) -> Vec<(usize, String)> {
    hits.iter()
        .filter(|h| h.source == Source::Argv)
        .filter_map(|h| {
            Some((
                h.extra.get("arg_index")?.as_u64()? as usize,
                h.fingerprint.clone(),
            ))
        })
        .collect()
}

/// A hit on argv string `i` gets its `arg_index`; on an environment string, the variable's
/// name (looked up only for strings with a hit: most have none).
fn annotate(h: Hit, bytes: &[u8], i: usize) -> Hit {
    if h.source == Source::Argv {
        return h.with("arg_index", i);
    }
    match bytes.iter().position(|&b| b == b'=') {
        Some(n) => h.with("var", String::from_utf8_lossy(&bytes[..n]).into_owned()),
        None => h,
    }
}

/// Bytes of argv an exec row keeps; the rest is cut (marked `…`).
const ARGV_KEPT: usize = 8192;

/// Whether `live` (/proc's image of the process now) is the file this exec named
/// (`path`, made absolute, or `filename` as exec'd): the same inode. True when it cannot
/// tell (a path gone or relative to another cwd, an exec by fd): then /proc's, as before.
fn this_image(path: &str, filename: &str, live: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    // The same absolute name (the usual case: `saw_exec` resolves it as /proc does) is
    // the same file: no stat on the exec path.
    if path == live || crate::procs::by_fd(filename) {
        return true;
    }
    match (std::fs::metadata(path), std::fs::metadata(live)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => true,
    }
}

/// The exec as an action-log row: argv with every credential found in it replaced by its
/// preview (or no argv, with `[actions] argv = "none"`). From the event alone: no /proc
/// read on the exec path.
fn action_row(
    p: &mut Pipeline,
    ev: &ExecEvent,
    d: &Detector,
    hits: &[Hit],
    spans: &[(usize, usize, usize, String)],
) -> crate::actions::Row {
    let cgroup = p.procs.cgroup_path(ev.task.cgroup_id);
    let who = ProcInfo {
        interpreter: None,
        pid: ev.task.tgid,
        ppid: ev.task.ppid,
        uid: ev.task.uid,
        comm: ev.new_comm(),
        exe: ev.filename.clone(),
        unit: cgroup.as_deref().and_then(crate::procs::unit_of),
        cgroup,
    };
    let mut row = crate::actions::Row::new("exec", &who)
        .with("filename", ev.filename.clone())
        .with("tid", ev.task.pid);
    if ev.killed() {
        row = row.with("killed", true);
    }
    if !p.actions.argv {
        return row.with("argv", "none");
    }
    let marked: std::collections::HashSet<u64> = hits
        .iter()
        .filter(|h| h.source == Source::Argv)
        .filter_map(|h| h.extra.get("arg_index").and_then(|v| v.as_u64()))
        .collect();
    let mut kept = 0;
    let mut argv = Vec::new();
    for (i, a) in ev.argv().enumerate() {
        if kept >= ARGV_KEPT {
            argv.push("…".to_string());
            break;
        }
        let mut s = if marked.contains(&(i as u64)) {
            let extra: Vec<(usize, usize, String)> = spans
                .iter()
                .filter(|s| s.0 == i)
                .map(|s| (s.1, s.2, s.3.clone()))
                .collect();
            redact(a, d, &extra)
        } else {
            String::from_utf8_lossy(a).into_owned()
        };
        if kept + s.len() > ARGV_KEPT {
            let mut cut = ARGV_KEPT - kept;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push('…');
        }
        kept += s.len();
        argv.push(s);
    }
    row.with("argv", argv)
}

/// `a` with every credential the detector finds in it, and every span of `extra` (start,
/// end, preview: found only in the whole command line), replaced by its preview.
fn redact(a: &[u8], d: &Detector, extra: &[(usize, usize, String)]) -> String {
    let mut out = String::new();
    let mut at = 0;
    let mut found: Vec<(usize, usize, String)> = d
        .scan(a)
        .into_iter()
        .map(|f| (f.start, f.end, f.redacted))
        .chain(extra.iter().cloned())
        .collect();
    found.sort_by_key(|f| f.0);
    for (start, end, preview) in found {
        if start < at {
            continue;
        }
        out.push_str(&String::from_utf8_lossy(&a[at..start]));
        out.push_str(&preview);
        at = end;
    }
    out.push_str(&String::from_utf8_lossy(&a[at..]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{samples, Engine};

    #[test]
    fn an_exec_is_named_by_its_own_image_not_a_later_one() {
        let me = std::fs::read_link("/proc/self/exe").unwrap();
        let me = me.to_str().unwrap();
        // This process, as if it had exec'd /bin/sh and then its present image (the test
        // binary), and /proc were read after the second exec but under the first comm.
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        let comm = comm.trim_end();
        let mut procs = Procs::new();
        let mut ev = ExecEvent::default();
        ev.task.tgid = std::process::id();
        ev.filename = format!("/lw-test-dir/{comm}");
        // An exec of a path that names another file than /proc's image: not /proc's.
        procs.saw_exec(ev.task.tgid, "/bin/sh", comm);
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        assert_eq!(describe(&mut procs, &ev).exe, sh.to_str().unwrap());
        // The file /proc names: /proc's image.
        procs.saw_exec(ev.task.tgid, me, comm);
        assert_eq!(describe(&mut procs, &ev).exe, me);
        assert!(this_image("/lw-no-such-file", "/lw-no-such-file", me));
        assert!(this_image("/bin/sh", "/dev/fd/3", me));
        assert!(!this_image("/bin/sh", "/bin/sh", me));
    }

    #[test]
    fn an_argument_keeps_its_credentials_only_as_previews() {
        let engine = Engine::builtin();
        let d = Detector::new(&engine, None);
        let mut rng = samples::Rng::from_time();
        let (key, _) = samples::sample("anthropic-api-key", &mut rng).unwrap();
        let (gh, _) = samples::sample("github-pat", &mut rng).unwrap();
        let arg = format!("--header=x-api-key: {key} --token {gh} --verbose");
        let out = redact(arg.as_bytes(), &d, &[]);
        assert!(!out.contains(&key) && !out.contains(&gh), "{out}");
        assert!(out.starts_with("--header=x-api-key: sk-ant"), "{out}");
        assert!(
            out.ends_with(" --verbose") && out.contains(" --token ghp_"),
            "{out}"
        );
        assert_eq!(redact(b"plain --flag", &d, &[]), "plain --flag");
        // A span only the whole command line showed is replaced too.
        let out = redact(b"deploy:s3cretPassw0rd", &d, &[(7, 21, "s3cr…".into())]);
        assert_eq!(out, "deploy:s3cr…");
    }
}
