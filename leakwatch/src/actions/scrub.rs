//! Frozen credentials out of the action log. Exec rows keep argv as run, with the
//! credentials detection recognised at the time replaced by previews; a key no rule knew
//! then (a custom token, a rule added later) is plaintext in them until someone freezes
//! it. From then on every exec row is checked against the frozen set before it is written,
//! and the rows already written are rewritten once, with `secure_delete` zeroing the old
//! cells and the WAL truncated, so no copy of a frozen key stays in the file.
use std::collections::HashSet;

use anyhow::Result;
use rusqlite::{params, Connection};
use serde_json::Value;

use super::Row;
use crate::detect::{frozen::FrozenSet, redact::redact};

/// `s` with every frozen key in it replaced by its preview, or `None` if it holds none.
fn redact_str(s: &str, set: &FrozenSet) -> Option<String> {
    let b = s.as_bytes();
    let mut hits = set.find(b);
    if hits.is_empty() {
        return None;
    }
    hits.sort_by_key(|h| (h.start, std::cmp::Reverse(h.end)));
    let mut out = String::new();
    let mut at = 0;
    for h in hits {
        if h.start < at {
            continue;
        }
        out.push_str(&String::from_utf8_lossy(&b[at..h.start]));
        out.push_str(&redact(&b[h.start..h.end]));
        at = h.end;
    }
    out.push_str(&String::from_utf8_lossy(&b[at..]));
    Some(out)
}

/// Redacts frozen keys in an exec detail's argv in place; true if anything changed.
fn redact_detail(detail: &mut serde_json::Map<String, Value>, set: &FrozenSet) -> bool {
    let Some(Value::Array(argv)) = detail.get_mut("argv") else {
        return false;
    };
    let mut changed = false;
    for a in argv.iter_mut() {
        if let Some(r) = a.as_str().and_then(|s| redact_str(s, set)) {
            *a = Value::String(r);
            changed = true;
        }
    }
    changed
}

/// An exec row about to be written, checked against the frozen set.
pub fn row(r: &mut Row, set: &FrozenSet) {
    if r.kind == "exec" && !set.is_empty() {
        redact_detail(&mut r.detail, set);
    }
}

/// Which of `set`'s keys the rows on disk have not been rewritten for yet.
#[derive(Default)]
pub struct Swept(HashSet<[u8; 32]>);

impl Swept {
    /// Starts from the keys frozen when the log opened: those rows were rewritten by the
    /// run that froze them.
    pub fn from(set: &FrozenSet) -> Swept {
        Swept(set.keys().iter().map(|k| k.sha256).collect())
    }

    /// Whether `set` holds a key not swept yet.
    pub fn pending(&self, set: &FrozenSet) -> bool {
        set.keys().iter().any(|k| !self.0.contains(&k.sha256))
    }

    /// The keys of `set` not swept yet, as a set of their own (empty: nothing to do).
    pub fn fresh(&self, set: &FrozenSet) -> FrozenSet {
        FrozenSet::new(
            set.keys()
                .iter()
                .filter(|k| !self.0.contains(&k.sha256))
                .cloned()
                .collect(),
        )
    }

    pub fn mark(&mut self, set: &FrozenSet) {
        self.0.extend(set.keys().iter().map(|k| k.sha256));
    }
}

/// Rewrites every exec row holding a key of `set`; returns how many. The WAL is then
/// truncated, so the old page copies go with it (unless a reader holds them: the next
/// prune's checkpoint takes them).
pub fn sweep(conn: &mut Connection, set: &FrozenSet) -> Result<u64> {
    let mut changed: Vec<(i64, String)> = Vec::new();
    {
        let mut st = conn.prepare("SELECT id, detail FROM actions WHERE kind = 'exec'")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let detail: String = r.get(1)?;
            let Ok(Value::Object(mut d)) = serde_json::from_str::<Value>(&detail) else {
                continue;
            };
            if redact_detail(&mut d, set) {
                changed.push((r.get(0)?, Value::Object(d).to_string()));
            }
        }
    }
    if changed.is_empty() {
        return Ok(0);
    }
    let tx = conn.transaction()?;
    {
        let mut st = tx.prepare("UPDATE actions SET detail = ?2 WHERE id = ?1")?;
        for (id, d) in &changed {
            st.execute(params![id, d])?;
        }
    }
    tx.commit()?;
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    Ok(changed.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{frozen::FrozenKey, samples::Rng};

    fn token(rng: &mut Rng) -> String {
        // A shape no rule knows: only freezing makes it a credential.
        (0..28)
            .map(|_| (b'a' + (rng.next_u64() % 26) as u8) as char)
            .collect()
    }

    #[test]
    fn a_frozen_key_leaves_rows_already_written_and_rows_to_come() {
        let mut rng = Rng::from_time();
        let (key, other) = (token(&mut rng), token(&mut rng));
        let dir = std::env::temp_dir().join(format!("lw-scrub-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("actions.db");
        let mut db = super::super::db::Db::open(&path).unwrap();
        let exec = |args: Vec<String>| {
            Row {
                kind: "exec",
                ..Default::default()
            }
            .with("argv", args)
        };
        let rows = vec![
            exec(vec!["curl".into(), format!("-Htoken:{key}"), "--".into()]),
            exec(vec!["x".into(), other.clone()]),
            Row {
                kind: "write",
                ..Default::default()
            }
            .with("path", "/tmp/a"),
        ];
        db.insert(&rows).unwrap();
        // Rows from long ago are in the main file, not only in the WAL.
        let c = db.conn_mut();
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        let set = FrozenSet::new(vec![FrozenKey::from_secret(key.as_bytes())]);
        let mut swept = Swept::default();
        let fresh = swept.fresh(&set);
        assert_eq!(fresh.keys().len(), 1);
        assert_eq!(sweep(db.conn_mut(), &fresh).unwrap(), 1);
        swept.mark(&fresh);
        assert!(swept.fresh(&set).is_empty(), "swept once");
        // A row written after the freeze is redacted before it is written.
        let mut late = exec(vec![key.clone()]);
        row(&mut late, &set);
        db.insert(&[late]).unwrap();
        drop(db);
        let all: Vec<u8> = std::fs::read_dir(&dir)
            .unwrap()
            .flat_map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        let has = |s: &str| all.windows(s.len()).any(|w| w == s.as_bytes());
        assert!(!has(&key), "the frozen key is gone from every file");
        assert!(has(&other), "other arguments stay as they were");
        assert!(has(&redact(key.as_bytes())), "its preview stands in for it");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
