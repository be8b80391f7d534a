//! What the fleet store holds, and the checks every daemon makes before acting on it. An
//! entry in etcd can be written by anyone with access to the prefix, so each is parsed
//! strictly: a malformed or hostile one is refused with one sentence, never half-applied.
use serde::{Deserialize, Serialize};

use crate::{detect::frozen::FrozenKey, respond::store::FrozenEntry};

/// Largest value accepted under `frozen/` or `unfrozen/` (a real one is ~250 bytes).
pub const MAX_VALUE: usize = 4096;

/// `PREFIX/frozen/FINGERPRINT`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub fingerprint: String,
    /// Credential length in bytes; 0 when frozen by fingerprint alone.
    #[serde(default)]
    pub len: usize,
    /// Its first bytes (at most 4, never more than a quarter of it), to find it fast.
    #[serde(default)]
    pub prefix: String,
    pub frozen_at: String,
    /// Who published it (`user@host`), for the record.
    #[serde(default)]
    pub by: String,
}

/// `PREFIX/unfrozen/FINGERPRINT`: the explicit lift.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tombstone {
    pub fingerprint: String,
    pub unfrozen_at: String,
    #[serde(default)]
    pub by: String,
}

/// `PREFIX/hosts/HOST/applied/FINGERPRINT`: one host's acknowledgement.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub fingerprint: String,
    pub applied_at: String,
    /// Processes killed and connections severed by this freeze on the host.
    pub kills: usize,
    pub severs: usize,
    pub errors: Vec<String>,
    /// Already frozen here before the fleet entry came.
    pub already_frozen: bool,
    /// The kernel kills execs carrying it (learned once the host saw the bytes: a holder's
    /// environment, an exec).
    pub kernel_enforced: bool,
}

/// `PREFIX/hosts/HOST/alive`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Alive {
    pub host: String,
    pub since: String,
    pub version: String,
    /// Credentials frozen on the host (fleet and local).
    pub frozen: usize,
}

impl Entry {
    /// From a key derived on the responder's machine (the plaintext never leaves it).
    pub fn from_key(k: &FrozenKey, frozen_at: String, by: String) -> Entry {
        Entry {
            fingerprint: k.fingerprint(),
            len: k.len,
            prefix: String::from_utf8_lossy(&k.prefix).into_owned(),
            frozen_at,
            by,
        }
    }

    /// The matching key, checked as a state-file entry would be.
    pub fn key(&self) -> Result<FrozenKey, String> {
        let mut e = FrozenEntry {
            fingerprint: self.fingerprint.clone(),
            len: self.len,
            prefix: self.prefix.clone(),
            kernel_hash: None,
            frozen_at: self.frozen_at.clone(),
            kills: 0,
            fleet: true,
        };
        if let Some(cut) = e.check()? {
            return Err(cut);
        }
        if self.len > crate::detect::frozen::LEN_MAX {
            return Err(format!(
                "its length {} is beyond the {} bytes a credential can have",
                self.len,
                crate::detect::frozen::LEN_MAX
            ));
        }
        if self.prefix.chars().any(char::is_control) {
            return Err("its prefix holds control characters".into());
        }
        e.key()
            .ok_or_else(|| "its fingerprint is not sha256: and 64 hex digits".into())
    }
}

/// The fingerprint a key under `dir` (`PREFIX/frozen/`) names.
pub fn fingerprint_of<'a>(key: &'a [u8], dir: &str) -> Result<&'a str, String> {
    let key = std::str::from_utf8(key).map_err(|_| "its key is not UTF-8".to_string())?;
    let fp = key
        .strip_prefix(dir)
        .ok_or_else(|| format!("its key is not under {dir}"))?;
    if FrozenKey::from_fingerprint(fp).is_none() {
        return Err(format!(
            "its key does not end in a fingerprint (sha256: and 64 hex digits): {}",
            shown(fp)
        ));
    }
    Ok(fp)
}

/// Parses and checks the value under `PREFIX/frozen/FP`.
pub fn parse_entry(key: &[u8], value: &[u8], dir: &str) -> Result<(Entry, FrozenKey), String> {
    let fp = fingerprint_of(key, dir)?;
    let e: Entry = parse(value)?;
    if e.fingerprint != fp {
        return Err(format!(
            "its value names fingerprint {} but its key {fp}",
            shown(&e.fingerprint)
        ));
    }
    if e.frozen_at.len() > 64 || e.by.len() > 256 {
        return Err("its frozen_at or by field is too long".into());
    }
    let k = e.key()?;
    Ok((e, k))
}

/// Parses and checks the value under `PREFIX/unfrozen/FP`.
pub fn parse_tombstone(key: &[u8], value: &[u8], dir: &str) -> Result<Tombstone, String> {
    let fp = fingerprint_of(key, dir)?;
    let t: Tombstone = parse(value)?;
    if t.fingerprint != fp {
        return Err(format!(
            "its value names fingerprint {} but its key {fp}",
            shown(&t.fingerprint)
        ));
    }
    Ok(t)
}

fn parse<T: serde::de::DeserializeOwned>(value: &[u8]) -> Result<T, String> {
    if value.len() > MAX_VALUE {
        return Err(format!(
            "its value is {} bytes, more than the {MAX_VALUE} an entry can be",
            value.len()
        ));
    }
    // serde's own message may quote the value (a field name, a string): not repeated.
    serde_json::from_slice(value).map_err(|e| {
        format!(
            "its value is not a valid entry (JSON {:?} error at line {}, column {})",
            e.classify(),
            e.line(),
            e.column()
        )
    })
}

/// A value from the store, shortened for a message: it may be anything, even a secret
/// someone pasted in the wrong place, so at most 10 characters are shown.
fn shown(s: &str) -> String {
    let n = s.chars().count();
    let head: String = s
        .chars()
        .take(10)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if n <= 10 {
        format!("`{head}`")
    } else {
        format!("`{head}…` ({n} characters)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::samples::{sample, Rng};

    const DIR: &str = "/leakwatch/frozen/";

    fn fresh() -> (String, FrozenKey) {
        let (s, _) = sample("github-pat", &mut Rng::seeded(0xf1ee7)).unwrap();
        let k = FrozenKey::from_secret(s.as_bytes());
        (s, k)
    }

    fn put(e: &Entry) -> (Vec<u8>, Vec<u8>) {
        (
            format!("{DIR}{}", e.fingerprint).into_bytes(),
            serde_json::to_vec(e).unwrap(),
        )
    }

    #[test]
    fn an_entry_round_trips_without_the_secret() {
        let (secret, k) = fresh();
        let e = Entry::from_key(&k, "2026-12-04T00:00:00Z".into(), "root@a".into());
        let (key, value) = put(&e);
        assert!(!String::from_utf8_lossy(&value).contains(&secret));
        let (back, key2) = parse_entry(&key, &value, DIR).unwrap();
        assert_eq!(back, e);
        assert_eq!(key2, k);
    }

    #[test]
    fn malformed_and_hostile_entries_are_refused() {
        let (_, k) = fresh();
        let good = Entry::from_key(&k, "t".into(), String::new());
        let other = FrozenKey::from_secret(b"another-credential-entirely").fingerprint();
        let cases: Vec<(Vec<u8>, Vec<u8>, &str)> = vec![
            (
                format!("{DIR}{}", good.fingerprint).into_bytes(),
                b"not json".to_vec(),
                "not a valid entry",
            ),
            (
                format!("{DIR}sha256:xyz").into_bytes(),
                serde_json::to_vec(&good).unwrap(),
                "does not end in a fingerprint",
            ),
            (
                format!("{DIR}{other}").into_bytes(),
                serde_json::to_vec(&good).unwrap(),
                "but its key",
            ),
            (
                put(&Entry {
                    prefix: "abcdefgh".into(),
                    ..good.clone()
                })
                .0,
                put(&Entry {
                    prefix: "abcdefgh".into(),
                    ..good.clone()
                })
                .1,
                "prefix",
            ),
            (
                put(&Entry {
                    len: 3,
                    ..good.clone()
                })
                .0,
                put(&Entry {
                    len: 3,
                    ..good.clone()
                })
                .1,
                "below the 8 bytes",
            ),
            (
                put(&Entry {
                    len: 1 << 30,
                    ..good.clone()
                })
                .0,
                put(&Entry {
                    len: 1 << 30,
                    ..good.clone()
                })
                .1,
                "beyond",
            ),
            (
                format!("{DIR}{}", good.fingerprint).into_bytes(),
                vec![b' '; MAX_VALUE + 1],
                "more than the",
            ),
            (
                format!("{DIR}{}", good.fingerprint).into_bytes(),
                br#"{"fingerprint":"x","frozen_at":"t","kernel_hash":1}"#.to_vec(),
                "not a valid entry",
            ),
            (vec![0xff, 0xfe], b"{}".to_vec(), "not UTF-8"),
        ];
        for (key, value, want) in cases {
            let e = parse_entry(&key, &value, DIR).unwrap_err();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
    }

    #[test]
    fn a_long_value_is_never_echoed_whole() {
        let (secret, _) = fresh();
        let key = format!("{DIR}{secret}");
        let e = parse_entry(key.as_bytes(), b"{}", DIR).unwrap_err();
        assert!(!e.contains(&secret), "{e}");
    }

    #[test]
    fn tombstones_name_their_key() {
        let (_, k) = fresh();
        let fp = k.fingerprint();
        let t = Tombstone {
            fingerprint: fp.clone(),
            unfrozen_at: "t".into(),
            by: String::new(),
        };
        let dir = "/p/unfrozen/";
        let v = serde_json::to_vec(&t).unwrap();
        assert_eq!(
            parse_tombstone(format!("{dir}{fp}").as_bytes(), &v, dir).unwrap(),
            t
        );
        let other = FrozenKey::from_secret(b"another-credential-entirely").fingerprint();
        assert!(parse_tombstone(format!("{dir}{other}").as_bytes(), &v, dir).is_err());
    }
}
