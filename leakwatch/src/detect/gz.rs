//! gzip data: an HTTP body sent with `Content-Encoding: gzip` (SDKs and telemetry
//! exporters compress uploads), a `.gz` file written. `members` finds where
//! gzip members start and `inflate` decompresses one, bounded, for the engine to scan what
//! it holds; a member the data cuts yields what inflates so far.
use std::io::Read;

/// Bytes inflated per scan at most, over all members: a small capture can hold megabytes of
/// text, and the engine's time goes with what it scans.
pub const OUT_MAX: usize = 256 << 10;
/// Members inflated per scan at most.
const MEMBERS_MAX: usize = 4;
/// The smallest member: a 10-byte header, a deflate block, an 8-byte trailer.
const MEMBER_MIN: usize = 18;
/// Output between two position marks.
const MARK: usize = 1024;

/// Offsets of gzip member headers in `hay`: magic `1f 8b`, method 8 (deflate), and no
/// reserved flag bit.
pub fn members(hay: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    // 0x1f is rare in text and a byte search needs no searcher built per call (which
    // `memmem` does, and which cost more than the search on the daemon's small writes).
    for at in memchr::memchr_iter(0x1f, hay) {
        if hay.len() - at < MEMBER_MIN
            || hay[at + 1..at + 3] != *b"\x8b\x08"
            || hay[at + 3] & 0xe0 != 0
        {
            continue;
        }
        out.push(at);
        if out.len() == MEMBERS_MAX {
            break;
        }
    }
    out
}

/// What one scan of `len` bytes may inflate in all: 32 times its size (text compresses 3
/// to 10 times; a deflate bomb 1,000), at least 64 KiB, at most `OUT_MAX`.
pub fn budget(len: usize) -> usize {
    len.saturating_mul(32).clamp(64 << 10, OUT_MAX)
}

/// A member inflated.
pub struct Inflated {
    pub text: Vec<u8>,
    /// Bytes of the compressed data it took (all of them when it was cut or corrupt).
    pub used: usize,
    /// (output so far, input consumed then), every `MARK` bytes of output: the same for
    /// the same compressed prefix, so a place derived from them does not move when a cut
    /// member is inflated again with more data.
    marks: Vec<(usize, usize)>,
}

impl Inflated {
    /// The offset in the compressed data where output byte `out` came from (about).
    pub fn at(&self, out: usize) -> usize {
        let i = self.marks.partition_point(|&(o, _)| o <= out);
        let input = self.marks.get(i).map_or(self.used, |m| m.1);
        input.min(self.used.saturating_sub(1))
    }
}

impl Drop for Inflated {
    fn drop(&mut self) {
        crate::wipe::vec(&mut self.text);
    }
}

/// The member at the start of `data`, inflated (at most `cap` bytes, into a buffer sized
/// once, so no copy of the text is freed unwiped), or None when nothing inflates.
pub fn inflate(data: &[u8], cap: usize) -> Option<Inflated> {
    let mut dec = flate2::bufread::GzDecoder::new(data);
    let mut z = Inflated {
        text: vec![0; cap],
        used: data.len(),
        marks: Vec::new(),
    };
    let (mut n, mut failed) = (0, false);
    while n < cap {
        let end = (n + MARK).min(cap);
        match dec.read(&mut z.text[n..end]) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                z.marks.push((n, data.len() - dec.get_ref().len()));
            }
            // Cut or corrupt: what inflated before stays.
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    // A cut or corrupt member takes all of `data` (`used` as set above).
    if !failed {
        z.used = (data.len() - dec.get_ref().len()).max(1);
    }
    z.text[n..].fill(0);
    z.text.truncate(n);
    (n > 0).then_some(z)
}

/// `b` as one gzip member (for tests).
#[cfg(test)]
pub fn gzip(b: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_inflates_members_whole_and_cut() {
        let a = gzip(b"first member text");
        let b = gzip(&b"second ".repeat(100));
        let mut hay = b"POST / HTTP/1.1\r\n\r\n".to_vec();
        let at = hay.len();
        hay.extend_from_slice(&a);
        let at2 = hay.len();
        hay.extend_from_slice(&b);
        assert_eq!(members(&hay), vec![at, at2]);
        let z = inflate(&hay[at..], OUT_MAX).unwrap();
        assert_eq!(z.text, b"first member text");
        assert_eq!(z.used, a.len());
        // Cut: what inflated so far, and all of the data.
        let cut = &hay[at2..at2 + b.len() - 12];
        let z = inflate(cut, OUT_MAX).unwrap();
        assert!(!z.text.is_empty() && b"second ".repeat(100).starts_with(&z.text));
        assert_eq!(z.used, cut.len());
    }

    #[test]
    fn output_is_bounded_and_noise_is_not_a_member() {
        let big = gzip(&vec![b'a'; OUT_MAX * 4]);
        assert_eq!(inflate(&big, OUT_MAX).unwrap().text.len(), OUT_MAX);
        assert_eq!(inflate(&big, 1000).unwrap().text.len(), 1000);
        assert_eq!(budget(1), 64 << 10);
        assert_eq!(budget(1 << 30), OUT_MAX);
        let mut noise = b"\x1f\x8b\x08\xff".to_vec();
        noise.extend_from_slice(&[0u8; 40]);
        assert!(members(&noise).is_empty(), "reserved flag bits set");
        noise[3] = 0;
        assert_eq!(members(&noise), vec![0]);
        assert!(inflate(&noise, OUT_MAX).is_none());
    }
}
