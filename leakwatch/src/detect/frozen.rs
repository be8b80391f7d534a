//! Matching frozen credentials without holding their plaintext: each is known by its
//! SHA-256, length and (optionally) a short prefix. A prefix hit is confirmed by hashing the
//! `len` bytes there; entries frozen by fingerprint alone are matched by hashing tokens.
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use aho_corasick::{AhoCorasick, MatchKind};

/// Bytes of prefix kept for a frozen credential (public key prefixes like `sk-ant-` make up
/// most of it; never more than a quarter of the secret).
pub const PREFIX_MAX: usize = 4;
/// Shortest credential freeze accepts: fewer bytes would match too much by chance.
pub const LEN_MIN: usize = 8;

/// Why a credential of `len` bytes cannot be frozen, if it cannot.
pub fn too_short(len: usize) -> Option<String> {
    (len < LEN_MIN).then(|| {
        format!("refusing to freeze a credential of {len} bytes: at least {LEN_MIN} are needed to match it safely")
    })
}

/// Longest credential a frozen entry may claim (a 4096-bit PEM key is ~3.3 KB).
pub const LEN_MAX: usize = 64 << 10;
/// Longest token hashed for keys frozen by fingerprint alone.
const TOKEN_MAX: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrozenKey {
    pub sha256: [u8; 32],
    /// 0 when unknown (frozen by fingerprint alone).
    pub len: usize,
    pub prefix: Vec<u8>,
}

impl FrozenKey {
    /// Derives the stored form from the plaintext (which the caller then zeroizes).
    pub fn from_secret(secret: &[u8]) -> FrozenKey {
        let keep = PREFIX_MAX.min(secret.len() / 4);
        FrozenKey {
            sha256: super::redact::digest(secret),
            len: secret.len(),
            prefix: secret[..keep].to_vec(),
        }
    }

    /// Parses `sha256:<64 hex>`.
    pub fn from_fingerprint(fp: &str) -> Option<FrozenKey> {
        let hex = fp.strip_prefix("sha256:")?;
        if hex.len() != 64 {
            return None;
        }
        let mut sha256 = [0u8; 32];
        for (i, b) in sha256.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(FrozenKey {
            sha256,
            len: 0,
            prefix: Vec::new(),
        })
    }

    pub fn fingerprint(&self) -> String {
        let mut s = String::from("sha256:");
        for b in self.sha256 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

/// A match of a frozen key in scanned bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrozenHit {
    pub key: usize,
    pub start: usize,
    pub end: usize,
}

pub struct FrozenSet {
    keys: Vec<FrozenKey>,
    prefixes: Option<AhoCorasick>,
    /// For each prefix pattern, the keys that start with it.
    by_prefix: Vec<Vec<usize>>,
    /// Keys without a usable prefix.
    tokens_only: Vec<usize>,
    /// Unique to this set: what was found clean under one set is not clean under the next.
    generation: u64,
}

/// Generations handed out so far.
static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Default for FrozenSet {
    fn default() -> Self {
        FrozenSet::new(Vec::new())
    }
}

impl FrozenSet {
    /// The set behind `lock`, poisoned or not. The set is replaced whole (`replace`), so a
    /// thread that panicked holding the lock left the old set or the new one; a poisoned
    /// lock must never turn frozen-key matching off, which `.ok()` would do silently.
    pub fn read(lock: &RwLock<FrozenSet>) -> RwLockReadGuard<'_, FrozenSet> {
        lock.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts `new` in place of the set behind `lock`, poisoned or not (see `read`). `new` is
    /// built before the lock is taken, so nothing that can panic runs under it.
    pub fn replace(lock: &RwLock<FrozenSet>, new: FrozenSet) {
        *lock.write().unwrap_or_else(PoisonError::into_inner) = new;
    }
}

impl FrozenSet {
    pub fn new(keys: Vec<FrozenKey>) -> FrozenSet {
        let mut pats: Vec<Vec<u8>> = Vec::new();
        let mut by_prefix: Vec<Vec<usize>> = Vec::new();
        let mut tokens_only = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            if k.prefix.is_empty() || k.len == 0 {
                tokens_only.push(i);
                continue;
            }
            match pats.iter().position(|p| *p == k.prefix) {
                Some(j) => by_prefix[j].push(i),
                None => {
                    pats.push(k.prefix.clone());
                    by_prefix.push(vec![i]);
                }
            }
        }
        let prefixes = if pats.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .build(&pats)
                .ok()
        };
        FrozenSet {
            keys,
            prefixes,
            by_prefix,
            tokens_only,
            generation: GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
        }
    }

    /// The longest span `find` can report: a key's length, or a token's limit for keys
    /// known by fingerprint alone.
    pub fn max_len(&self) -> usize {
        let known = self.keys.iter().map(|k| k.len).max().unwrap_or(0);
        if self.tokens_only.is_empty() {
            known
        } else {
            known.max(TOKEN_MAX)
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn keys(&self) -> &[FrozenKey] {
        &self.keys
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Every occurrence of a frozen key in `hay`.
    pub fn find(&self, hay: &[u8]) -> Vec<FrozenHit> {
        let mut hits = Vec::new();
        if let Some(ac) = &self.prefixes {
            for m in ac.find_overlapping_iter(hay) {
                for &k in &self.by_prefix[m.pattern().as_usize()] {
                    let key = &self.keys[k];
                    let end = m.start() + key.len;
                    if end <= hay.len() && super::redact::digest(&hay[m.start()..end]) == key.sha256
                    {
                        hits.push(FrozenHit {
                            key: k,
                            start: m.start(),
                            end,
                        });
                    }
                }
            }
        }
        if !self.tokens_only.is_empty() {
            self.find_tokens(hay, &mut hits);
        }
        hits.sort_by_key(|h| (h.start, h.key));
        hits.dedup();
        hits
    }

    /// Hashes every delimited token (and the value part of `NAME=value`) of 8..=4096 bytes.
    fn find_tokens(&self, hay: &[u8], hits: &mut Vec<FrozenHit>) {
        let delim = |b: u8| b.is_ascii_whitespace() || b"\"'`,;()[]{}<>=:&?\0".contains(&b);
        let mut i = 0;
        while i < hay.len() {
            while i < hay.len() && delim(hay[i]) {
                i += 1;
            }
            let s = i;
            while i < hay.len() && !delim(hay[i]) {
                i += 1;
            }
            let tok = &hay[s..i];
            if (8..=TOKEN_MAX).contains(&tok.len()) {
                let d = super::redact::digest(tok);
                for &k in &self.tokens_only {
                    if self.keys[k].sha256 == d {
                        hits.push(FrozenHit {
                            key: k,
                            start: s,
                            end: i,
                        });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::samples::{Rng, ALNUM};

    #[test]
    fn finds_by_prefix_and_by_fingerprint() {
        let mut rng = Rng::from_time();
        let a = format!("sk-ant-api03-{}", rng.string(ALNUM, 40));
        let b = rng.string(ALNUM, 32);
        let ka = FrozenKey::from_secret(a.as_bytes());
        assert_eq!(ka.prefix.len(), 4);
        let kb = FrozenKey::from_fingerprint(&crate::detect::fingerprint(b.as_bytes())).unwrap();
        let set = FrozenSet::new(vec![ka, kb]);
        let text = format!(
            "x=1 KEY={a}\nAuthorization: Bearer {b}\nother {}",
            rng.string(ALNUM, 32)
        );
        let hits = set.find(text.as_bytes());
        assert_eq!(hits.len(), 2, "{hits:?}");
        assert_eq!(&text.as_bytes()[hits[0].start..hits[0].end], a.as_bytes());
        assert_eq!(&text.as_bytes()[hits[1].start..hits[1].end], b.as_bytes());
        // A near miss (one byte changed) does not match.
        let mut near = a.clone().into_bytes();
        near[20] ^= 1;
        assert!(set.find(&near).is_empty());
    }

    #[test]
    fn fingerprint_round_trip_and_rejects_garbage() {
        let k = FrozenKey::from_secret(b"0123456789abcdef");
        assert_eq!(
            FrozenKey::from_fingerprint(&k.fingerprint())
                .unwrap()
                .sha256,
            k.sha256
        );
        assert!(FrozenKey::from_fingerprint("sha256:zz").is_none());
        assert!(FrozenKey::from_fingerprint("md5:00").is_none());
    }
}
