//! Streaming scan: feed chunks as they are written, keep a bounded tail, so a secret cut
//! across two writes is still found once. Findings touching the end of the data seen so far
//! are held back until more data (or `finish`) shows where they end.
use super::{Engine, Finding};

pub struct StreamScanner<'e> {
    engine: &'e Engine,
    buf: Vec<u8>,
    /// Absolute offset of `buf[0]` in the stream.
    base: u64,
    tail: usize,
    /// 1-based line number of `buf[0]`.
    base_line: usize,
    /// Absolute (start, end) of findings already reported that may still be in `buf`.
    reported: Vec<(u64, u64)>,
}

/// A finding with its offsets in the whole stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamFinding {
    pub finding: Finding,
    pub offset: u64,
    /// 1-based line in the whole stream.
    pub line: usize,
}

impl<'e> StreamScanner<'e> {
    pub fn new(engine: &'e Engine) -> StreamScanner<'e> {
        let tail = engine.max_span().max(4096);
        StreamScanner {
            engine,
            buf: Vec::new(),
            base: 0,
            tail,
            base_line: 1,
            reported: Vec::new(),
        }
    }

    /// Scans `chunk` together with the retained tail of earlier chunks.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<StreamFinding> {
        self.buf.extend_from_slice(chunk);
        let out = self.scan(false);
        if self.buf.len() > self.tail {
            let cut = self.buf.len() - self.tail;
            self.base_line += self.buf[..cut].iter().filter(|&&b| b == b'\n').count();
            self.buf.drain(..cut);
            self.base += cut as u64;
            let base = self.base;
            self.reported.retain(|&(_, e)| e > base);
        }
        out
    }

    /// End of stream: reports what was held back.
    pub fn finish(&mut self) -> Vec<StreamFinding> {
        self.scan(true)
    }

    fn scan(&mut self, last: bool) -> Vec<StreamFinding> {
        let mut out = Vec::new();
        for f in self.engine.scan(&self.buf) {
            if !last && f.end == self.buf.len() {
                continue;
            }
            let abs = (self.base + f.start as u64, self.base + f.end as u64);
            if self.reported.contains(&abs) {
                continue;
            }
            self.reported.push(abs);
            let line = self.base_line + f.line - 1;
            out.push(StreamFinding {
                offset: abs.0,
                line,
                finding: f,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::samples::{sample, Rng};

    #[test]
    fn secret_split_across_writes_is_found_once() {
        let engine = Engine::builtin();
        let mut rng = Rng::from_time();
        let (secret, text) = sample("anthropic-api-key", &mut rng).unwrap();
        let line = format!("log: calling api with key={text} ok\n");
        let mut s = StreamScanner::new(&engine);
        let mut found = Vec::new();
        // 3000 lines first, so the secret's line is counted across drained chunks.
        let filler =
            "x = 1  # nothing to see here, just a long enough line of filler\n".repeat(3000);
        for piece in filler.as_bytes().chunks(4096) {
            found.extend(s.feed(piece));
        }
        let b = line.as_bytes();
        // Tiny writes, like a JVM error log: the secret spans many chunks.
        for piece in b.chunks(7) {
            found.extend(s.feed(piece));
        }
        for _ in 0..3 {
            found.extend(s.feed(b"filler line without secrets\n"));
        }
        found.extend(s.finish());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].finding.fingerprint,
            crate::detect::fingerprint(secret.as_bytes())
        );
        assert_eq!(
            found[0].offset as usize,
            filler.len() + line.find(&secret).unwrap()
        );
        assert_eq!(found[0].line, 3001);
    }
}
