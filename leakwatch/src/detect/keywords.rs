//! The keyword prefilter: every (case-insensitive) occurrence of every rule keyword, as
//! aho-corasick's overlapping search would report it, but at SIMD speed on x86-64.
//!
//! Why not aho-corasick alone: with ~100 keywords its DFA walk is one dependent table load
//! per byte (~430 MB/s here), and its packed Teddy searcher refuses more than 64 patterns.
//! Instead three filters, each cheaper per position than the next, narrow the positions:
//! `teddy` (AVX2 shuffles, 16 bytes at a time) passes ~4 % of positions in source text;
//! a hashed set of the keywords' folded four-byte prefixes, small enough for L1, drops
//! nine in ten of those; the keywords that start with a survivor's three bytes are then
//! compared exactly. Without AVX2 the crate's own overlapping search is used; a test holds
//! the two paths to one answer.
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, BuildError, MatchKind};

use super::teddy::Teddy;

thread_local! {
    /// Candidate positions, reused across calls (offsets only, nothing secret).
    static STARTS: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Candidate capacity kept for the next call (256 KiB); a bigger one is freed.
const STARTS_KEPT: usize = 1 << 16;

pub struct Keywords {
    /// Unanchored automaton: the portable path.
    all: AhoCorasick,
    /// The keywords, lower-cased.
    patterns: Vec<Vec<u8>>,
    /// Indexed by the codes of three bytes: which entry of `groups` lists the keywords that
    /// can start with them (0: none).
    starts: Box<[u16]>,
    /// Keyword indices, shortest first, so a start's matches come out in order of end.
    groups: Vec<Vec<usize>>,
    /// The SIMD candidate filter.
    teddy: Teddy,
    /// Cheap second filter: most of Teddy's candidates are dropped here.
    prefixes: Prefixes,
    simd: bool,
}

/// A byte's table code: its low five bits, so `K` and `k` share it.
fn code(b: u8) -> usize {
    usize::from(b & 31)
}

impl Keywords {
    /// `patterns` must be non-empty strings; they match ASCII case-insensitively.
    pub fn new(patterns: &[String]) -> Result<Keywords, BuildError> {
        let all = AhoCorasickBuilder::new()
            .kind(Some(AhoCorasickKind::DFA))
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(patterns)?;
        let (starts, groups) = start_groups(patterns);
        let patterns: Vec<Vec<u8>> = patterns
            .iter()
            .map(|p| p.to_ascii_lowercase().into_bytes())
            .collect();
        Ok(Keywords {
            all,
            teddy: Teddy::new(&patterns),
            prefixes: Prefixes::new(&patterns),
            patterns,
            starts,
            groups,
            simd: Teddy::supported(),
        })
    }

    /// Calls `f(pattern, start, end)` for every keyword occurrence, overlapping ones
    /// included, in order of start.
    pub fn each(&self, hay: &[u8], f: impl FnMut(usize, usize, usize)) {
        self.each_on(self.simd, hay, f)
    }

    /// Every occurrence as (start, pattern, end), by the SIMD path (when the CPU has it)
    /// and by the portable one: for fuzzing the two against each other.
    pub fn both_paths(&self, hay: &[u8]) -> [Vec<(usize, usize, usize)>; 2] {
        [self.simd, false].map(|simd| {
            let mut v = Vec::new();
            self.each_on(simd, hay, |p, s, e| v.push((s, p, e)));
            v
        })
    }

    fn each_on(&self, simd: bool, hay: &[u8], mut f: impl FnMut(usize, usize, usize)) {
        if !simd {
            let mut hits: Vec<(usize, usize, usize)> = self
                .all
                .find_overlapping_iter(hay)
                .map(|m| (m.start(), m.end(), m.pattern().as_usize()))
                .collect();
            hits.sort_unstable();
            for (s, e, p) in hits {
                f(p, s, e);
            }
            return;
        }
        // The thread's candidate buffer: allocating one per call cost the daemon more
        // than the filter, on the small writes it scans most.
        let mut starts = STARTS.take();
        starts.clear();
        // SAFETY: `simd` is only true when the CPU has what `candidates` needs.
        #[cfg(target_arch = "x86_64")]
        let done = unsafe { self.teddy.candidates(hay, &mut starts) };
        #[cfg(not(target_arch = "x86_64"))]
        let done = 0;
        let kept = self.prefixes.keep(hay, &mut starts);
        for s in starts[..kept].iter().map(|&s| s as usize) {
            self.confirm_rest(hay, s, &mut f);
        }
        for s in done..hay.len() {
            self.confirm(hay, s, &mut f);
        }
        if starts.capacity() <= STARTS_KEPT {
            STARTS.set(starts);
        }
    }

    /// Reports the keywords that start at `start`.
    fn confirm(&self, hay: &[u8], start: usize, f: &mut impl FnMut(usize, usize, usize)) {
        let four = match hay.get(start..start + 4) {
            Some(w) => u32::from_le_bytes([w[0], w[1], w[2], w[3]]),
            None => {
                let mut w = [0u8; 4];
                w[..hay.len() - start].copy_from_slice(&hay[start..]);
                u32::from_le_bytes(w)
            }
        };
        if self.prefixes.may_start(four) {
            self.confirm_rest(hay, start, f);
        }
    }

    /// `confirm` past the prefix filter.
    fn confirm_rest(&self, hay: &[u8], start: usize, f: &mut impl FnMut(usize, usize, usize)) {
        let b = |i: usize| hay.get(start + i).copied().unwrap_or(0);
        let group = self.starts[triple(b(0), b(1), b(2))];
        if group == 0 {
            return;
        }
        let rest = &hay[start..];
        for &k in &self.groups[usize::from(group)] {
            let p = &self.patterns[k];
            if rest.len() >= p.len() && rest[..p.len()].eq_ignore_ascii_case(p) {
                f(k, start, start + p.len());
            }
        }
    }
}

/// Calls `f` with every first three bytes (as codes) `p` can start with: past its end a
/// keyword stands for every continuation.
fn first_three(p: &[u8], mut f: impl FnMut(u8, u8, u8)) {
    let any: Vec<u8> = (0..32).collect();
    let byte = |i: usize| p.get(i).map_or(&any[..], std::slice::from_ref);
    for &b0 in byte(0) {
        for &b1 in byte(1) {
            for &b2 in byte(2) {
                f(b0, b1, b2);
            }
        }
    }
}

/// The keywords' first four bytes with bit 5 set (which folds ASCII case), in sets that fit
/// in L1. Shorter keywords stand for every byte after their end.
struct Prefixes {
    /// Hashed four-byte prefixes of keywords of three bytes or more: 8 KiB: with the
    /// built-in rules' 276 keywords, 0.27 % of source positions survive it, 0.47 % at 4 KiB.
    four: Box<[u64]>,
    /// Keywords of one or two bytes, by their first two bytes (7 bits each: bit 5 is always
    /// set); empty when there are none.
    two: Box<[u64]>,
}

/// Sets bit 5 of four bytes.
const FOLD: u32 = 0x2020_2020;
const FOUR_BITS: u32 = 16;

impl Prefixes {
    fn new(patterns: &[Vec<u8>]) -> Prefixes {
        let mut four = vec![0u64; 1 << (FOUR_BITS - 6)].into_boxed_slice();
        let mut two = Vec::new();
        let set = |bits: &mut [u64], i: usize| bits[i / 64] |= 1 << (i % 64);
        // The 128 values a byte can take once bit 5 is set.
        let folded = (0..=255u8).filter(|b| b & 0x20 != 0);
        for p in patterns {
            let w = |i: usize| u32::from(p[i] | 0x20);
            match p.len() {
                0 => {}
                1 | 2 => {
                    if two.is_empty() {
                        two = vec![0u64; 1 << 8];
                    }
                    let second: Vec<u8> = match p.get(1) {
                        Some(&b) => vec![b | 0x20],
                        None => folded.clone().collect(),
                    };
                    for b1 in second {
                        set(&mut two, pair_index(p[0] | 0x20, b1));
                    }
                }
                3 => {
                    for b3 in folded.clone() {
                        let v = w(0) | w(1) << 8 | w(2) << 16 | u32::from(b3) << 24;
                        set(&mut four, four_index(v));
                    }
                }
                _ => set(
                    &mut four,
                    four_index(w(0) | w(1) << 8 | w(2) << 16 | w(3) << 24),
                ),
            }
        }
        Prefixes {
            four,
            two: two.into_boxed_slice(),
        }
    }

    /// Might a keyword start with these four bytes (zero past the end of the text)?
    fn may_start(&self, bytes: u32) -> bool {
        let v = bytes | FOLD;
        let bit = |bits: &[u64], i: usize| bits[i / 64] >> (i % 64) & 1 == 1;
        // `|`, not `||`: both tests are a load, and a branch on them mispredicts.
        bit(&self.four, four_index(v))
            | (!self.two.is_empty() && bit(&self.two, pair_index(v as u8, (v >> 8) as u8)))
    }

    /// Moves the candidates (Teddy's: each has five bytes of `hay` from it on) that may
    /// start a keyword to the front of `starts`; returns how many. Branch-free: most are
    /// dropped, at random, and a branch per candidate cost more than the test.
    fn keep(&self, hay: &[u8], starts: &mut [u32]) -> usize {
        let mut kept = 0;
        for i in 0..starts.len() {
            let s = starts[i] as usize;
            let w = &hay[s..s + 4];
            starts[kept] = starts[i];
            kept += usize::from(self.may_start(u32::from_le_bytes([w[0], w[1], w[2], w[3]])));
        }
        kept
    }
}

fn four_index(v: u32) -> usize {
    (v.wrapping_mul(0x9e37_79b1) >> (32 - FOUR_BITS)) as usize
}

/// Two bytes with bit 5 set, as a 14-bit index.
fn pair_index(b0: u8, b1: u8) -> usize {
    let seven = |b: u8| usize::from(b & 0x1f | (b >> 1) & 0x60);
    seven(b0) | seven(b1) << 7
}

/// The index of three bytes' codes in `Keywords::starts`.
fn triple(b0: u8, b1: u8, b2: u8) -> usize {
    code(b0) | code(b1) << 5 | code(b2) << 10
}

/// Builds `Keywords::starts` and `groups`: for every three codes, the keywords that can
/// start with them, shortest first. Keywords shorter than three bytes match any rest.
/// Identical lists share a group.
fn start_groups(patterns: &[String]) -> (Box<[u16]>, Vec<Vec<usize>>) {
    let mut lists: Vec<Vec<usize>> = vec![Vec::new(); 1 << 15];
    let mut by_len: Vec<usize> = (0..patterns.len()).collect();
    by_len.sort_by_key(|&k| patterns[k].len());
    for k in by_len {
        first_three(patterns[k].as_bytes(), |b0, b1, b2| {
            lists[triple(b0, b1, b2)].push(k)
        });
    }
    let mut groups: Vec<Vec<usize>> = vec![Vec::new()];
    let mut seen = std::collections::HashMap::new();
    let starts = lists
        .into_iter()
        .map(|l| {
            if l.is_empty() {
                return 0;
            }
            *seen.entry(l.clone()).or_insert_with(|| {
                groups.push(l);
                u16::try_from(groups.len() - 1).expect("fewer than 65536 keyword groups")
            })
        })
        .collect();
    (starts, groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::samples::{Rng, ALNUM};

    fn all_hits(k: &Keywords, hay: &[u8]) -> Vec<(usize, usize, usize)> {
        let mut v = Vec::new();
        k.each(hay, |p, s, e| v.push((s, p, e)));
        v
    }

    /// Random text built from `words` (in any case), their neighbours in the 5-bit code
    /// space, newlines and random bytes: the SIMD and portable paths must agree on it.
    fn paths_agree(words: &[String], seed: u64) {
        let k = Keywords::new(words).unwrap();
        assert!(
            k.simd,
            "this machine has AVX2; the SIMD path must be the one tested"
        );
        let mut rng = Rng::seeded(seed);
        let mut hits = 0;
        for round in 0..300 {
            let mut hay = Vec::new();
            while hay.len() < (round * 37) % 3000 {
                let w = words[rng.below(words.len())].as_bytes();
                match rng.below(8) {
                    0 => hay.extend(w.to_ascii_uppercase()),
                    1 => hay.extend_from_slice(w),
                    // Same low five bits, other byte: `~` and `>`, `k` and `+`.
                    2 => hay.extend(w.iter().map(|b| b ^ 0x40)),
                    // Same but for bit 5, which the filters ignore: `_` and DEL.
                    5 => hay.extend(w.iter().map(|b| b ^ 0x20)),
                    3 => hay.push(b'\n'),
                    4 => hay.push(rng.below(256) as u8),
                    _ => hay.extend_from_slice(rng.string(ALNUM, 5).as_bytes()),
                }
            }
            let [simd, portable] = k.both_paths(&hay);
            hits += portable.len();
            assert_eq!(simd, portable, "round {round}");
        }
        assert!(
            hits > 1000,
            "only {hits} keyword hits: the text is not testing much"
        );
    }

    #[test]
    fn simd_and_portable_paths_agree() {
        let words = [
            "key",
            "token",
            "q~",
            "sk-ant-api",
            "ghp_",
            "passw",
            "eyJ",
            "x",
        ];
        paths_agree(&words.map(String::from), 0x6b6579);
    }

    #[test]
    fn simd_and_portable_paths_agree_on_the_builtin_keywords() {
        let mut words: Vec<String> = crate::detect::RuleSet::builtin()
            .rules
            .iter()
            .flat_map(|r| r.keywords.iter().map(|k| k.to_ascii_lowercase()))
            .collect();
        words.sort();
        words.dedup();
        assert!(words.len() > 90);
        paths_agree(&words, 0x6275696c74);
    }

    #[test]
    fn simd_and_portable_paths_agree_on_many_odd_keywords() {
        // Far more keywords than buckets, of every length from one byte, with punctuation,
        // bytes whose bit 5 is already set and multi-byte UTF-8.
        let mut rng = Rng::seeded(0x6f6464);
        let chars: Vec<char> = "abcxyzKQ019_-.:/~=@[{ é€".chars().collect();
        let mut words: Vec<String> = (0..300)
            .map(|_| {
                let len = 1 + rng.below(9);
                (0..len).map(|_| chars[rng.below(chars.len())]).collect()
            })
            .collect();
        words.sort();
        words.dedup();
        paths_agree(&words, 0x6f6464);
    }

    #[test]
    fn finds_overlapping_and_case_folded_keywords() {
        let words: Vec<String> = ["secret", "secret_access_key", "key"]
            .map(String::from)
            .to_vec();
        let k = Keywords::new(&words).unwrap();
        let mut hay = vec![b' '; 100];
        hay.extend_from_slice(b"AWS_SECRET_ACCESS_KEY=");
        hay.extend(vec![b' '; 100]);
        let hits = all_hits(&k, &hay);
        assert_eq!(hits, vec![(104, 0, 110), (104, 1, 121), (118, 2, 121)]);
    }
}
