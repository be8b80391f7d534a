//! The frozen set on disk: fingerprints (with length, a short prefix and the host-keyed
//! kernel hash), never plaintext. Written atomically (temp file, fsync, rename, fsync dir).
use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::detect::frozen::FrozenKey;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
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
}

impl Store {
    pub fn open(state_dir: &Path) -> Result<Store> {
        let path = state_dir.join("frozen.json");
        let mut s: Store = match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| {
                format!("the frozen set {} is corrupt; restore it from backup or move it aside (the credentials in it are then no longer frozen)", path.display())
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Store::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        s.path = path;
        Ok(s)
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
        });
        s.save().unwrap();
        let text = fs::read_to_string(dir.join("frozen.json")).unwrap();
        assert!(!text.contains(std::str::from_utf8(&secret[8..]).unwrap()));
        let s2 = Store::open(&dir).unwrap();
        assert_eq!(s2.frozen, s.frozen);
        assert_eq!(s2.keys()[0], key);
        assert!(!dir.join("frozen.json.tmp").exists());
        fs::write(dir.join("frozen.json"), "{not json").unwrap();
        let e = Store::open(&dir).unwrap_err();
        assert!(format!("{e:#}").contains("corrupt"));
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
