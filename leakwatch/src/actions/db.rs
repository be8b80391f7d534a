//! The action log's SQLite file: schema (versioned by `PRAGMA user_version`, migrated
//! forward on open), batched inserts, pruning by age and size.
use std::path::Path;

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OpenFlags};

use super::Row;

/// Schema version this build writes and reads.
pub const VERSION: i64 = 1;

/// Each step takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 1] = ["
    CREATE TABLE actions(
        id INTEGER PRIMARY KEY,
        ts INTEGER NOT NULL,
        kind TEXT NOT NULL,
        pid INTEGER NOT NULL,
        ppid INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        comm TEXT NOT NULL,
        exe TEXT NOT NULL,
        unit TEXT,
        cgroup TEXT,
        fingerprint TEXT,
        detail TEXT NOT NULL
    );
    CREATE INDEX actions_ts ON actions(ts);
    CREATE INDEX actions_pid ON actions(pid, ts);
    CREATE INDEX actions_ppid ON actions(ppid, ts);
    CREATE INDEX actions_kind ON actions(kind, ts);
    CREATE INDEX actions_unit ON actions(unit, ts) WHERE unit IS NOT NULL;
    CREATE INDEX actions_fp ON actions(fingerprint, ts) WHERE fingerprint IS NOT NULL;
"];

pub struct Db {
    conn: Connection,
}

impl Db {
    /// Opens (creating, mode 0600) and migrates the database for writing, in WAL mode so
    /// `leakwatch actions` can read while the daemon writes.
    pub fn open(path: &Path) -> Result<Db> {
        let new = !path.exists();
        let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        if new {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        conn.busy_timeout(std::time::Duration::from_secs(2))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Overwritten and deleted rows are zeroed in the file, not left in free space:
        // a frozen key rewritten out of a row (see `scrub`) must not stay behind.
        conn.pragma_update(None, "secure_delete", "ON")?;
        migrate(&conn)?;
        Ok(Db { conn })
    }

    pub fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    pub fn insert(&mut self, rows: &[Row]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO actions(ts, kind, pid, ppid, uid, comm, exe, unit, cgroup, \
                 fingerprint, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for r in rows {
                // Serialised in place: a clone of the map per row was the thread's
                // busiest allocation in an exec loop.
                let detail = serde_json::to_string(&r.detail)?;
                st.execute(params![
                    r.ts_ms,
                    r.kind,
                    r.pid,
                    r.ppid,
                    r.uid,
                    r.comm,
                    r.exe,
                    r.unit,
                    r.cgroup,
                    r.fingerprint,
                    detail,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes rows older than `cutoff_ms`, then the oldest tenth at a time while the
    /// data outgrows `max_bytes` (freed pages are reused, so the file stays near the
    /// bound). Returns the rows deleted.
    pub fn prune(&mut self, cutoff_ms: i64, max_bytes: u64) -> Result<u64> {
        let mut n = self
            .conn
            .execute("DELETE FROM actions WHERE ts < ?1", [cutoff_ms])? as u64;
        for _ in 0..32 {
            if max_bytes == 0 || self.used_bytes()? <= max_bytes {
                break;
            }
            let rows: i64 = self
                .conn
                .query_row("SELECT count(*) FROM actions", [], |r| r.get(0))?;
            if rows == 0 {
                break;
            }
            n += self.conn.execute(
                "DELETE FROM actions WHERE id <= (SELECT id FROM actions ORDER BY id \
                 LIMIT 1 OFFSET ?1)",
                [(rows / 10).max(1) - 1],
            )? as u64;
        }
        if n > 0 {
            let _ = self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        }
        Ok(n)
    }

    fn used_bytes(&self) -> Result<u64> {
        let get = |p: &str| -> Result<i64> {
            Ok(self
                .conn
                .query_row(&format!("PRAGMA {p}"), [], |r| r.get(0))?)
        };
        Ok(((get("page_count")? - get("freelist_count")?) * get("page_size")?).max(0) as u64)
    }
}

fn migrate(conn: &Connection) -> Result<()> {
    let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if v > VERSION {
        bail!(
            "its schema is version {v}, newer than this leakwatch understands ({VERSION}); \
             run the newer leakwatch, or move the file aside"
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(v as usize) {
        conn.execute_batch(&format!(
            "BEGIN; {sql} PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))
        .with_context(|| format!("migrating the schema to version {}", i + 1))?;
    }
    Ok(())
}

/// Opens the database read-only (for `leakwatch actions`; works beside a running daemon).
pub fn open_read(path: &Path) -> Result<Connection> {
    if !path.exists() {
        bail!(
            "there is no action log at {} (the daemon writes it into its --state-dir; \
             pass --state-dir if it uses another)",
            path.display()
        );
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening the action log {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if v != VERSION {
        bail!(
            "the action log {} has schema version {v}, this leakwatch reads version \
             {VERSION}; start this leakwatch's daemon once to migrate it",
            path.display()
        );
    }
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ts: i64, pid: u32) -> Row {
        Row {
            ts_ms: ts,
            kind: "exec",
            pid,
            comm: "x".into(),
            ..Default::default()
        }
    }

    #[test]
    fn migrates_inserts_and_prunes_by_age_then_size() {
        let dir = std::env::temp_dir().join(format!("lw-actions-db-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("actions.db");
        let mut db = Db::open(&path).unwrap();
        let rows: Vec<Row> = (0..5000).map(|i| row(i, i as u32)).collect();
        db.insert(&rows).unwrap();
        // Age: everything before ts 1000 goes.
        assert_eq!(db.prune(1000, 0).unwrap(), 1000);
        // Size: down to a bound far below what 4000 rows take, oldest first.
        let n = db.prune(0, 64 << 10).unwrap();
        assert!(n > 0 && n < 4000, "{n}");
        let c = open_read(&path).unwrap();
        let min: i64 = c
            .query_row("SELECT min(ts) FROM actions", [], |r| r.get(0))
            .unwrap();
        assert!(min > 1000 + n as i64 - 1, "oldest rows went first: {min}");
        // Reopening does not migrate again; a newer schema is refused.
        drop(db);
        Db::open(&path).unwrap();
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 9)
            .unwrap();
        let e = Db::open(&path).err().unwrap().to_string();
        assert!(e.contains("newer"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
