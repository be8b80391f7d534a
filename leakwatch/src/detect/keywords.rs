//! The keyword prefilter: every (case-insensitive) occurrence of every rule keyword, as
//! aho-corasick's overlapping search would report it, but at SIMD speed on x86-64.
//!
//! Why not aho-corasick alone: with ~100 keywords its DFA walk is one dependent table load
//! per byte (~430 MB/s here), and its packed Teddy searcher refuses more than 64 patterns.
//! Instead, AVX2 looks up every even position's next two bytes (their low five bits, which
//! folds ASCII case) in a 1024-entry table whose 64-bit words say which first bytes before
//! and which third bytes after that pair begin a keyword; so one 4-way gather tests eight
//! positions. Only the ~1 % of positions whose three bytes could start a keyword are
//! confirmed, against the few keywords that start with those three bytes. Without AVX2
//! the crate's own overlapping search is used; a test holds the two paths to one answer.
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, BuildError, MatchKind};

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
    /// Indexed by the codes of two bytes (b1, b2). Bit `c(b0)` is set when some keyword can
    /// start with b0 b1 b2; bit `32 + c(b3)` when some keyword can start with b1 b2 b3. So
    /// one lookup at an even position answers for it and for the next one.
    table: Box<[u64]>,
    simd: bool,
}

/// A byte's table code: its low five bits, so `K` and `k` share it.
fn code(b: u8) -> usize {
    usize::from(b & 31)
}

fn pair(b1: u8, b2: u8) -> usize {
    code(b1) | code(b2) << 5
}

impl Keywords {
    /// `patterns` must be non-empty strings; they match ASCII case-insensitively.
    pub fn new(patterns: &[String]) -> Result<Keywords, BuildError> {
        let all = AhoCorasickBuilder::new()
            .kind(Some(AhoCorasickKind::DFA))
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(patterns)?;
        let mut table = vec![0u64; 1024].into_boxed_slice();
        for p in patterns {
            first_three(p.as_bytes(), |k0, k1, k2| {
                table[pair(k1, k2)] |= 1 << code(k0);
                table[pair(k0, k1)] |= 1 << (32 + code(k2));
            });
        }
        let (starts, groups) = start_groups(patterns);
        Ok(Keywords {
            all,
            patterns: patterns
                .iter()
                .map(|p| p.to_ascii_lowercase().into_bytes())
                .collect(),
            starts,
            groups,
            table,
            simd: simd_available(),
        })
    }

    /// The same finder on the portable path (tests compare the two).
    #[cfg(test)]
    fn portable(mut self) -> Keywords {
        self.simd = false;
        self
    }

    /// Calls `f(pattern, start, end)` for every keyword occurrence, overlapping ones
    /// included, in order of start.
    pub fn each(&self, hay: &[u8], mut f: impl FnMut(usize, usize, usize)) {
        if !self.simd {
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
        let mut starts = Vec::new();
        // SAFETY: `simd` is only true when the CPU has AVX2.
        let done = unsafe { candidates_avx2(&self.table, hay, &mut starts) };
        for s in starts
            .into_iter()
            .map(|s| s as usize)
            .chain(done..hay.len())
        {
            self.confirm(hay, s, &mut f);
        }
    }

    /// Reports the keywords that start at `start`.
    fn confirm(&self, hay: &[u8], start: usize, f: &mut impl FnMut(usize, usize, usize)) {
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

#[cfg(target_arch = "x86_64")]
fn simd_available() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

#[cfg(not(target_arch = "x86_64"))]
fn simd_available() -> bool {
    false
}

/// Pushes every position whose three bytes could start a keyword, in order, and returns how
/// far it got (the caller confirms the rest one by one).
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn candidates_avx2(table: &[u64], hay: &[u8], out: &mut Vec<u32>) -> usize {
    use std::arch::x86_64::*;
    assert_eq!(table.len(), 1024);
    // Chunks are at most a few MiB; positions fit in u32.
    assert!(hay.len() <= u32::MAX as usize);
    // Positions 0, 2, 4, 6 of a 16-byte load: their (b1, b2) pairs as 32-bit lanes, their b0
    // and their b3 as bytes 0-3.
    let pairs = _mm_setr_epi8(1, 2, -1, -1, 3, 4, -1, -1, 5, 6, -1, -1, 7, 8, -1, -1);
    let firsts = _mm_setr_epi8(0, 2, 4, 6, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    let fourths = _mm_setr_epi8(3, 5, 7, 9, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    let low5 = _mm_set1_epi8(31);
    let (m0, m1) = (_mm_set1_epi32(0x1f), _mm_set1_epi32(0x3e0));
    let (c63, c31) = (_mm256_set1_epi64x(63), _mm256_set1_epi64x(31));
    // Interleaves two 4-bit masks: bit j of `even` to bit 2j, of `odd` to bit 2j + 1.
    const SPREAD: [u32; 16] = {
        let mut t = [0u32; 16];
        let mut i = 0;
        while i < 16 {
            let mut j = 0;
            while j < 4 {
                t[i] |= ((i as u32 >> j) & 1) << (2 * j);
                j += 1;
            }
            i += 1;
        }
        t
    };
    let words = table.as_ptr() as *const i64;
    // Positions 0-7 from the bytes at `at`: a bit each that may start a keyword.
    let eight = |at: *const u8| {
        let v = _mm_and_si128(_mm_loadu_si128(at as *const __m128i), low5);
        let x = _mm_shuffle_epi8(v, pairs);
        let idx = _mm_or_si128(
            _mm_and_si128(x, m0),
            _mm_and_si128(_mm_srli_epi32(x, 3), m1),
        );
        let w = _mm256_i32gather_epi64(words, idx, 8);
        // Move bit c(b0) (resp. 32 + c(b3)) to the sign bit for movemask.
        let b0 = _mm256_cvtepu8_epi64(_mm_shuffle_epi8(v, firsts));
        let b3 = _mm256_cvtepu8_epi64(_mm_shuffle_epi8(v, fourths));
        let even = _mm256_sllv_epi64(w, _mm256_sub_epi64(c63, b0));
        let odd = _mm256_sllv_epi64(w, _mm256_sub_epi64(c31, b3));
        let even = _mm256_movemask_pd(_mm256_castsi256_pd(even)) as usize;
        let odd = _mm256_movemask_pd(_mm256_castsi256_pd(odd)) as usize;
        SPREAD[even] | SPREAD[odd] << 1
    };
    let mut i = 0;
    while i + 40 <= hay.len() {
        let p = hay.as_ptr().add(i);
        let mut m =
            eight(p) | eight(p.add(8)) << 8 | eight(p.add(16)) << 16 | eight(p.add(24)) << 24;
        while m != 0 {
            out.push(i as u32 + m.trailing_zeros());
            m &= m - 1;
        }
        i += 32;
    }
    i
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn candidates_avx2(_: &[u64], _: &[u8], _: &mut Vec<u32>) -> usize {
    0
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
        let simd = Keywords::new(words).unwrap();
        assert!(
            simd.simd,
            "this machine has AVX2; the SIMD path must be the one tested"
        );
        let portable = Keywords::new(words).unwrap().portable();
        let mut rng = Rng::seeded(seed);
        let mut hits = 0;
        for round in 0..300 {
            let mut hay = Vec::new();
            while hay.len() < (round * 37) % 3000 {
                let w = words[rng.below(words.len())].as_bytes();
                match rng.below(7) {
                    0 => hay.extend(w.to_ascii_uppercase()),
                    1 => hay.extend_from_slice(w),
                    // Same low five bits, other byte: `~` and `>`, `k` and `+`.
                    2 => hay.extend(w.iter().map(|b| b ^ 0x40)),
                    3 => hay.push(b'\n'),
                    4 => hay.push(rng.below(256) as u8),
                    _ => hay.extend_from_slice(rng.string(ALNUM, 5).as_bytes()),
                }
            }
            let want = all_hits(&portable, &hay);
            hits += want.len();
            assert_eq!(all_hits(&simd, &hay), want, "round {round}");
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
