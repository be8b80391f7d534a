//! The SIMD half of the keyword prefilter: positions where some keyword may start, found 16
//! bytes at a time with byte shuffles instead of table gathers.
//!
//! This is Hyperscan's "fat Teddy" shape. Keywords are put in 16 buckets. For each of a
//! keyword's first five bytes, two 16-entry tables map a byte's low and high nibble to the
//! buckets that accept it there; `pshufb` looks up 32 bytes at once (16 positions x two
//! halves of eight buckets). A position survives when some bucket accepts all five of its
//! bytes. The high-nibble tables ignore bit 5, which folds ASCII case, so the filter never
//! misses a case-insensitive match; what it lets through is checked exactly by the caller.
//!
//! Why by hand: aho-corasick's Teddy takes at most 64 patterns, and case-insensitive
//! keywords would have to be spelled out in every case (2^14 ways for `secret_access_key`).
//! Which keywords share a bucket decides the false-candidate rate, so buckets are chosen
//! greedily to keep the expected rate low on source text (see `BYTES`).

/// Keyword bytes the filter looks at.
const WIDTH: usize = 5;
const BUCKETS: usize = 16;

/// Per keyword position, the nibble tables as `pshufb` wants them: bytes 0-15 give bucket
/// bits 0-7, bytes 16-31 bucket bits 8-15.
pub struct Teddy {
    lo: [[u8; 32]; WIDTH],
    hi: [[u8; 32]; WIDTH],
}

/// Which nibbles a bucket accepts at each position: bit n of `lo[j]` for low nibble n.
#[derive(Clone, Copy, Default)]
struct Masks {
    lo: [u16; WIDTH],
    hi: [u16; WIDTH],
}

impl Masks {
    fn of(keyword: &[u8]) -> Masks {
        let mut m = Masks::default();
        for j in 0..WIDTH {
            match keyword.get(j) {
                Some(&b) => {
                    let x = b | 0x20;
                    m.lo[j] = 1 << (x & 15);
                    m.hi[j] = 1 << (x >> 4);
                }
                // Past a keyword's end, any byte will do.
                None => (m.lo[j], m.hi[j]) = (0xffff, 0xffff),
            }
        }
        m
    }

    fn union(self, o: Masks) -> Masks {
        let mut m = self;
        for j in 0..WIDTH {
            m.lo[j] |= o.lo[j];
            m.hi[j] |= o.hi[j];
        }
        m
    }

    /// Expected share of positions in source text this bucket lets through.
    fn rate(&self, t: &Freq) -> f64 {
        (0..WIDTH)
            .map(|j| f64::from(t.accepted(self.hi[j], self.lo[j])) / 65536.0)
            .product()
    }
}

/// `BYTES` summed by high nibble over sets of low nibbles, a byte of the low-nibble mask at
/// a time: what a bucket accepts at one position costs 16 lookups instead of 256 adds.
struct Freq {
    /// [high nibble][low nibbles 0-7 as a bit set], [high nibble][low nibbles 8-15].
    low: [[u32; 256]; 16],
    high: [[u32; 256]; 16],
}

impl Freq {
    fn new() -> Box<Freq> {
        let mut t = Box::new(Freq {
            low: [[0; 256]; 16],
            high: [[0; 256]; 16],
        });
        for h in 0..16 {
            for set in 0..256 {
                for n in bits(set as u16) {
                    t.low[h][set] += u32::from(BYTES[h << 4 | n]);
                    t.high[h][set] += u32::from(BYTES[h << 4 | (n + 8)]);
                }
            }
        }
        t
    }

    /// Summed frequency of the bytes whose high nibble is in `hi` and low nibble in `lo`.
    fn accepted(&self, hi: u16, lo: u16) -> u32 {
        let (a, b) = (usize::from(lo & 0xff), usize::from(lo >> 8));
        bits(hi).map(|h| self.low[h][a] + self.high[h][b]).sum()
    }
}

fn bits(m: u16) -> impl Iterator<Item = usize> {
    (0..16).filter(move |i| m >> i & 1 == 1)
}

impl Teddy {
    /// Can this CPU run `candidates`?
    #[cfg(target_arch = "x86_64")]
    pub fn supported() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("popcnt")
            && is_x86_feature_detected!("bmi1")
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub fn supported() -> bool {
        false
    }

    /// Keywords are lower-cased and non-empty (the rule loader rejects empty ones).
    pub fn new(keywords: &[Vec<u8>]) -> Teddy {
        let mut t = Teddy {
            lo: [[0; 32]; WIDTH],
            hi: [[0; 32]; WIDTH],
        };
        for (b, m) in buckets(keywords).iter().enumerate() {
            let (half, bit) = (16 * (b / 8), 1u8 << (b % 8));
            for j in 0..WIDTH {
                for n in bits(m.lo[j]) {
                    t.lo[j][half + n] |= bit;
                }
                // Bit 5 of a byte is bit 1 of its high nibble: accepting both values of
                // it folds ASCII case.
                for n in bits(m.hi[j]) {
                    t.hi[j][half + n] |= bit;
                    t.hi[j][half + (n ^ 2)] |= bit;
                }
            }
        }
        t
    }

    /// Pushes, in order, every position whose first five bytes some keyword may start
    /// with, and returns how far that answer goes: positions from the returned one on are
    /// left to the caller (at most 35 of them).
    ///
    /// # Safety
    /// The CPU must support AVX2, POPCNT and BMI1 (see `supported`).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,popcnt,bmi1")]
    pub unsafe fn candidates(&self, hay: &[u8], out: &mut Vec<u32>) -> usize {
        use std::arch::x86_64::*;
        // Chunks are at most a few MiB; positions fit in u32.
        assert!(hay.len() <= u32::MAX as usize);
        let table = |t: &[u8; 32]| _mm256_loadu_si256(t.as_ptr() as *const __m256i);
        let lo = self.lo.map(|t| table(&t));
        let hi = self.hi.map(|t| table(&t));
        let nibble = _mm256_set1_epi8(15);
        // Bucket masks of 16 positions (both halves hold the same 16 bytes).
        let masks = |at: usize| {
            let block = _mm_loadu_si128(hay.as_ptr().add(at) as *const __m128i);
            let x = _mm256_broadcastsi128_si256(block);
            let l = _mm256_and_si256(x, nibble);
            let h = _mm256_and_si256(_mm256_srli_epi16(x, 4), nibble);
            let m = |j: usize| {
                _mm256_and_si256(_mm256_shuffle_epi8(lo[j], l), _mm256_shuffle_epi8(hi[j], h))
            };
            [m(0), m(1), m(2), m(3), m(4)]
        };
        // Which of 16 positions end a five-byte match in some bucket: byte k of
        // `alignr(m, p, 16 - d)` is m at k - d (from the previous block when k < d).
        let ends = |m: &[__m256i; WIDTH], p: &[__m256i; WIDTH]| {
            let r = _mm256_and_si256(
                _mm256_and_si256(m[4], _mm256_alignr_epi8(m[3], p[3], 15)),
                _mm256_and_si256(
                    _mm256_alignr_epi8(m[2], p[2], 14),
                    _mm256_and_si256(
                        _mm256_alignr_epi8(m[1], p[1], 13),
                        _mm256_alignr_epi8(m[0], p[0], 12),
                    ),
                ),
            );
            // A zero byte in both halves: no bucket matched there.
            let z = _mm256_movemask_epi8(_mm256_cmpeq_epi8(r, _mm256_setzero_si256())) as u32;
            !(z & z >> 16) & 0xffff
        };
        // Before the text nothing matches, so no match ends before position WIDTH - 1.
        let mut prev = [_mm256_setzero_si256(); WIDTH];
        let mut i = 0;
        while i + 32 <= hay.len() {
            let a = masks(i);
            let b = masks(i + 16);
            let mut m = ends(&a, &prev) | ends(&b, &a) << 16;
            prev = b;
            // Branch-free for the usual 0-4 candidates: a data-dependent loop here costs
            // more in mispredictions than the filter itself.
            out.reserve(32);
            let n = m.count_ones() as usize;
            let first = (i as u32).wrapping_sub(WIDTH as u32 - 1);
            let dst = out.as_mut_ptr().add(out.len());
            for k in 0..4 {
                // SAFETY: `reserve` left room for 32; entries past `n` are not kept.
                *dst.add(k) = first.wrapping_add(m.trailing_zeros());
                m &= m.wrapping_sub(1);
            }
            let mut k = 4;
            while m != 0 {
                *dst.add(k) = first.wrapping_add(m.trailing_zeros());
                m &= m - 1;
                k += 1;
            }
            out.set_len(out.len() + n);
            i += 32;
        }
        i.saturating_sub(WIDTH - 1)
    }
}

/// Distinct masks above which keywords sharing their first two bytes are merged before the
/// greedy merge, which is cubic in the masks (the built-in rules' ~240 add ~2 ms to the
/// engine's 68 ms build here).
const MERGE_FIRST_OVER: usize = 512;

/// Splits `keywords` into at most 16 buckets: keywords the filter cannot tell apart share
/// one; then, until 16 are left, the two buckets whose merge adds least to the expected
/// candidate rate are merged; then `refine` moves keywords between them. Merging by first
/// byte up front, as this once did to save build time, let 6 % of source positions through
/// instead of 4 % (engine 814 vs 926 MB/s).
fn buckets(keywords: &[Vec<u8>]) -> Vec<Masks> {
    let freq = Freq::new();
    let mut cl: Vec<Masks> = keywords.iter().map(|k| Masks::of(k)).collect();
    cl.sort_unstable_by_key(|m| (m.lo, m.hi));
    cl.dedup_by_key(|m| (m.lo, m.hi));
    if cl.len() > MERGE_FIRST_OVER {
        let mut by_first: Vec<Masks> = Vec::new();
        let first = |m: &Masks| (m.lo[0], m.hi[0], m.lo[1], m.hi[1]);
        for m in cl {
            match by_first.iter_mut().find(|g| first(g) == first(&m)) {
                Some(g) => *g = g.union(m),
                None => by_first.push(m),
            }
        }
        cl = by_first;
    }
    let n = cl.len();
    let orig = cl.clone();
    let mut members: Vec<Vec<usize>> = (0..n).map(|i| vec![i]).collect();
    let mut rate: Vec<f64> = cl.iter().map(|m| m.rate(&freq)).collect();
    // Cost of merging a and b, for a < b only; recomputed for the merged bucket's pairs.
    let cost = |cl: &[Masks], rate: &[f64], a: usize, b: usize| {
        cl[a].union(cl[b]).rate(&freq) - rate[a] - rate[b]
    };
    let mut delta = vec![f64::INFINITY; n * n];
    for a in 0..n {
        for b in a + 1..n {
            delta[a * n + b] = cost(&cl, &rate, a, b);
        }
    }
    let mut alive: Vec<bool> = vec![true; n];
    let mut left = n;
    while left > BUCKETS {
        let mut best = (f64::INFINITY, 0, 0);
        for a in (0..n).filter(|&a| alive[a]) {
            for b in a + 1..n {
                if delta[a * n + b] < best.0 && alive[b] {
                    best = (delta[a * n + b], a, b);
                }
            }
        }
        let (_, a, b) = best;
        cl[a] = cl[a].union(cl[b]);
        rate[a] = cl[a].rate(&freq);
        alive[b] = false;
        let moved = std::mem::take(&mut members[b]);
        members[a].extend(moved);
        left -= 1;
        for c in (0..n).filter(|&c| alive[c] && c != a) {
            let (x, y) = (a.min(c), a.max(c));
            delta[x * n + y] = cost(&cl, &rate, x, y);
        }
    }
    let mut groups: Vec<Vec<usize>> = members
        .into_iter()
        .zip(alive)
        .filter_map(|(m, a)| a.then_some(m))
        .collect();
    refine(&orig, &mut groups, &freq);
    groups
        .iter()
        .map(|g| union_of(&orig, g, usize::MAX))
        .collect()
}

/// The union of the masks `orig[i]` for `i` in `group`, `skip` left out.
fn union_of(orig: &[Masks], group: &[usize], skip: usize) -> Masks {
    group
        .iter()
        .filter(|&&i| i != skip)
        .fold(Masks::default(), |u, &i| u.union(orig[i]))
}

/// Most rounds of `refine`; it settles in a handful on the built-in rules.
const REFINE_ROUNDS: usize = 32;

/// Moves single keywords (their masks, `orig`) between the greedy merge's buckets while
/// a move lowers the expected rate. A greedy merge fixes early choices that later merges
/// make bad: on the built-in rules this halves the share of source positions let through
/// (7.0 % to 3.8 %).
fn refine(orig: &[Masks], groups: &mut [Vec<usize>], freq: &Freq) {
    let mut masks: Vec<Masks> = groups
        .iter()
        .map(|g| union_of(orig, g, usize::MAX))
        .collect();
    let mut rate: Vec<f64> = masks.iter().map(|m| m.rate(freq)).collect();
    for _ in 0..REFINE_ROUNDS {
        let mut moved = false;
        for from in 0..groups.len() {
            let mut k = 0;
            // A bucket keeps at least one keyword: emptying one never lowers the rate.
            while k < groups[from].len() && groups[from].len() > 1 {
                let i = groups[from][k];
                let rest = union_of(orig, &groups[from], i);
                let rest_rate = rest.rate(freq);
                // (gain, bucket, its mask and rate with `i`); gains below 1e-12 are noise.
                let mut best = (1e-12, None, Masks::default(), 0.0);
                for to in (0..groups.len()).filter(|&to| to != from) {
                    let with = masks[to].union(orig[i]);
                    let r = with.rate(freq);
                    let gain = rate[from] + rate[to] - rest_rate - r;
                    if gain > best.0 {
                        best = (gain, Some(to), with, r);
                    }
                }
                match best {
                    (_, Some(to), with, r) => {
                        groups[from].swap_remove(k);
                        groups[to].push(i);
                        (masks[from], rate[from]) = (rest, rest_rate);
                        (masks[to], rate[to]) = (with, r);
                        moved = true;
                    }
                    _ => k += 1,
                }
            }
        }
        if !moved {
            break;
        }
    }
}

/// How often each byte, with bit 5 set, occurs in source text, per 65,536 bytes (at least
/// 1). Counted once over the 328 MB of Rust, C and Python sources of the bench's
/// real-source tree. Control bytes fold onto punctuation (`\n` is counted as `*`).
#[rustfmt::skip]
const BYTES: [u16; 256] = [
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    13194, 67, 385, 269, 18, 15, 88, 308, 793, 878, 2138, 27, 976, 331, 480, 719,
    504, 306, 296, 216, 141, 142, 142, 75, 124, 110, 888, 370, 104, 372, 153, 26,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    106, 2346, 786, 1801, 1404, 4404, 1222, 748, 748, 2481, 41, 420, 1765, 986, 2652, 2248,
    1449, 90, 2452, 2937, 3537, 1375, 436, 293, 478, 513, 92, 308, 106, 307, 7, 2090,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    8, 4, 4, 4, 9, 9, 7, 4, 4, 4, 4, 3, 4, 4, 5, 4,
    7, 8, 4, 4, 4, 5, 7, 3, 5, 6, 5, 4, 4, 6, 5, 7,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    5, 20, 9, 3, 1, 1, 1, 1, 1, 1, 4, 3, 7, 2, 2, 3,
    16, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::samples::Rng;

    #[test]
    fn accepted_is_the_sum_over_the_accepted_bytes() {
        let freq = Freq::new();
        let mut rng = Rng::new(7);
        for _ in 0..2000 {
            let (hi, lo) = (rng.below(1 << 16) as u16, rng.below(1 << 16) as u16);
            let naive: u32 = bits(hi)
                .flat_map(|h| bits(lo).map(move |l| u32::from(BYTES[h << 4 | l])))
                .sum();
            assert_eq!(freq.accepted(hi, lo), naive, "hi {hi:#x} lo {lo:#x}");
        }
    }

    /// On random keywords split at random: every keyword stays in exactly one bucket, none
    /// is emptied, and the expected rate does not rise.
    #[test]
    fn refine_keeps_the_partition_and_never_raises_the_rate() {
        let mut rng = Rng::new(11);
        let freq = Freq::new();
        let mut lowered = 0;
        for round in 0..20 {
            let words: Vec<Vec<u8>> = (0..60)
                .map(|_| {
                    let n = 3 + rng.below(6);
                    (0..n)
                        .map(|_| b"abcdefghijklmnopqrstuvwxyz_-:."[rng.below(30)])
                        .collect()
                })
                .collect();
            let orig: Vec<Masks> = words.iter().map(|w| Masks::of(w)).collect();
            let mut groups: Vec<Vec<usize>> = vec![Vec::new(); BUCKETS];
            for i in 0..orig.len() {
                groups[if i < BUCKETS { i } else { rng.below(BUCKETS) }].push(i);
            }
            let est = |g: &[Vec<usize>]| -> f64 {
                g.iter()
                    .map(|g| union_of(&orig, g, usize::MAX).rate(&freq))
                    .sum()
            };
            let before = est(&groups);
            refine(&orig, &mut groups, &freq);
            let after = est(&groups);
            assert!(after <= before + 1e-9, "round {round}: {before} -> {after}");
            lowered += usize::from(after < before * 0.9);
            assert!(groups.iter().all(|g| !g.is_empty()), "round {round}");
            let mut all: Vec<usize> = groups.concat();
            all.sort_unstable();
            assert_eq!(all, (0..orig.len()).collect::<Vec<_>>(), "round {round}");
        }
        // A random split is far from the best one: moves must find better.
        assert!(
            lowered >= 15,
            "only {lowered} of 20 random splits were improved by 10 %"
        );
    }

    #[test]
    fn every_keyword_has_a_bucket_that_accepts_it() {
        let words: Vec<Vec<u8>> = crate::detect::RuleSet::builtin()
            .rules
            .iter()
            .flat_map(|r| r.keywords.iter())
            .map(|k| k.to_ascii_lowercase().into_bytes())
            .collect();
        let b = buckets(&words);
        assert!(b.len() <= BUCKETS);
        for w in &words {
            let m = Masks::of(w);
            let covers = |c: &Masks| {
                (0..WIDTH).all(|j| c.lo[j] & m.lo[j] == m.lo[j] && c.hi[j] & m.hi[j] == m.hi[j])
            };
            assert!(b.iter().any(covers), "{}", String::from_utf8_lossy(w));
        }
    }
}
