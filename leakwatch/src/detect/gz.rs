//! gzip data: an HTTP body sent with `Content-Encoding: gzip` (SDKs and telemetry
//! exporters compress uploads), a `.gz` file written or scanned. `members` finds where
//! gzip members start and `inflate` decompresses one, bounded, for the engine to scan what
//! it holds; a member the data cuts yields what inflates so far.
use std::io::Read;

/// Bytes inflated per member at most: a 16 KiB capture can hold megabytes of text, and
/// the engine's time goes with what it scans.
pub const OUT_MAX: usize = 256 << 10;
/// Members inflated per scan at most.
const MEMBERS_MAX: usize = 4;
/// The smallest member: a 10-byte header, a deflate block, an 8-byte trailer.
const MEMBER_MIN: usize = 18;

/// Offsets of gzip member headers in `hay`: magic `1f 8b`, method 8 (deflate), and no
/// reserved flag bit.
pub fn members(hay: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    for at in memchr::memmem::find_iter(hay, b"\x1f\x8b\x08") {
        if hay.len() - at < MEMBER_MIN || hay[at + 3] & 0xe0 != 0 {
            continue;
        }
        out.push(at);
        if out.len() == MEMBERS_MAX {
            break;
        }
    }
    out
}

/// The member at the start of `data`, inflated (at most `OUT_MAX` bytes), and how many
/// bytes of `data` it took (all of them when it is cut or corrupt). None when nothing
/// inflates.
pub fn inflate(data: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut dec = flate2::bufread::GzDecoder::new(data);
    let mut out = Vec::new();
    // A cut or corrupt member still leaves what inflated before it in `out`.
    let whole = (&mut dec)
        .take(OUT_MAX as u64)
        .read_to_end(&mut out)
        .is_ok();
    if out.is_empty() {
        return None;
    }
    let used = if whole {
        data.len() - dec.into_inner().len()
    } else {
        data.len()
    };
    Some((out, used.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

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
        let (out, used) = inflate(&hay[at..]).unwrap();
        assert_eq!(out, b"first member text");
        assert_eq!(used, a.len());
        // Cut: what inflated so far, and all of the data.
        let cut = &hay[at2..at2 + b.len() - 12];
        let (out, used) = inflate(cut).unwrap();
        assert!(!out.is_empty() && b"second ".repeat(100).starts_with(&out));
        assert_eq!(used, cut.len());
    }

    #[test]
    fn output_is_bounded_and_noise_is_not_a_member() {
        let big = gzip(&vec![b'a'; OUT_MAX * 4]);
        assert_eq!(inflate(&big).unwrap().0.len(), OUT_MAX);
        let mut noise = b"\x1f\x8b\x08\xff".to_vec();
        noise.extend_from_slice(&[0u8; 40]);
        assert!(members(&noise).is_empty(), "reserved flag bits set");
        noise[3] = 0;
        assert_eq!(members(&noise), vec![0]);
        assert!(inflate(&noise).is_none());
    }
}
