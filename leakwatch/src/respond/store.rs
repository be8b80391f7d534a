//! The frozen set on disk: fingerprints (with length, a short prefix and the host-keyed
//! kernel hash), never plaintext. Written atomically (temp file, fsync, rename, fsync dir).
//! Read with suspicion: every entry is checked, a bad one is dropped and reported (a prefix
//! longer than allowed is cut, so no plaintext stays on disk), an unreadable file is moved
//! aside for inspection and the daemon starts with what it could read. One daemon per state
//! directory: `lock` holds an exclusive lock for the daemon's lifetime.
use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::detect::frozen::{FrozenKey, PREFIX_MAX};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FrozenEntry {
    pub fingerprint: String,
    /// Secret length in bytes (0 when frozen by fingerprint alone).
    pub len: usize,
    /// First bytes of the secret (at most 4, never more than a quarter), for matching.
    pub prefix: String,
    /// Seeded FNV-1a of the secret for the kernel map; absent when frozen by fingerprint.
    pub kernel_hash: Option<u64>,
    pub frozen_at: String,
    pub kills: u64,
    /// Frozen by the fleet (etcd): a fleet unfreeze lifts it. A local freeze of the same
    /// credential clears it, so the fleet never lifts what a responder froze here.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fleet: bool,
}

impl FrozenEntry {
    pub fn key(&self) -> Option<FrozenKey> {
        let mut k = FrozenKey::from_fingerprint(&self.fingerprint)?;
        k.len = self.len;
        k.prefix = self.prefix.as_bytes().to_vec();
        Some(k)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Store {
    pub frozen: Vec<FrozenEntry>,
    #[serde(skip)]
    path: PathBuf,
    /// What was wrong with the file as read (one sentence each), for the daemon to alert.
    #[serde(skip)]
    pub problems: Vec<String>,
}

impl FrozenEntry {
    /// Checks an entry read from disk or the fleet store; cuts a prefix that says too
    /// much. Err: unusable.
    pub fn check(&mut self) -> std::result::Result<Option<String>, String> {
        if FrozenKey::from_fingerprint(&self.fingerprint).is_none() {
            return Err("its fingerprint is not sha256: and 64 hex digits".into());
        }
        if self.len == 0 && (self.kernel_hash.is_some() || !self.prefix.is_empty()) {
            return Err("it has no length but claims a prefix or kernel hash".into());
        }
        if self.len > 0 && self.len < crate::detect::frozen::LEN_MIN {
            return Err(format!(
                "its length {} is below the {} bytes freeze needs",
                self.len,
                crate::detect::frozen::LEN_MIN
            ));
        }
        let allowed = PREFIX_MAX.min(self.len / 4);
        if self.prefix.len() > allowed {
            // Cut on a char boundary; the prefix only narrows the search, the SHA-256 decides.
            let mut cut = allowed;
            while !self.prefix.is_char_boundary(cut) {
                cut -= 1;
            }
            self.prefix.truncate(cut);
            return Ok(Some(format!(
                "its prefix was longer than {allowed} bytes (it may have held the secret); cut to {cut}"
            )));
        }
        Ok(None)
    }
}

/// Holds `STATE_DIR/lock` exclusively (with this daemon's pid in it) until dropped: two
/// daemons on one state directory would overwrite each other's freezes.
pub fn lock(state_dir: &Path) -> Result<fs::File> {
    use std::os::fd::AsRawFd;
    let path = state_dir.join("lock");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on an fd this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let other = fs::read_to_string(&path).unwrap_or_default();
        anyhow::bail!(
            "another leakwatch daemon (pid {}) is using the state directory {}; stop it, or give this one its own --state-dir",
            other.trim(),
            state_dir.display()
        );
    }
    f.set_len(0)?;
    writeln!(f, "{}", std::process::id())?;
    Ok(f)
}

impl Store {
    pub fn open(state_dir: &Path) -> Result<Store> {
        let path = state_dir.join("frozen.json");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Store {
                    path,
                    ..Default::default()
                })
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut s = Store {
            path: path.clone(),
            ..Default::default()
        };
        let entries = match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::Object(mut top)) => {
                let frozen = top.remove("frozen");
                if let Some(k) = top.keys().next() {
                    s.problems
                        .push(format!("{}: unknown field `{k}` ignored", path.display()));
                }
                match frozen {
                    Some(serde_json::Value::Array(a)) => a,
                    _ => {
                        s.set_aside(&path, "it has no `frozen` list");
                        return Ok(s);
                    }
                }
            }
            _ => {
                s.set_aside(&path, "it is not a JSON object");
                return Ok(s);
            }
        };
        let mut changed = false;
        const FIELDS: [&str; 7] = [
            "fingerprint",
            "len",
            "prefix",
            "kernel_hash",
            "frozen_at",
            "kills",
            "fleet",
        ];
        for (i, mut v) in entries.into_iter().enumerate() {
            // Unknown fields are refused, not trusted: reported and dropped, the entry kept.
            if let Some(o) = v.as_object_mut() {
                let unknown: Vec<String> = o
                    .keys()
                    .filter(|k| !FIELDS.contains(&k.as_str()))
                    .cloned()
                    .collect();
                for k in unknown {
                    o.remove(&k);
                    s.problems.push(format!(
                        "{} entry {}: unknown field `{k}` dropped",
                        path.display(),
                        i + 1
                    ));
                    changed = true;
                }
            }
            let entry = serde_json::from_value::<FrozenEntry>(v)
                .map_err(|e| e.to_string())
                .and_then(|mut e| e.check().map(|note| (e, note)));
            match entry {
                Ok((e, note)) => {
                    if let Some(n) = note {
                        s.problems
                            .push(format!("{} entry {}: {n}", path.display(), i + 1));
                        changed = true;
                    }
                    if s.find(&e.fingerprint).is_some() {
                        s.problems.push(format!(
                            "{} entry {}: a second copy of {} dropped",
                            path.display(),
                            i + 1,
                            e.fingerprint
                        ));
                        changed = true;
                        continue;
                    }
                    s.frozen.push(e);
                }
                Err(why) => {
                    s.problems.push(format!(
                        "{} entry {} is unusable and was dropped ({why}); that credential is no longer frozen: freeze it again",
                        path.display(),
                        i + 1
                    ));
                    changed = true;
                }
            }
        }
        if changed {
            // Rewritten at once: a cut prefix must not stay on disk.
            s.save()?;
        }
        Ok(s)
    }

    /// An unreadable state file is moved aside (not copied: nothing new is written) and the
    /// daemon starts with an empty set, loudly.
    fn set_aside(&mut self, path: &Path, why: &str) {
        let aside = path.with_extension(format!(
            "json.corrupt-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        ));
        let moved = fs::rename(path, &aside).is_ok();
        self.problems.push(format!(
            "the frozen set {} is corrupt ({why}); {}; NOTHING from it is frozen now: freeze those credentials again",
            path.display(),
            if moved {
                format!("it was moved to {} for inspection", aside.display())
            } else {
                "it could not be moved aside".to_string()
            }
        ));
    }

    pub fn save(&self) -> Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self)?;
        let mut f = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)
            .with_context(|| format!("replacing {}", self.path.display()))?;
        if let Some(dir) = self.path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    pub fn find(&self, fingerprint: &str) -> Option<usize> {
        self.frozen
            .iter()
            .position(|e| e.fingerprint == fingerprint)
    }

    /// (kernel hash, length) pairs for the kernel map.
    pub fn kernel_entries(&self) -> Vec<(u64, u32)> {
        self.frozen
            .iter()
            .filter_map(|e| e.kernel_hash.map(|h| (h, e.len as u32)))
            .collect()
    }

    pub fn keys(&self) -> Vec<FrozenKey> {
        self.frozen.iter().filter_map(FrozenEntry::key).collect()
    }
}

/// The kernel's candidate hash: FNV-1a over the exact bytes, seeded per host.
pub fn kernel_hash(seed: u64, secret: &[u8]) -> u64 {
    secret
        .iter()
        .fold(seed, |h, &b| leakwatch_common::fnv1a_step(h, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_atomic_and_plaintext_free() {
        let dir = std::env::temp_dir().join(format!("lw-store-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        // Generated here: no credential-shaped literal in the source.
        let (secret, _) = crate::detect::samples::sample(
            "stripe-secret-key",
            &mut crate::detect::samples::Rng::seeded(0x5707e),
        )
        .unwrap();
        let secret = secret.as_bytes();
        let key = FrozenKey::from_secret(secret);
        let mut s = Store::open(&dir).unwrap();
        s.frozen.push(FrozenEntry {
            fingerprint: key.fingerprint(),
            len: key.len,
            prefix: String::from_utf8(key.prefix.clone()).unwrap(),
            kernel_hash: Some(kernel_hash(7, secret)),
            frozen_at: "now".into(),
            kills: 0,
            fleet: false,
        });
        s.save().unwrap();
        let text = fs::read_to_string(dir.join("frozen.json")).unwrap();
        assert!(!text.contains(std::str::from_utf8(&secret[8..]).unwrap()));
        let s2 = Store::open(&dir).unwrap();
        assert_eq!(s2.frozen, s.frozen);
        assert_eq!(s2.keys()[0], key);
        assert!(!dir.join("frozen.json.tmp").exists());
        fs::write(dir.join("frozen.json"), "{not json").unwrap();
        let s3 = Store::open(&dir).unwrap();
        assert!(s3.frozen.is_empty());
        assert!(s3.problems[0].contains("corrupt"), "{:?}", s3.problems);
        assert!(
            !dir.join("frozen.json").exists(),
            "the corrupt file stays in place"
        );
        let aside: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
            .collect();
        assert_eq!(aside.len(), 1);
    }

    #[test]
    fn bad_entries_are_dropped_or_repaired_and_reported() {
        let dir = std::env::temp_dir().join(format!("lw-store-bad-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let (secret, _) = crate::detect::samples::sample(
            "anthropic-api-key",
            &mut crate::detect::samples::Rng::seeded(0xbad),
        )
        .unwrap();
        let key = FrozenKey::from_secret(secret.as_bytes());
        let good = serde_json::json!({"fingerprint": key.fingerprint(), "len": key.len,
            "prefix": secret, "kernel_hash": 1, "frozen_at": "t", "kills": 0});
        let other = FrozenKey::from_secret(b"another-credential-for-the-test");
        let unknown = serde_json::json!({"fingerprint": other.fingerprint(), "len": 31,
            "prefix": "", "kernel_hash": null, "frozen_at": "t", "kills": 0, "extra": 1});
        let bad_fp = serde_json::json!({"fingerprint": "sha256:zz", "len": 40,
            "prefix": "", "kernel_hash": null, "frozen_at": "t", "kills": 0});
        let text = serde_json::json!({"frozen": [good, unknown, bad_fp]}).to_string();
        fs::write(dir.join("frozen.json"), text).unwrap();
        let s = Store::open(&dir).unwrap();
        // The over-long prefix is cut, the unknown field dropped (entry kept), the bad
        // fingerprint's entry dropped.
        assert_eq!(s.frozen.len(), 2, "{:?}", s.problems);
        assert_eq!(s.frozen[0].prefix.len(), PREFIX_MAX);
        assert_eq!(s.frozen[1].fingerprint, other.fingerprint());
        assert_eq!(s.problems.len(), 3, "{:?}", s.problems);
        // The whole plaintext that was in `prefix` is gone from disk.
        let on_disk = fs::read_to_string(dir.join("frozen.json")).unwrap();
        assert!(!on_disk.contains(&secret[4..]));
        assert!(s.problems.iter().all(|p| !p.contains(&secret[4..])));
    }

    #[test]
    fn one_daemon_per_state_dir() {
        let dir = std::env::temp_dir().join(format!("lw-store-lock-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let held = lock(&dir).unwrap();
        let e = lock(&dir).unwrap_err().to_string();
        assert!(e.contains("another leakwatch daemon"), "{e}");
        drop(held);
        assert!(lock(&dir).is_ok());
    }

    #[test]
    fn kernel_hash_matches_the_ebpf_definition() {
        // FNV-1a 64 test vector with the standard offset basis.
        assert_eq!(
            kernel_hash(leakwatch_common::FNV_OFFSET, b"a"),
            0xaf63dc4c8601ec8c
        );
    }
}
