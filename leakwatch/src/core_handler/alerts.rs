//! When no daemon takes the report: `finding` alerts written straight to the alert file,
//! the same lines the daemon would write for it (`pipeline::dumps::on_report`), marked
//! `reported_by: "core-handler"`. Fingerprints and previews only, as everywhere.
use std::{io::Write, os::unix::fs::OpenOptionsExt, path::Path};

use crate::{alerts::Alert, crash::DumpReport, source::Source};

/// The alert lines for `r` (one per credential, or one `lost`-free note when there are
/// none: nothing).
pub fn lines(r: &DumpReport) -> Vec<String> {
    let unit = r.cgroup.as_deref().and_then(crate::procs::unit_of);
    r.hits
        .iter()
        .filter_map(|h| {
            let mut a = Alert::new("finding");
            a.rule = Some(h.rule.clone());
            a.source = Some(Source::CrashDump);
            a.fingerprint = Some(h.fingerprint.clone());
            a.redacted = Some(h.redacted.clone());
            a.pid = r.pid;
            a.ppid = r.ppid;
            a.uid = r.uid;
            a.comm = r.comm.clone();
            a.exe = r.exe.clone();
            a.unit = unit.clone();
            a.path = r.path.clone();
            let mut a = a
                .with("dump", r.kind.as_str())
                .with("dump_via", r.how.as_str())
                .with("offset", h.offset)
                .with("bytes", r.bytes)
                .with("signal", r.signal)
                .with("tid", r.tid)
                .with("reported_by", "core-handler");
            if let Some(c) = &r.cgroup {
                a = a.with("cgroup", c.as_str());
            }
            if !r.problems.is_empty() {
                a = a.with("problems", r.problems.clone());
            }
            serde_json::to_string(&a).ok()
        })
        .collect()
}

/// Appends `r`'s alerts to `path` (created mode 0600), one write per line.
pub fn append(path: &Path, r: &DumpReport) -> std::io::Result<()> {
    let lines = lines(r);
    if lines.is_empty() {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    for l in lines {
        f.write_all(format!("{l}\n").as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crash::DumpHit;

    #[test]
    fn fallback_alerts_carry_the_contract_fields() {
        let r = DumpReport {
            kind: "core".into(),
            how: "pipe".into(),
            pid: 4242,
            uid: 1000,
            comm: "python3".into(),
            signal: 6,
            path: Some("/var/crash/core.4242".into()),
            cgroup: Some("/system.slice/agent.service".into()),
            hits: vec![DumpHit {
                rule: "github-pat".into(),
                fingerprint: "sha256:00".into(),
                redacted: "ghp_…AA".into(),
                offset: 77,
            }],
            ..Default::default()
        };
        let l = lines(&r);
        assert_eq!(l.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&l[0]).unwrap();
        assert_eq!(v["kind"], "finding");
        assert_eq!(v["source"], "crash_dump");
        assert_eq!(v["dump_via"], "pipe");
        assert_eq!(v["path"], "/var/crash/core.4242");
        assert_eq!(v["unit"], "agent.service");
        assert_eq!(v["offset"], 77);
        assert_eq!(v["reported_by"], "core-handler");
    }
}
