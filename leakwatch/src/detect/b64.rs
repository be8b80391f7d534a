//! Text carried in base64: a `.env` or config file an agent attaches to an API request
//! (`"data": "QVdTX1NF…"`), a Kubernetes Secret's values, a `data:` URL, an encoded
//! environment passed on a command line. `runs` finds the stretches of base64 worth
//! decoding and `text` decodes one if what it holds is text; the engine scans that text
//! with the words around the run (a Secret's key names the value), so binary payloads
//! (images, archives) cost a 64-character probe and nothing more.
use base64::{
    alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    Engine as _,
};

/// Shortest run worth decoding (12 bytes): shorter text holds no credential worth a name.
pub const MIN_RUN: usize = 16;
/// Characters decoded first to judge whether a run is text.
const PROBE: usize = 64;
/// A wrapped line (MIME 76, PEM 64 columns) at least this long continues its run.
const WRAP_MIN: usize = 60;

const CONFIG: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, CONFIG);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, CONFIG);

const ALNUM: u8 = 1;
const STD: u8 = 2;
const URL: u8 = 4;

/// Character classes: letters and digits, the standard alphabet's `+/`, the URL-safe `-_`.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = if b.is_ascii_alphanumeric() {
            ALNUM
        } else if b == b'+' || b == b'/' {
            STD
        } else if b == b'-' || b == b'_' {
            URL
        } else {
            0
        };
        c += 1;
    }
    t
};

/// Each character's 6-bit value in either alphabet (`+` and `-` 62, `/` and `_` 63).
static VALUE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' => 62,
            _ => 63,
        };
        c += 1;
    }
    t
};

#[inline]
fn in_run(b: u8) -> bool {
    CLASS[b as usize] != 0
}

/// Stretches of `hay` that may be base64 of text: at least `MIN_RUN` characters of either
/// alphabet, lines of `WRAP_MIN` or more joined across their line breaks, `=` padding
/// included, whose first groups decode to printable ASCII (`probe`). (start, end) in
/// order.
///
/// This runs over every byte scanned, so it looks first for what such a run must hold
/// and identifiers rarely do: thirteen alphabet bytes whose 1st, 5th, 9th and 13th can
/// start a group of text (`group_start`). Bytes are classified 64 at a time; chunks
/// overlap by 13 so every such window lies whole in one.
pub fn runs(hay: &[u8]) -> Vec<(usize, usize)> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { runs_avx2(hay) };
    }
    runs_by(hay, masks)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn runs_avx2(hay: &[u8]) -> Vec<(usize, usize)> {
    // SAFETY: this function runs only where AVX2 is present.
    runs_by(hay, |w| unsafe { masks_avx2(w) })
}

/// Window starts a chunk judges: the last 13 of its 64 bytes begin the next chunk.
const STRIDE: usize = 51;

/// `runs`, with `classify` giving a 64-byte chunk's (alphabet, group start) bits.
#[inline(always)]
fn runs_by(hay: &[u8], classify: impl Fn(&[u8; 64]) -> (u64, u64)) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let n = hay.len();
    // Everything before `covered` belongs to a stretch already judged.
    let mut covered = 0;
    let mut at = 0;
    while at < n {
        let (a, g) = if at + 64 <= n {
            classify(hay[at..at + 64].try_into().expect("64 bytes"))
        } else {
            let mut w = [0u8; 64];
            w[..n - at].copy_from_slice(&hay[at..]);
            classify(&w)
        };
        // Bit i: bytes i..i + 13 in an alphabet, group starts at i, i + 4, i + 8, i + 12.
        let a2 = a & a >> 1;
        let a4 = a2 & a2 >> 2;
        let a13 = a4 & a4 >> 4 & a4 >> 8 & a >> 12;
        let mut c = a13 & g & g >> 4 & g >> 8 & g >> 12 & ((1u64 << STRIDE) - 1);
        while c != 0 {
            let k = c.trailing_zeros();
            c &= c - 1;
            if at + (k as usize) < covered {
                continue;
            }
            // The stretch's ends from the chunk's bits; past the chunk, a byte at a time.
            let before = !a & ((1u64 << k) - 1);
            let mut s = if before != 0 {
                at + 64 - before.leading_zeros() as usize
            } else {
                at
            };
            while s > covered && before == 0 && in_run(hay[s - 1]) {
                s -= 1;
            }
            let s = s.max(covered);
            let after = !a & (!0u64 << (k + 13));
            let mut end = at + after.trailing_zeros() as usize;
            if after == 0 {
                while end < n && in_run(hay[end]) {
                    end += 1;
                }
            }
            covered = end;
            if end - s >= MIN_RUN && probe(&hay[s..end]) {
                covered = whole(hay, s, end);
                out.push((s, covered));
            }
        }
        at += STRIDE;
    }
    out
}

/// A 64-byte chunk's bits: (in an alphabet, may start a group of text). Nibble table
/// lookups: a byte is in a set when `LO[low nibble] & HI[high nibble]` is not zero.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn masks_avx2(w: &[u8; 64]) -> (u64, u64) {
    use std::arch::x86_64::*;
    // Alphabet bits: digits, `A`–`O`, `P`–`Z`, `a`–`o`, `p`–`z`, `+-/`, `_`.
    const LO: [u8; 16] = [
        0x15, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1e, 0x2a, 0x0a, 0x2a, 0x0a,
        0x6a,
    ];
    const HI: [u8; 16] = [
        0, 0, 0x20, 0x01, 0x02, 0x44, 0x08, 0x10, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    // Group-start bits: `C`, `D`, `I`–`O`; `P`–`Z`; `a`–`f`.
    const GLO: [u8; 16] = [2, 6, 6, 7, 7, 6, 6, 2, 2, 3, 3, 1, 1, 1, 1, 1];
    const GHI: [u8; 16] = [0, 0, 0, 0, 1, 2, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let table = |t: &[u8; 16]| {
        // SAFETY: 16 bytes, unaligned load.
        _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(t.as_ptr() as *const __m128i) })
    };
    let (lo, hi, glo, ghi) = (table(&LO), table(&HI), table(&GLO), table(&GHI));
    let nibble = _mm256_set1_epi8(15);
    let zero = _mm256_setzero_si256();
    let half = |k: usize| {
        // SAFETY: 32 bytes at 0 or 32 of a 64-byte array, unaligned load.
        let x = unsafe { _mm256_loadu_si256(w.as_ptr().add(k) as *const __m256i) };
        let l = _mm256_and_si256(x, nibble);
        let h = _mm256_and_si256(_mm256_srli_epi16(x, 4), nibble);
        let set = |lo, hi| {
            let m = _mm256_and_si256(_mm256_shuffle_epi8(lo, l), _mm256_shuffle_epi8(hi, h));
            !(_mm256_movemask_epi8(_mm256_cmpeq_epi8(m, zero)) as u32) as u64
        };
        (set(lo, hi), set(glo, ghi))
    };
    let ((a0, g0), (a1, g1)) = (half(0), half(32));
    (a0 | a1 << 32, g0 | g1 << 32)
}

/// `masks_avx2`, a byte at a time.
fn masks(w: &[u8; 64]) -> (u64, u64) {
    w.iter().enumerate().fold((0, 0), |(a, g), (k, &b)| {
        (
            a | u64::from(in_run(b)) << k,
            g | u64::from(group_start(b)) << k,
        )
    })
}

/// The end of the run whose alphabet bytes span `s..end`: lines of `WRAP_MIN` or more
/// joined across their line breaks, then up to two `=`.
fn whole(hay: &[u8], s: usize, end: usize) -> usize {
    let n = hay.len();
    let (mut e, mut line) = (end, s);
    loop {
        while e < n && in_run(hay[e]) {
            e += 1;
        }
        let nl = match hay.get(e..e + 2) {
            Some([b'\r', b'\n']) => 2,
            _ if hay.get(e) == Some(&b'\n') => 1,
            _ => 0,
        };
        if nl == 0 || e - line < WRAP_MIN || !hay.get(e + nl).is_some_and(|&b| in_run(b)) {
            break;
        }
        e += nl;
        line = e;
    }
    let mut pad = 0;
    while pad < 2 && hay.get(e) == Some(&b'=') {
        e += 1;
        pad += 1;
    }
    e
}

/// What a run decodes to, when it is text.
pub struct Decoded {
    /// The text; the caller zeroizes it.
    pub text: Vec<u8>,
    /// For each byte of `text`, the offset in the run of the character it starts in.
    pub at: Vec<u32>,
}

/// `run` (from `runs`) decoded, if it is text: printable UTF-8, tabs and line breaks.
/// The run may begin up to three characters before its first whole group (a word glued
/// to the encoded value): each start is tried on a short probe first.
pub fn text(run: &[u8]) -> Option<Decoded> {
    // Characters with their offsets in the run: line breaks and padding dropped.
    let mut chars = Vec::with_capacity(run.len());
    let mut idx: Vec<u32> = Vec::new();
    let wrapped = run.contains(&b'\n');
    let (mut std, mut url) = (false, false);
    for (i, &b) in run.iter().enumerate() {
        match CLASS[b as usize] {
            0 => continue,
            STD => std = true,
            URL => url = true,
            _ => {}
        }
        chars.push(b);
        if wrapped {
            idx.push(i as u32);
        }
    }
    let engine = match (std, url) {
        (true, true) => return None,
        (_, true) => &URL_SAFE,
        _ => &STANDARD,
    };
    let off = (0..4).find(|&off| looks_like_text(&chars[off.min(chars.len())..]))?;
    // A lone last character holds no whole byte.
    let end = chars.len() - usize::from((chars.len() - off) % 4 == 1);
    let mut text = engine.decode(&chars[off..end]).ok()?;
    if !is_text(&text) {
        crate::wipe::vec(&mut text);
        return None;
    }
    let at = (0..text.len())
        .map(|j| {
            let c = off + j * 4 / 3;
            if wrapped {
                idx[c]
            } else {
                c as u32
            }
        })
        .collect();
    Some(Decoded { text, at })
}

/// Whether a run's first line (its alphabet bytes up to the first break, `MIN_RUN` or
/// more) may be base64 of text at one of the four starts. Most runs are identifiers and
/// digests, judged here on their first groups, unallocated.
fn probe(line: &[u8]) -> bool {
    let head = &line[..line.len().min(PROBE + 3)];
    // Four group starts first: few identifiers get past them at a given start. (A run
    // of 16 with a word glued before it has too few.)
    (0..4).any(|off| {
        off + 13 <= head.len()
            && [0, 4, 8, 12].iter().all(|k| group_start(head[off + k]))
            && looks_like_text(&head[off..])
    })
}

/// The first character of a group holds the top six bits of a byte: for printable ASCII
/// and line breaks only `C`, `D`, `I`–`Z` and `a`–`f`.
#[inline(always)]
fn group_start(c: u8) -> bool {
    matches!(c, b'C' | b'D' | b'I'..=b'Z' | b'a'..=b'f')
}

/// The first whole groups of `chars` (up to `PROBE` characters, at least two groups)
/// decode to printable ASCII, tabs or line breaks. (The whole text may hold UTF-8
/// beyond ASCII: that is checked after decoding. Allowing it here would pass one
/// identifier in two.)
fn looks_like_text(chars: &[u8]) -> bool {
    let n = chars.len().min(PROBE) / 4;
    let groups = &chars[..n * 4];
    n >= 2
        && groups.iter().step_by(4).all(|&c| group_start(c))
        && groups.chunks_exact(4).all(|g| {
            let v = |i: usize| VALUE[g[i] as usize] as u32;
            let w = v(0) << 18 | v(1) << 12 | v(2) << 6 | v(3);
            [w >> 16, w >> 8 & 0xff, w & 0xff]
                .iter()
                .all(|&b| (0x20..0x7f).contains(&b) || matches!(b, 0x09 | 0x0a | 0x0d))
        })
}

/// Printable UTF-8 with tabs and line breaks.
fn is_text(t: &[u8]) -> bool {
    std::str::from_utf8(t).is_ok()
        && t.iter()
            .all(|&b| b >= 0x20 && b != 0x7f || matches!(b, b'\t' | b'\n' | b'\r'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose;

    fn decoded(run: &[u8]) -> Option<Vec<u8>> {
        text(run).map(|d| d.text)
    }

    #[test]
    fn runs_are_found_whole_and_only_when_long_enough() {
        let enc = general_purpose::STANDARD.encode("AWS_PROFILE=prod\nREGION=eu-west-1\n");
        let hay = format!("{{\"data\": \"{enc}\", \"short\": \"abcdefghijklmno\"}}");
        let r = runs(hay.as_bytes());
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(&hay[r[0].0..r[0].1], enc);
        // Exactly the minimum, at the very end, with padding.
        let enc = general_purpose::STANDARD.encode("0123456789ab");
        assert_eq!(enc.len(), MIN_RUN);
        let hay = format!("x {enc}");
        assert_eq!(runs(hay.as_bytes()), [(2, hay.len())]);
        assert!(runs(b"plain words, none of them sixteen long").is_empty());
        let enc = general_purpose::STANDARD.encode("0123456789abc");
        assert!(enc.ends_with("=="));
        assert_eq!(runs(enc.as_bytes()), [(0, enc.len())]);
        // Every byte value against both sets, at every place in a chunk.
        for b in 0..=255u8 {
            for k in 0..64 {
                let mut w = [b'+'; 64];
                w[k] = b;
                let a = if in_run(b) { u64::MAX } else { !(1u64 << k) };
                let g = u64::from(group_start(b)) << k;
                assert_eq!(masks(&w), (a, g), "byte {b:#x} at {k}");
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2.
                    assert_eq!(unsafe { masks_avx2(&w) }, (a, g), "byte {b:#x} at {k}");
                }
            }
        }
        // Identifiers and digests are not base64 of text.
        assert!(runs(b"__attribute_warn_unused_result__ ThisIsAVeryLongIdentifierName").is_empty());
        assert!(
            runs(b"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
                .is_empty()
        );
    }

    #[test]
    fn runs_match_a_byte_at_a_time_reading() {
        let reference = |hay: &[u8]| {
            let (mut out, mut i) = (Vec::new(), 0);
            while i < hay.len() {
                if !in_run(hay[i]) {
                    i += 1;
                    continue;
                }
                let s = i;
                while i < hay.len() && in_run(hay[i]) {
                    i += 1;
                }
                if i - s >= MIN_RUN && probe(&hay[s..i]) {
                    let e = whole(hay, s, i);
                    out.push((s, e));
                    i = e;
                }
            }
            out
        };
        let mut rng = crate::detect::samples::Rng::from_time();
        let pieces = ["\n", " ", "=", "\r\n", "_x-", "ThisIsAnIdentifier", "ab"];
        for _ in 0..2000 {
            let mut hay = String::new();
            while hay.len() < 300 {
                match rng.below(3) {
                    0 => hay += pieces[rng.below(pieces.len())],
                    1 => {
                        let len = 1 + rng.below(80);
                        let text = rng.string(b"abc XYZ=:\n0189", len);
                        hay += &general_purpose::STANDARD.encode(text);
                    }
                    _ => {
                        let len = rng.below(40);
                        hay += &rng.string(crate::detect::samples::ALNUM, len);
                    }
                }
            }
            assert_eq!(runs(hay.as_bytes()), reference(hay.as_bytes()), "{hay:?}");
        }
    }

    #[test]
    fn wrapped_lines_join_one_run_short_lines_do_not() {
        let body = general_purpose::STANDARD.encode([b'k'; 120]);
        let wrapped = format!("{}\r\n{}\n{}", &body[..64], &body[64..128], &body[128..]);
        let hay = format!("-----\n{wrapped}\n-----");
        let r = runs(hay.as_bytes());
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(
            decoded(&hay.as_bytes()[r[0].0..r[0].1]).unwrap(),
            [b'k'; 120]
        );
        // Two short lines are two runs.
        let line = general_purpose::STANDARD.encode("fifteen bytes!!");
        let r = runs(format!("{line}\n{line}").as_bytes());
        assert_eq!(r, [(0, 20), (21, 41)]);
    }

    #[test]
    fn text_is_decoded_with_its_offsets_and_binary_is_not() {
        let plain = "token = value-of-some-length\n";
        let enc = general_purpose::STANDARD.encode(plain);
        let d = text(enc.as_bytes()).unwrap();
        assert_eq!(d.text, plain.as_bytes());
        assert_eq!(d.at[..4], [0, 1, 2, 4]);
        // URL-safe, unpadded.
        let enc = general_purpose::URL_SAFE_NO_PAD.encode("a?b>c?d>e?f>g?h>i?j>");
        assert!(enc.contains('_') || enc.contains('-'), "{enc}");
        assert_eq!(decoded(enc.as_bytes()).unwrap(), b"a?b>c?d>e?f>g?h>i?j>");
        // Binary, identifiers and mixed alphabets are not text.
        let bin: Vec<u8> = (0..=255u8).collect();
        assert!(decoded(general_purpose::STANDARD.encode(&bin).as_bytes()).is_none());
        assert!(decoded(b"ThisIsAVeryLongIdentifierName").is_none());
        assert!(decoded(b"abc+def/ghi-jkl_mnopqrstu").is_none());
    }

    #[test]
    fn a_word_glued_before_the_value_shifts_the_start() {
        let plain = "PASSWORD=correct horse battery";
        for glue in ["", "x", "xy", "xyz"] {
            let run = format!("{glue}{}", general_purpose::STANDARD.encode(plain));
            let d = text(run.as_bytes()).unwrap_or_else(|| panic!("{run}"));
            assert_eq!(d.text, plain.as_bytes());
            assert_eq!(d.at[0] as usize, glue.len());
        }
    }
}
