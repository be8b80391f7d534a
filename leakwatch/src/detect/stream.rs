//! Streaming scan: feed chunks as they are written, so a secret cut across two writes is
//! still found once. Each chunk is scanned with only the context it can need: the bytes a
//! keyword window ending in it may start at, the keyword windows earlier chunks left open
//! (a PEM block's keyword may be 32 KiB back) and, with frozen credentials, their length.
//! So a stream of small writes costs about its own bytes, not the tail's, per write. Rule
//! findings touching the end of the data seen so far are held back until more data (or
//! `finish`) shows where they end; frozen credentials have a known length and are reported
//! at once. The scanner holds no engine (a table of them can live beside it); the retained
//! plaintext is zeroized.
use zeroize::Zeroize;

use super::{detector::Detector, Engine, Finding};

pub struct StreamScanner {
    buf: Vec<u8>,
    /// Absolute offset of `buf[0]` in the stream.
    base: u64,
    /// Most bytes kept: the longest window any rule can have.
    tail: usize,
    /// Context always kept before new data.
    before: usize,
    /// 1-based line number of `buf[0]`.
    base_line: usize,
    /// Absolute (start, reach) of keyword windows still open at the end of the data.
    open: Vec<(u64, u64)>,
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

impl StreamScanner {
    pub fn new(engine: &Engine) -> StreamScanner {
        StreamScanner {
            buf: Vec::new(),
            base: 0,
            tail: engine.max_span().max(4096),
            before: engine.context_before(),
            base_line: 1,
            open: Vec::new(),
            reported: Vec::new(),
        }
    }

    /// Bytes fed so far.
    pub fn position(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    /// Plaintext bytes held.
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    /// Scans `chunk` with the context it needs from earlier chunks.
    pub fn feed(&mut self, d: &Detector, chunk: &[u8]) -> Vec<StreamFinding> {
        // From the engine of this feed: a stream can outlive a reload that brings longer
        // rules (it kept the sizes of the engine it was made under).
        self.tail = d.engine.max_span().max(4096);
        self.before = d.engine.context_before();
        let new_start = self.buf.len();
        crate::wipe::extend(&mut self.buf, chunk);
        let out = self.scan(d, new_start, false);
        self.trim(d);
        out
    }

    /// End of stream (or a pause): reports what was held back.
    pub fn finish(&mut self, d: &Detector) -> Vec<StreamFinding> {
        let len = self.buf.len();
        self.scan(d, len, true)
    }

    /// Scans from the earliest byte a finding reaching `new_start` or later may start at;
    /// keeps only findings that end there or later (earlier ones were reported before).
    fn scan(&mut self, d: &Detector, new_start: usize, last: bool) -> Vec<StreamFinding> {
        let abs_new = self.base + new_start as u64;
        self.open.retain(|&(_, reach)| reach > abs_new);
        let mut from = new_start.saturating_sub(self.before.max(d.frozen_reach()));
        for &(s, _) in &self.open {
            from = from.min(s.saturating_sub(self.base) as usize);
        }
        if last {
            // Held-back findings end at the end: their windows are open, or `from` is 0.
            from = from.min(new_start.saturating_sub(self.tail));
        }
        let mut opened = Vec::new();
        let found = d.scan_open(&self.buf[from..], &mut opened);
        let abs_from = self.base + from as u64;
        for (s, r) in opened {
            let w = (abs_from + s as u64, abs_from + r as u64);
            if !self.open.contains(&w) {
                self.open.push(w);
            }
        }
        let mut out = Vec::new();
        let mut lines: Option<usize> = None;
        for f in found {
            let end = from + f.end;
            if end < new_start && !last {
                continue;
            }
            // Only what follows shows where an unquoted value ends (`KEY=abc…` then `(`,
            // or trailing `.` that a longer value would keep): hold it back while every
            // byte after it could still be part of it.
            if !last && !d.is_frozen(&f) && self.buf[end..].iter().all(|&b| may_continue(b)) {
                continue;
            }
            let abs = (abs_from + f.start as u64, abs_from + f.end as u64);
            if self.reported.contains(&abs) {
                continue;
            }
            self.reported.push(abs);
            let before =
                *lines.get_or_insert_with(|| memchr::memchr_iter(b'\n', &self.buf[..from]).count());
            out.push(StreamFinding {
                offset: abs.0,
                line: self.base_line + before + f.line - 1,
                finding: f,
            });
        }
        out
    }

    /// Drops what no later scan can need: everything before the open windows and the
    /// context kept before new data.
    fn trim(&mut self, d: &Detector) {
        let keep_from_end = self.before.max(d.frozen_reach()).max(4096);
        let mut cut = self.buf.len().saturating_sub(keep_from_end);
        for &(s, _) in &self.open {
            cut = cut.min(s.saturating_sub(self.base) as usize);
        }
        cut = cut.max(self.buf.len().saturating_sub(self.tail));
        // Drain in steps, not per write: moving the kept bytes costs as much as scanning them.
        if cut < 8192 && self.buf.len() <= self.tail {
            return;
        }
        self.base_line += memchr::memchr_iter(b'\n', &self.buf[..cut]).count();
        self.buf[..cut].zeroize();
        self.buf.drain(..cut);
        self.base += cut as u64;
        let base = self.base;
        self.reported.retain(|&(_, e)| e > base);
    }
}

impl Drop for StreamScanner {
    fn drop(&mut self) {
        crate::wipe::vec(&mut self.buf);
    }
}

/// Can this byte continue an unquoted value (or be trailing punctuation trimmed off one)?
fn may_continue(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_+/~!@#$%^&*().=?-,;:]}[{|".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::samples::{sample, Rng};

    #[test]
    fn secret_split_across_writes_is_found_once() {
        let engine = Engine::builtin();
        let d = Detector::new(&engine, None);
        let mut rng = Rng::from_time();
        let (secret, text) = sample("anthropic-api-key", &mut rng).unwrap();
        let line = format!("log: calling api with key={text} ok\n");
        let mut s = StreamScanner::new(&engine);
        let mut found = Vec::new();
        // 3000 lines first, so the secret's line is counted across drained chunks.
        let filler =
            "x = 1  # nothing to see here, just a long enough line of filler\n".repeat(3000);
        for piece in filler.as_bytes().chunks(4096) {
            found.extend(s.feed(&d, piece));
        }
        let b = line.as_bytes();
        // Tiny writes, like a JVM error log: the secret spans many chunks.
        for piece in b.chunks(7) {
            found.extend(s.feed(&d, piece));
        }
        for _ in 0..3 {
            found.extend(s.feed(&d, b"filler line without secrets\n"));
        }
        found.extend(s.finish(&d));
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
        assert!(s.held() <= s.tail);
    }

    /// A stream made under one engine and fed under a reloaded one with a longer rule
    /// keeps what the new rule needs: the sizes come from the engine of each feed.
    #[test]
    fn a_stream_from_before_a_reload_keeps_what_the_new_rules_need() {
        let engine = |extra: &str| {
            crate::detect::tests::engine_of(&format!(
                "[[rule]]\nid = \"short\"\nkeywords = [\"lwshort_\"]\nregex = '(?P<secret>lwshort_[a-z0-9]{{20}})'\n{extra}"
            ))
            .unwrap()
        };
        let before = engine("");
        let after = engine(
            "[[rule]]\nid = \"long\"\nkeywords = [\"lwlong_\"]\nregex = '(?P<secret>lwlong_[a-z0-9]{9000})'\nspan = 10000\n",
        );
        assert!(before.max_span().max(4096) < 9000 && after.max_span() > 9100);
        let mut rng = Rng::from_time();
        let token = format!(
            "lwlong_{}",
            rng.string(b"abcdefghijklmnopqrstuvwxyz0123456789", 9000)
        );
        let mut s = StreamScanner::new(&before);
        let d = Detector::new(&after, None);
        let mut found = Vec::new();
        for piece in format!("key {token}\n").as_bytes().chunks(2000) {
            found.extend(s.feed(&d, piece));
        }
        found.extend(s.finish(&d));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].finding.rule, "long");
    }

    #[test]
    fn a_pem_block_written_in_small_pieces_is_found() {
        let engine = Engine::builtin();
        let d = Detector::new(&engine, None);
        let mut rng = Rng::from_time();
        let (secret, text) = sample("private-key", &mut rng).unwrap();
        let mut s = StreamScanner::new(&engine);
        let mut found = Vec::new();
        let body = format!("{}\nkey:\n{text}\ntrailer\n", "filler line\n".repeat(500));
        for piece in body.as_bytes().chunks(64) {
            found.extend(s.feed(&d, piece));
        }
        // Found while feeding (the block ended before the data did), not only at the end.
        assert!(s.finish(&d).is_empty());
        let fp = crate::detect::fingerprint(secret.as_bytes());
        assert_eq!(
            found.iter().filter(|f| f.finding.fingerprint == fp).count(),
            1,
            "{found:?}"
        );
        // Small writes do not keep the whole tail: only the context after the block closed.
        assert!(s.held() < 16 << 10, "held {}", s.held());
    }

    #[test]
    fn same_findings_as_one_scan_whatever_the_chunking() {
        let engine = Engine::builtin();
        let d = Detector::new(&engine, None);
        let mut rng = Rng::from_time();
        let mut text = String::new();
        let mut secrets = Vec::new();
        for rule in [
            "github-pat",
            "anthropic-api-key",
            "generic-secret",
            "jwt",
            "slack-webhook-url",
        ] {
            let (secret, t) = sample(rule, &mut rng).unwrap();
            text.push_str(&format!(
                "{} line {t} end\n",
                rng.string(crate::detect::samples::ALNUM, 30)
            ));
            secrets.push(secret);
        }
        let whole: Vec<String> = engine
            .scan(text.as_bytes())
            .into_iter()
            .map(|f| f.fingerprint)
            .collect();
        for size in [1, 3, 17, 100, 4096] {
            let mut s = StreamScanner::new(&engine);
            let mut got = Vec::new();
            for piece in text.as_bytes().chunks(size) {
                got.extend(s.feed(&d, piece).into_iter().map(|f| f.finding.fingerprint));
            }
            assert_eq!(got, whole, "chunks of {size}");
            assert!(s.finish(&d).is_empty(), "chunks of {size}");
        }
        assert!(whole.len() >= secrets.len(), "{whole:?}");
    }

    #[test]
    fn a_secret_at_the_very_end_waits_for_finish() {
        let engine = Engine::builtin();
        let d = Detector::new(&engine, None);
        let (secret, _) = sample("github-pat", &mut Rng::from_time()).unwrap();
        let mut s = StreamScanner::new(&engine);
        assert!(s.feed(&d, format!("token {secret}").as_bytes()).is_empty());
        let f = s.finish(&d);
        assert_eq!(f.len(), 1);
        assert_eq!(
            f[0].finding.fingerprint,
            crate::detect::fingerprint(secret.as_bytes())
        );
        // Reported once: a second finish finds nothing new.
        assert!(s.finish(&d).is_empty());
    }
}
