//! `leakwatch actions`: reads the action log file directly (the daemon need not run) and
//! prints what processes did, selected by time, unit, kind, process (and its descendants)
//! or credential: "what did the process holding the key do since the leak".
use std::{
    collections::HashMap,
    io::Write,
    path::PathBuf,
    time::{Duration, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use rusqlite::{types::Value as Sql, Connection};
use serde_json::{Map, Value};

use super::now_ms;

pub const KINDS: [&str; 9] = [
    "exec", "connect", "write", "copy", "core", "finding", "kill", "sever", "freeze",
];
/// Processes a `--tree` follows at most.
const TREE_MAX: usize = 100_000;

#[derive(Default)]
pub struct Query {
    pub state_dir: PathBuf,
    pub since: Option<String>,
    pub until: Option<String>,
    pub unit: Option<String>,
    pub pid: Option<u32>,
    pub tree: bool,
    pub fingerprint: Option<String>,
    pub kinds: Vec<String>,
    pub json: bool,
    pub limit: Option<usize>,
}

/// One row as printed.
struct Out {
    id: i64,
    ts: i64,
    fields: Map<String, Value>,
}

/// Runs the query and prints the rows; returns how many.
pub fn run(q: &Query, out: &mut impl Write) -> Result<usize> {
    let since = q
        .since
        .as_deref()
        .map(|s| parse_time("--since", s))
        .transpose()?;
    let until = q
        .until
        .as_deref()
        .map(|s| parse_time("--until", s))
        .transpose()?;
    let mut kinds = Vec::new();
    for k in q.kinds.iter().flat_map(|k| k.split(',')) {
        let k = k.trim();
        if !KINDS.contains(&k) {
            bail!(
                "--kind `{k}` is not a kind of action; give one of {}",
                KINDS.join(", ")
            );
        }
        kinds.push(k.to_string());
    }
    if let Some(f) = &q.fingerprint {
        if !f.starts_with("sha256:") || f.len() != 71 {
            bail!("--fingerprint `{f}` is not a fingerprint; give sha256: and 64 hex digits, as alerts print it");
        }
    }
    let conn = super::db::open_read(&q.state_dir.join("actions.db"))?;
    let lo = since.unwrap_or(i64::MIN);
    let hi = until.unwrap_or(i64::MAX);
    // The processes asked about, each from its first sighting.
    let mut procs: Option<Vec<(u32, i64)>> = None;
    if let Some(pid) = q.pid {
        let first: Option<i64> = conn.query_row(
            "SELECT min(ts) FROM actions WHERE pid = ?1 AND ts >= ?2",
            (pid, lo),
            |r| r.get(0),
        )?;
        procs = Some(first.map(|t| vec![(pid, t)]).unwrap_or_default());
    }
    if let Some(fp) = &q.fingerprint {
        let mut st = conn.prepare(
            "SELECT pid, min(ts) FROM actions WHERE fingerprint = ?1 GROUP BY pid ORDER BY 2",
        )?;
        let mut holders: Vec<(u32, i64)> = st
            .query_map([fp], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        // Each from the exec that started the image that held it (its finding is recorded
        // just after it).
        let mut exec = conn
            .prepare("SELECT max(ts) FROM actions WHERE pid = ?1 AND kind = 'exec' AND ts <= ?2")?;
        for (pid, from) in holders.iter_mut() {
            let t: Option<i64> = exec.query_row((*pid, *from), |r| r.get(0))?;
            *from = t.unwrap_or(*from);
        }
        procs = Some(match procs {
            Some(p) => p
                .into_iter()
                .filter(|(pid, _)| holders.iter().any(|h| h.0 == *pid))
                .collect(),
            None => holders,
        });
    }
    if q.tree {
        match procs.as_mut() {
            Some(p) => descendants(&conn, p)?,
            None => {
                bail!("--tree follows the descendants of --pid or --fingerprint; give one of them")
            }
        }
    }
    let mut rows = Vec::new();
    let mut filter = String::from(" AND ts >= ? AND ts <= ?");
    let mut args: Vec<Sql> = vec![Sql::Integer(lo), Sql::Integer(hi)];
    if let Some(u) = &q.unit {
        filter.push_str(" AND unit = ?");
        args.push(Sql::Text(u.clone()));
    }
    if !kinds.is_empty() {
        filter.push_str(&format!(
            " AND kind IN ({})",
            vec!["?"; kinds.len()].join(",")
        ));
        args.extend(kinds.iter().map(|k| Sql::Text(k.clone())));
    }
    match &procs {
        Some(p) => {
            for &(pid, from) in p {
                let mut a = args.clone();
                a[0] = Sql::Integer(lo.max(from));
                let sql = format!("{SELECT} WHERE pid = ?{filter}");
                a.insert(0, Sql::Integer(pid as i64));
                select(&conn, &sql, a, &mut rows)?;
            }
            rows.sort_by_key(|r| (r.ts, r.id));
        }
        None => {
            let sql = format!("{SELECT} WHERE 1{filter} ORDER BY ts, id");
            select(&conn, &sql, args, &mut rows)?;
        }
    }
    if let Some(n) = q.limit {
        let skip = rows.len().saturating_sub(n);
        rows.drain(..skip);
    }
    for r in &rows {
        if q.json {
            writeln!(out, "{}", Value::Object(r.fields.clone()))?;
        } else {
            writeln!(out, "{}", line(r))?;
        }
    }
    Ok(rows.len())
}

const SELECT: &str = "SELECT id, ts, kind, pid, ppid, uid, comm, exe, unit, cgroup, \
                      fingerprint, detail FROM actions";

fn select(conn: &Connection, sql: &str, args: Vec<Sql>, rows: &mut Vec<Out>) -> Result<()> {
    let mut st = conn.prepare_cached(sql)?;
    let mut it = st.query(rusqlite::params_from_iter(args))?;
    while let Some(r) = it.next()? {
        let ts: i64 = r.get(1)?;
        let mut f = Map::new();
        f.insert("ts".into(), Value::String(rfc3339(ts)));
        f.insert("kind".into(), Value::String(r.get(2)?));
        for (i, k) in [(3, "pid"), (4, "ppid"), (5, "uid")] {
            f.insert(k.into(), Value::from(r.get::<_, i64>(i)?));
        }
        for (i, k) in [(6, "comm"), (7, "exe")] {
            f.insert(k.into(), Value::String(r.get(i)?));
        }
        for (i, k) in [(8, "unit"), (9, "cgroup"), (10, "fingerprint")] {
            let v: Option<String> = r.get(i)?;
            if v.is_some() || k == "unit" {
                f.insert(k.into(), v.map_or(Value::Null, Value::String));
            }
        }
        let detail: String = r.get(11)?;
        if let Ok(Value::Object(d)) = serde_json::from_str(&detail) {
            for (k, v) in d {
                f.entry(k).or_insert(v);
            }
        }
        rows.push(Out {
            id: r.get(0)?,
            ts,
            fields: f,
        });
    }
    Ok(())
}

/// Adds every process `procs` spawned (by ppid, after the parent's first sighting),
/// transitively, each from its own first sighting.
fn descendants(conn: &Connection, procs: &mut Vec<(u32, i64)>) -> Result<()> {
    let mut seen: HashMap<u32, i64> = procs.iter().copied().collect();
    let mut frontier = procs.clone();
    let mut st = conn.prepare(
        "SELECT pid, min(ts) FROM actions WHERE ppid = ?1 AND ts >= ?2 AND pid != ?1 GROUP BY pid",
    )?;
    while let Some((pid, from)) = frontier.pop() {
        let kids: Vec<(u32, i64)> = st
            .query_map((pid, from), |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (k, t) in kids {
            if seen.len() >= TREE_MAX {
                break;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = seen.entry(k) {
                e.insert(t);
                frontier.push((k, t));
                procs.push((k, t));
            }
        }
    }
    Ok(())
}

/// `48h`, `30m`, `7d` ago, or an RFC 3339 time, as Unix milliseconds.
pub fn parse_time(flag: &str, s: &str) -> Result<i64> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now_ms() - d.as_millis().min(i64::MAX as u128 / 2) as i64);
    }
    let t = humantime::parse_rfc3339_weak(s).with_context(|| {
        format!(
            "{flag} `{s}` is neither a duration (48h, 30m, 7d) nor a time (2026-12-03T06:00:00Z)"
        )
    })?;
    Ok(t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64))
}

fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A table line: time, kind, process, unit, and what the kind did.
fn line(r: &Out) -> String {
    let f = &r.fields;
    let s = |k: &str| f.get(k).and_then(Value::as_str).unwrap_or("");
    let n = |k: &str| f.get(k).and_then(Value::as_u64).unwrap_or(0);
    let what = match s("kind") {
        "exec" => match f.get("argv") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
            _ => s("filename").to_string(),
        },
        "connect" => format!("-> {}", s("remote")),
        "write" => format!(
            "{} {}: {} B in {} calls",
            s("source"),
            if s("remote").is_empty() {
                s("path")
            } else {
                s("remote")
            },
            n("bytes"),
            n("calls")
        ),
        "finding" => format!(
            "{} {} in {} {}{}",
            s("redacted"),
            s("rule"),
            s("source"),
            s("path"),
            s("remote")
        ),
        "kill" => format!("{} ({})", s("reason"), s("by")),
        "sever" => format!("{} -> {}", s("local"), s("remote")),
        "copy" => format!(
            "{} {} -> {}{} {} B",
            s("call"),
            s("src"),
            s("path"),
            s("remote"),
            n("bytes")
        ),
        "core" => format!("signal {} {} {}", n("signal"), s("outcome"), s("path")),
        _ => s("fingerprint").to_string(),
    };
    format!(
        "{} {:8} {:>7} {:>7} {:15} {:24} {}",
        s("ts"),
        s("kind"),
        n("pid"),
        n("ppid"),
        s("comm"),
        f.get("unit").and_then(Value::as_str).unwrap_or("-"),
        what
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_durations_ago_or_rfc3339() {
        let now = now_ms();
        let t = parse_time("--since", "48h").unwrap();
        assert!((now - 48 * 3_600_000 - t).abs() < 5_000);
        assert_eq!(
            parse_time("--since", "2026-12-03T06:00:00Z").unwrap(),
            1_796_277_600_000
        );
        let e = parse_time("--until", "yesterday").unwrap_err().to_string();
        assert!(
            e.contains("--until `yesterday`") && e.contains("48h"),
            "{e}"
        );
    }
}
