//! HTTP/2 in TLS plaintext: header values are HPACK-coded (usually Huffman), so a key
//! in an `Authorization` header is not in the bytes `SSL_write` passed. A plaintext
//! stream that starts with the HTTP/2 client preface is followed frame by frame; each
//! complete header block (HEADERS + CONTINUATION) is decoded with the connection's HPACK
//! state and handed to the scanner as `name: value` lines, next to the raw bytes (DATA
//! payloads are already plain). A block that does not decode resets the state; what
//! follows is scanned raw only. Memory per connection is bounded.
use std::collections::HashMap;

/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 1;
const CONTINUATION: u8 = 9;
const END_HEADERS: u8 = 4;
const PADDED: u8 = 8;
const PRIORITY: u8 = 0x20;
/// Largest header block kept while its CONTINUATIONs come.
const BLOCK_MAX: usize = 64 << 10;
/// Connections followed at once.
const CONNS_MAX: usize = 1024;

/// One connection's parse state.
pub struct Conn {
    /// Bytes of an unfinished frame (header, or payload of a HEADERS/CONTINUATION frame).
    pending: Vec<u8>,
    /// Header block fragments waiting for END_HEADERS.
    block: Vec<u8>,
    /// Payload bytes of a frame we skip (DATA…) still to come.
    skip: usize,
    preface_seen: usize,
    hpack: hpack::Decoder<'static>,
    /// Not HTTP/2, or lost track: stop looking.
    off: bool,
}

impl Default for Conn {
    fn default() -> Self {
        Conn {
            pending: Vec::new(),
            block: Vec::new(),
            skip: 0,
            preface_seen: 0,
            hpack: hpack::Decoder::new(),
            off: false,
        }
    }
}

/// HTTP/2 state per (process, socket fd).
#[derive(Default)]
pub struct Conns(HashMap<(u32, i32), Conn>);

impl Conns {
    /// Feeds a plaintext chunk; returns the header lines of every block it completed.
    pub fn feed(&mut self, key: (u32, i32), data: &[u8]) -> Vec<u8> {
        if !self.0.contains_key(&key) {
            // Only a stream that starts with the preface is HTTP/2.
            if !data.starts_with(&PREFACE[..PREFACE.len().min(data.len())]) {
                return Vec::new();
            }
            if self.0.len() >= CONNS_MAX {
                self.0.clear();
            }
        }
        let c = self.0.entry(key).or_default();
        let out = c.feed(data);
        if c.off {
            self.0.remove(&key);
        }
        out
    }
}

impl Conn {
    fn feed(&mut self, mut data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if self.preface_seen < PREFACE.len() {
            let want = &PREFACE[self.preface_seen..];
            let n = want.len().min(data.len());
            if data[..n] != want[..n] {
                self.off = true;
                return out;
            }
            self.preface_seen += n;
            data = &data[n..];
        }
        while !data.is_empty() && !self.off {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            // Gather the 9-byte frame header.
            if self.pending.len() < 9 {
                let n = (9 - self.pending.len()).min(data.len());
                self.pending.extend_from_slice(&data[..n]);
                data = &data[n..];
                if self.pending.len() < 9 {
                    break;
                }
            }
            let h = &self.pending[..9];
            let len = (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize;
            let (kind, flags) = (h[3], h[4]);
            if kind != HEADERS && kind != CONTINUATION {
                self.pending.clear();
                self.skip = len;
                continue;
            }
            if len > BLOCK_MAX {
                self.off = true;
                break;
            }
            let have = self.pending.len() - 9;
            let n = (len - have).min(data.len());
            self.pending.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.pending.len() - 9 < len {
                break;
            }
            let payload = fragment(kind, flags, &self.pending[9..]);
            match payload {
                Some(p) if self.block.len() + p.len() <= BLOCK_MAX => {
                    self.block.extend_from_slice(p)
                }
                _ => {
                    self.off = true;
                    break;
                }
            }
            self.pending.clear();
            if flags & END_HEADERS != 0 {
                let block = std::mem::take(&mut self.block);
                match decode(&mut self.hpack, &block) {
                    Some(lines) => out.extend(lines),
                    None => self.hpack = hpack::Decoder::new(),
                }
            }
        }
        out
    }
}

/// The header block fragment of a HEADERS (padding and priority removed) or
/// CONTINUATION frame payload.
fn fragment(kind: u8, flags: u8, p: &[u8]) -> Option<&[u8]> {
    if kind == CONTINUATION {
        return Some(p);
    }
    let mut p = p;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        pad = *p.first()? as usize;
        p = &p[1..];
    }
    if flags & PRIORITY != 0 {
        p = p.get(5..)?;
    }
    p.get(..p.len().checked_sub(pad)?)
}

/// `name: value\n` for every field of a block; None when it does not decode. The
/// decoder is an old crate: a panic in it must not take the daemon down.
fn decode(d: &mut hpack::Decoder<'static>, block: &[u8]) -> Option<Vec<u8>> {
    let fields = crate::panics::contained(|| d.decode(block))?.ok()?;
    let mut out = Vec::new();
    for (n, v) in fields {
        out.extend_from_slice(&n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(&v);
        out.push(b'\n');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let l = payload.len();
        let mut f = vec![
            (l >> 16) as u8,
            (l >> 8) as u8,
            l as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(payload);
        f
    }

    /// A literal field without indexing, new name, raw (not Huffman) strings.
    fn literal(name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut b = vec![0x00, name.len() as u8];
        b.extend_from_slice(name);
        b.push(value.len() as u8);
        b.extend_from_slice(value);
        b
    }

    #[test]
    fn header_blocks_across_frames_and_chunks_decode() {
        let settings = frame(4, 0, &[0, 3, 0, 0, 0, 100]);
        let block = literal(b"authorization", b"Bearer abc123");
        let (a, b) = block.split_at(5);
        let mut wire = PREFACE.to_vec();
        wire.extend(settings);
        wire.extend(frame(HEADERS, 0, a));
        wire.extend(frame(CONTINUATION, END_HEADERS, b));
        wire.extend(frame(0, 1, b"{\"x\": 1}"));
        let mut conns = Conns::default();
        let mut got = Vec::new();
        // Fed in 7-byte chunks: frame headers and payloads split anywhere.
        for chunk in wire.chunks(7) {
            got.extend(conns.feed((1, 3), chunk));
        }
        assert_eq!(got, b"authorization: Bearer abc123\n");
    }

    #[test]
    fn huffman_coded_values_decode() {
        // "www.example.com" Huffman-coded (RFC 7541 C.4.1), as :authority (index 1).
        let mut block = vec![0x41, 0x8c];
        block.extend([
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ]);
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(HEADERS, END_HEADERS, &block));
        let got = Conns::default().feed((1, 3), &wire);
        assert_eq!(got, b":authority: www.example.com\n");
    }

    #[test]
    fn not_http2_is_left_alone() {
        let mut conns = Conns::default();
        assert!(conns.feed((1, 3), b"POST / HTTP/1.1\r\n").is_empty());
        assert!(conns.0.is_empty());
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(
            HEADERS,
            END_HEADERS,
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ));
        assert!(conns.feed((1, 4), &wire).is_empty(), "garbage block");
    }
}
