//! The scanning engine: keyword prefilter, windowed regex confirmation, checks, dedup.
use anyhow::{anyhow, Context, Result};
use regex::bytes::Regex;

use super::keywords::Keywords;
use super::redact::{fingerprint, redact};
use super::rules::{RuleSet, RuleSpec};
use super::validate;

/// Bytes before a keyword hit that a rule's regex may start at (names of assignments).
const BACK: usize = 128;
/// How far from an escape the percent pass looks (most rules' `span`).
const NEAR: usize = 512;
/// Bytes after a base64 run scanned with its decoded text (where a value ends).
const BASE64_AFTER: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Validator {
    None,
    GithubCrc32,
    Jwt,
    Generic,
    /// A password placed by a tool's syntax (netrc, `curl -u`, `mysql -p`).
    Password,
    /// A random body behind a prefix identifiers share too (`aio_`, `cio`).
    NotWords,
}

struct Rule {
    id: String,
    description: String,
    regex: Regex,
    /// Capture groups that may hold the secret (`secret`, `secret2`…): the first that
    /// took part in a match is the secret.
    groups: Vec<usize>,
    /// The `name` group (what the value is assigned to), for validators that judge by it.
    name_group: Option<usize>,
    /// The `secret_bare*` groups: unquoted values, whose trailing sentence punctuation and
    /// unbalanced closing brackets are not part of them.
    bare: Vec<usize>,
    entropy: f64,
    validator: Validator,
    span: usize,
    /// May the match cross lines? Single-line rules look only at the hit's line.
    multiline: bool,
    /// One of these bytes must follow the keyword in the window (empty: no check).
    after: Vec<u8>,
    allow: Vec<Regex>,
    /// Matches public-by-design values: never reported; vetoes generic findings.
    public: bool,
    /// A shape, not a vendor: loses every overlap with a vendor finding.
    generic: bool,
    /// The match is `base64(USER:PASSWORD)`: the credential inside is reported.
    decode: bool,
}

/// What a decoding rule's match holds.
enum Inside {
    /// A credential: its rule id, fingerprint and preview.
    Found(Reported),
    /// A login whose password the checks refuse (a placeholder).
    Refused,
    /// Not `base64(USER:PASSWORD)`.
    NotLogin,
}

/// (rule id, fingerprint, preview) of the credential inside a decoding rule's match.
type Reported = (String, String, String);

/// What a scan of some bytes may still decode.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Bytes as written: logins and percent-encoding.
    Raw,
    /// A percent-decoded view: logins.
    Percent,
    /// Base64-decoded text with the words around it: logins.
    Base64,
    /// What a gzip member inflates to: as `Raw`, without gzip again.
    Gzip,
    /// The text inside a login: nothing more.
    Login,
}

/// What the checks make of a candidate.
enum Verdict {
    /// A credential: its length (the generic rule trims trailing punctuation).
    Report(usize),
    /// Not a credential.
    Drop,
    /// Not a credential, and a vendor rule says so (wrong checksum, documented example):
    /// no generic rule may report these bytes either.
    Veto,
}

/// A compiled rule set. Cheap to share (`&Engine` is `Sync`).
pub struct Engine {
    rules: Vec<Rule>,
    keywords: Keywords,
    /// Keyword pattern index -> rules that use it.
    keyword_rules: Vec<Vec<usize>>,
    /// Bytes of the longest keyword.
    max_keyword: usize,
    /// The longest window any rule can have (`max_span`), computed once: every stream
    /// feed reads it.
    max_span: usize,
    /// Which compile this is: never the same for two engines in one process (an address
    /// can be, once the older engine is freed).
    id: u64,
}

/// One credential found in a byte slice. Holds no plaintext: offsets into the scanned
/// bytes, the fingerprint and a redacted preview.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub rule: String,
    /// Secret byte span in the scanned input.
    pub start: usize,
    pub end: usize,
    /// 1-based line of `start`.
    pub line: usize,
    pub fingerprint: String,
    pub redacted: String,
}

impl Engine {
    /// The built-in rules.
    pub fn builtin() -> Engine {
        Engine::new(&RuleSet::builtin()).expect("built-in rules compile")
    }

    /// Compiles the set: its regexes on every core, its keyword prefilter beside them
    /// (together most of a daemon's or a `scan`'s start). The error, if any, is the first
    /// rule's in order that fails, as one after another.
    pub fn new(set: &RuleSet) -> Result<Engine> {
        let mut patterns: Vec<String> = Vec::new();
        let mut keyword_rules: Vec<Vec<usize>> = Vec::new();
        for (i, spec) in set.rules.iter().enumerate() {
            for k in &spec.keywords {
                let k = k.to_ascii_lowercase();
                match patterns.iter().position(|p| *p == k) {
                    Some(j) => keyword_rules[j].push(i),
                    None => {
                        patterns.push(k);
                        keyword_rules.push(vec![i]);
                    }
                }
            }
        }
        let (rules, keywords) = std::thread::scope(|s| {
            // No thread to be had (a process or thread limit): built here, after the rules.
            let keywords = std::thread::Builder::new()
                .spawn_scoped(s, || Keywords::new(&patterns))
                .ok();
            let rules = compile_all(&set.rules);
            let keywords = match keywords {
                Some(k) => k
                    .join()
                    .map_err(|_| anyhow!("the keyword prefilter's builder panicked"))?,
                None => Keywords::new(&patterns),
            };
            Ok::<_, anyhow::Error>((rules?, keywords))
        })?;
        let keywords = keywords.context("building the keyword prefilter")?;
        let max_span = rules.iter().map(|r| r.span + BACK).max().unwrap_or(0);
        Ok(Engine {
            rules,
            keywords,
            keyword_rules,
            max_keyword: patterns.iter().map(|p| p.len()).max().unwrap_or(0),
            max_span,
            id: {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
        })
    }

    /// This engine's compile, told apart from every other in the process (caches of
    /// what was scanned clean are valid under one engine only).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The keyword prefilter's hits on both of its paths (SIMD and portable); they must be
    /// equal. For the fuzz target, not for use.
    #[doc(hidden)]
    pub fn keyword_paths(&self, hay: &[u8]) -> [Vec<(usize, usize, usize)>; 2] {
        self.keywords.both_paths(hay)
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// (id, description) of every rule, in priority order.
    pub fn rules(&self) -> impl Iterator<Item = (&str, &str)> {
        self.rules
            .iter()
            .map(|r| (r.id.as_str(), r.description.as_str()))
    }

    /// Longest reach of any rule: how much context a streaming scanner must keep.
    pub fn max_span(&self) -> usize {
        self.max_span
    }

    /// Bytes before new data that a window reaching into it may start at, when its
    /// keyword ends in the new data: the longest keyword plus the context before it.
    pub fn context_before(&self) -> usize {
        BACK + self.max_keyword
    }

    /// Every credential in `hay`, ordered by position, overlapping findings resolved in
    /// favour of the longer one (then the earlier rule).
    pub fn scan(&self, hay: &[u8]) -> Vec<Finding> {
        self.scan_inner(hay, None, Pass::Raw)
    }

    /// `scan`, also pushing to `open` the (start, reach) of every keyword window that the
    /// end of `hay` cut short: more bytes appended later may complete a credential there,
    /// so a stream scanner must rescan from `start` until its data passes `reach`.
    pub fn scan_open(&self, hay: &[u8], open: &mut Vec<(usize, usize)>) -> Vec<Finding> {
        self.scan_inner(hay, Some(open), Pass::Raw)
    }

    /// `pass`: which decodings are still to try in `hay` (none inside a decoded login).
    fn scan_inner(
        &self,
        hay: &[u8],
        mut open: Option<&mut Vec<(usize, usize)>>,
        pass: Pass,
    ) -> Vec<Finding> {
        let mut windows: Vec<(usize, usize, usize)> = Vec::new();
        self.keywords.each(hay, |pattern, ks, ke| {
            for &r in &self.keyword_rules[pattern] {
                if pass == Pass::Login && self.rules[r].decode {
                    continue;
                }
                let mut start = ks.saturating_sub(BACK);
                let reach = ke + self.rules[r].span;
                let mut end = reach.min(hay.len());
                let mut closed = false;
                if !self.rules[r].multiline {
                    // Most credentials sit on one line: keep the regex on the hit's line.
                    if let Some(nl) = memchr::memrchr(b'\n', &hay[start..ks]) {
                        start += nl + 1;
                    }
                    if let Some(nl) = memchr::memchr(b'\n', &hay[ke..end]) {
                        end = ke + nl;
                        closed = true;
                    }
                }
                if let Some(o) = open.as_deref_mut() {
                    if !closed && reach > hay.len() {
                        o.push((start, reach));
                    }
                }
                if !follows(&self.rules[r].after, &hay[ke..end]) {
                    continue;
                }
                windows.push((r, start, end));
            }
        });
        // Percent-encoded, base64 and gzip data may hide their keywords: they are decoded
        // below.
        let raw = matches!(pass, Pass::Raw | Pass::Gzip);
        let runs = if raw {
            super::b64::runs(hay)
        } else {
            Vec::new()
        };
        let members = if pass == Pass::Raw {
            super::gz::members(hay)
        } else {
            Vec::new()
        };
        if windows.is_empty()
            && runs.is_empty()
            && members.is_empty()
            && (!raw || memchr::memchr(b'%', hay).is_none())
        {
            return Vec::new();
        }
        windows.sort_unstable();
        // (start, end, rule)
        let mut found: Vec<(usize, usize, usize)> = Vec::new();
        // What decoded matches hold, by span: logins judged once in `confirm`, and
        // percent-encoded credentials.
        let mut decoded: Vec<((usize, usize), Reported)> = Vec::new();
        let mut vetoes: Vec<(usize, usize)> = Vec::new();
        let mut i = 0;
        // The windows escaped breaks may change, kept only where there can be one.
        let escaped = raw && memchr::memchr(b'\\', hay).is_some();
        let mut merged = Vec::new();
        while i < windows.len() {
            let (r, s, mut e) = windows[i];
            i += 1;
            while i < windows.len() && windows[i].0 == r && windows[i].1 <= e {
                e = e.max(windows[i].2);
                i += 1;
            }
            self.confirm(r, hay, (s, e), &mut found, &mut vetoes, &mut decoded);
            if escaped {
                merged.push((r, s, e));
            }
        }
        if raw {
            self.escaped_breaks(hay, &merged, &mut found, &mut vetoes, &mut decoded);
            self.percent_encoded(hay, &mut found, &mut decoded);
            self.base64_encoded(hay, &runs, &mut found, &mut decoded, open.as_deref_mut());
        }
        self.gzip_encoded(hay, &members, &mut found, &mut decoded, open);
        self.resolve(&mut found, &vetoes);
        let mut line = 1;
        let mut pos = 0;
        found
            .into_iter()
            .filter_map(|(s, e, r)| {
                line += hay[pos..s].iter().filter(|&&b| b == b'\n').count();
                pos = s;
                let known = decoded.iter().position(|(span, _)| *span == (s, e));
                let (rule, fingerprint, redacted) = if let Some(i) = known {
                    decoded.swap_remove(i).1
                } else if self.rules[r].decode {
                    return None;
                } else {
                    (
                        self.rules[r].id.clone(),
                        fingerprint(&hay[s..e]),
                        redact(&hay[s..e]),
                    )
                };
                Some(Finding {
                    rule,
                    start: s,
                    end: e,
                    line,
                    fingerprint,
                    redacted,
                })
            })
            .collect()
    }

    /// Credentials on a line whose breaks are escaped (`\n` inside a JSON string): each
    /// keyword window (`windows`: rule, start, end) that holds such an escape is confirmed
    /// again in a view of `hay` with the escapes made real breaks, which has the same
    /// offsets (`decode::broken`). Only those windows: source code is full of `"\n"`, and
    /// scanning everything twice would halve the speed. A raw finding that runs across an
    /// escape (a value read on past `\n`) gives way to the view's finding it overlaps; one
    /// the raw bytes gave without crossing any stays. `windows` is empty when `hay` holds
    /// no backslash. Linear in findings: a megabyte JSON
    /// line with tens of thousands of them must not stall the pipeline.
    fn escaped_breaks(
        &self,
        hay: &[u8],
        windows: &[(usize, usize, usize)],
        found: &mut Vec<(usize, usize, usize)>,
        vetoes: &mut Vec<(usize, usize)>,
        decoded: &mut Vec<((usize, usize), Reported)>,
    ) {
        if windows.is_empty() {
            return;
        }
        let mut spans: Vec<(usize, usize)> = windows
            .iter()
            .map(|&(_, s, e)| (s.saturating_sub(1), e))
            .collect();
        spans.sort_unstable();
        let at = super::decode::breaks_near(hay, &spans);
        if at.is_empty() {
            return;
        }
        // Does [s, e) hold an escape's byte (its backslash or its letter)?
        let crosses = |s: usize, e: usize| {
            let k = at.partition_point(|&p| p + 1 < s);
            at.get(k).is_some_and(|&p| p < e)
        };
        let mut view: Option<Vec<u8>> = None;
        let mut seen = Vec::new();
        let mut seen_decoded = Vec::new();
        for &(r, s, e) in windows {
            if !crosses(s, e) {
                continue;
            }
            let v = view.get_or_insert_with(|| super::decode::broken(hay, &at));
            self.confirm(r, v, (s, e), &mut seen, vetoes, &mut seen_decoded);
        }
        if let Some(mut v) = view {
            crate::wipe::vec(&mut v);
        }
        if seen.is_empty() {
            return;
        }
        // Raw findings by start, and how far back one can begin and still reach a span.
        found.sort_unstable();
        let longest = found.iter().map(|g| g.1 - g.0).max().unwrap_or(0);
        let mut gone = vec![false; found.len()];
        let mut added = Vec::new();
        for (s, e, r) in seen {
            let from = found.partition_point(|g| g.0 + longest < s);
            let to = found.partition_point(|g| g.0 < e);
            let near = (from..to).filter(|&i| found[i].1 > s);
            if near.clone().any(|i| found[i].0 == s && found[i].1 == e) {
                continue;
            }
            if near
                .clone()
                .any(|i| !gone[i] && !crosses(found[i].0, found[i].1))
            {
                continue;
            }
            for i in near {
                gone[i] = true;
            }
            // A login judged inside the view keeps its judgement.
            if let Some(i) = seen_decoded.iter().position(|(span, _)| *span == (s, e)) {
                let (span, rep) = seen_decoded.swap_remove(i);
                decoded.retain(|(d, _)| !(d.0 < e && s < d.1));
                decoded.push((span, rep));
            }
            added.push((s, e, r));
        }
        let mut i = 0;
        found.retain(|_| {
            i += 1;
            !gone[i - 1]
        });
        found.extend(added);
    }

    /// Credentials that `hay` carries percent-encoded (`%2F`…, `+`): found in the decoded
    /// view, reported at their encoded span with the decoded credential's fingerprint and
    /// preview (in `decoded`). One replaces a finding on its encoded text alone. Only the
    /// bytes around escapes are decoded and scanned (a credential, or its name, that holds
    /// one lies near it): an 8 MB page with a few `%20` costs a few KB.
    fn percent_encoded(
        &self,
        hay: &[u8],
        found: &mut Vec<(usize, usize, usize)>,
        decoded: &mut Vec<((usize, usize), Reported)>,
    ) {
        let mut escapes = super::decode::escapes(hay).peekable();
        if escapes.peek().is_none() {
            return;
        }
        let max = self.max_span();
        let mut regions: Vec<(usize, usize)> = Vec::new();
        for i in escapes {
            // A name and its value around the escape; a longer value (a JWT after an
            // encoded `=`, an encoded PEM key's escapes close together) runs on to the
            // next delimiter. Widened by 2 so no escape is cut at either end.
            let a = i.saturating_sub(NEAR + self.context_before() + 2);
            let mut b = (i + NEAR + 2).min(hay.len());
            let stop = (i + max).min(hay.len());
            while b < stop && !b" \t\r\n&\"'<>".contains(&hay[b]) {
                b += 1;
            }
            match regions.last_mut() {
                Some(last) if a <= last.1 => last.1 = b,
                _ => regions.push((a, b)),
            }
        }
        for (a, b) in regions {
            let Some((mut text, at)) = super::decode::percent(&hay[a..b]) else {
                continue;
            };
            for f in self.scan_inner(&text, None, Pass::Percent) {
                let s = a + at[f.start] as usize;
                let e = a + at.get(f.end).map_or(b - a, |&i| i as usize);
                let Some(r) = self.rules.iter().position(|x| x.id == f.rule) else {
                    continue;
                };
                if found.iter().any(|g| (g.0, g.1) == (s, e)) {
                    continue;
                }
                // An escape inside (3 bytes raw, 1 decoded): the decoded credential replaces
                // what its encoded text gave, unless raw punctuation beside it says the
                // escape is literal text (`decode::literal`). Escapes only around it (a
                // name's `%3D`): the raw bytes are the credential.
                if e - s != f.end - f.start {
                    if super::decode::literal(&hay[s..e]) {
                        continue;
                    }
                    found.retain(|g| !(g.0 < e && s < g.1));
                    decoded.retain(|(span, _)| !(span.0 < e && s < span.1));
                    decoded.push(((s, e), (f.rule, f.fingerprint, f.redacted)));
                }
                found.push((s, e, r));
            }
            crate::wipe::vec(&mut text);
        }
    }

    /// Credentials inside base64 text (see `b64`): each run that decodes to text is
    /// scanned with the bytes around it (the name a value is assigned to); what is found
    /// in the decoded bytes is reported at its encoded span with the decoded credential's
    /// fingerprint and preview, replacing findings on the encoded text. A run the end of
    /// `hay` cuts is left open (its last `max_span` of decoded bytes, from a whole group),
    /// so a stream scanner decodes it again once more arrives.
    fn base64_encoded(
        &self,
        hay: &[u8],
        runs: &[(usize, usize)],
        found: &mut Vec<(usize, usize, usize)>,
        decoded: &mut Vec<((usize, usize), Reported)>,
        open: Option<&mut Vec<(usize, usize)>>,
    ) {
        let mut cut = None;
        for &(s, e) in runs {
            let Some(mut d) = super::b64::text(&hay[s..e]) else {
                continue;
            };
            if e == hay.len() {
                let keep = self.max_span().min(d.text.len());
                // A whole group's first byte: one at a multiple of 3 from the start.
                let j = (d.text.len() - keep) / 3 * 3;
                let start = if j == 0 {
                    s.saturating_sub(self.context_before())
                } else {
                    s + d.at[j] as usize
                };
                cut = Some((start, hay.len() + 1));
            }
            let a = s.saturating_sub(self.context_before());
            let b = (e + BASE64_AFTER).min(hay.len());
            let mut view = Vec::with_capacity(d.text.len() + (s - a) + (b - e));
            view.extend_from_slice(&hay[a..s]);
            view.extend_from_slice(&d.text);
            view.extend_from_slice(&hay[e..b]);
            let (da, db) = (s - a, s - a + d.text.len());
            // Where a view offset lies in `hay`: around the run as is, inside it at the
            // character its byte starts in (an end: after the last byte's two characters).
            let to_hay = |i: usize, end: bool| -> usize {
                if i < da {
                    a + i
                } else if i >= db {
                    e + (i - db)
                } else if end {
                    (s + d.at[i - da - 1] as usize + 2).min(e)
                } else {
                    s + d.at[i - da] as usize
                }
            };
            for f in self.decoded_findings(&view, da, db) {
                let (fs, fe) = (to_hay(f.start, false), to_hay(f.end, true));
                let Some(r) = self.rules.iter().position(|x| x.id == f.rule) else {
                    continue;
                };
                // A vendor's credential on the encoded text (a JWT, whose parts decode to
                // JSON; a login already decoded) stands as found; a generic finding there
                // (the encoded value taken for a password) gives way to what it encodes.
                let overlaps = |g: (usize, usize)| g.0 < fe && fs < g.1;
                if found
                    .iter()
                    .any(|g| overlaps((g.0, g.1)) && !self.rules[g.2].generic)
                    || decoded.iter().any(|(span, _)| overlaps(*span))
                {
                    continue;
                }
                found.retain(|g| !overlaps((g.0, g.1)));
                decoded.push(((fs, fe), (f.rule, f.fingerprint, f.redacted)));
                found.push((fs, fe, r));
            }
            crate::wipe::vec(&mut view);
            crate::wipe::vec(&mut d.text);
        }
        if let (Some(o), Some(w)) = (open, cut) {
            o.push(w);
        }
    }

    /// The findings of a base64 view (`da..db`: the decoded text) that lie in the decoded
    /// text. A value that begins in the words before the run, or reads on past its end,
    /// would join raw and decoded bytes into one that is in neither: its fingerprint and
    /// span would hold for nothing. One that reads on is scanned again with the run's end
    /// as the end of the text, which is where the encoded value ended; one that reads in
    /// hides what the decoded text begins with, which is scanned again on its own.
    fn decoded_findings(&self, view: &[u8], da: usize, db: usize) -> Vec<Finding> {
        let within = |f: &Finding| f.start >= da && f.end <= db;
        let all = self.scan_inner(view, None, Pass::Base64);
        let reads_on = all
            .iter()
            .any(|f| f.start >= da && f.start < db && f.end > db);
        let reads_in = all.iter().any(|f| f.start < da && f.end > da);
        let mut kept: Vec<Finding> = all.into_iter().filter(within).collect();
        // `view[lo..db]` scanned again: what lies in the decoded text and overlaps nothing
        // kept joins it.
        let again = |lo: usize, kept: &mut Vec<Finding>| {
            for mut f in self.scan_inner(&view[lo..db], None, Pass::Base64) {
                f.start += lo;
                f.end += lo;
                if within(&f) && !kept.iter().any(|k| k.start < f.end && f.start < k.end) {
                    kept.push(f);
                }
            }
        };
        if reads_on {
            again(0, &mut kept);
        }
        if reads_in {
            again(da, &mut kept);
        }
        kept
    }

    /// Credentials inside gzip members (see `gz`): each is inflated and scanned as written
    /// bytes are; what is found is reported inside the member's compressed span, at the
    /// place its offset in the inflated bytes maps to (compressed bytes have no place of
    /// their own), with the decoded credential's fingerprint and preview. A member the end
    /// of `hay` cuts is left open, so a stream scanner inflates it again once more arrives.
    fn gzip_encoded(
        &self,
        hay: &[u8],
        members: &[usize],
        found: &mut Vec<(usize, usize, usize)>,
        decoded: &mut Vec<((usize, usize), Reported)>,
        open: Option<&mut Vec<(usize, usize)>>,
    ) {
        let mut cut = None;
        let mut budget = super::gz::budget(hay.len());
        for &g in members {
            if budget == 0 {
                break;
            }
            let Some(z) = super::gz::inflate(&hay[g..], budget) else {
                continue;
            };
            budget -= z.text.len();
            let end = g + z.used;
            if end == hay.len() {
                cut = Some((g, hay.len() + 1));
            }
            // Findings come in order: each is placed at or after the one before, so two
            // close together in the text do not share a place (and one is not lost).
            let mut next = g;
            for f in self.scan_inner(&z.text, None, Pass::Gzip) {
                let Some(r) = self.rules.iter().position(|x| x.id == f.rule) else {
                    continue;
                };
                let fs = (g + z.at(f.start)).max(next);
                if fs >= end {
                    continue;
                }
                let fe = (g + z.at(f.end.saturating_sub(1)) + 1).clamp(fs + 1, end);
                if decoded.iter().any(|(d, _)| d.0 < fe && fs < d.1) {
                    continue;
                }
                next = fe;
                decoded.push(((fs, fe), (f.rule, f.fingerprint, f.redacted)));
                found.push((fs, fe, r));
            }
        }
        if let (Some(o), Some(w)) = (open, cut) {
            o.push(w);
        }
    }

    /// The credential inside a decoding rule's match (rule id, fingerprint, preview): a
    /// vendor rule's token in the decoded `USER:PASSWORD`, else the password if it passes
    /// this rule's checks.
    fn inside(&self, rule: &Rule, blob: &[u8]) -> Inside {
        let Some((mut text, at)) = super::decode::basic(blob) else {
            return Inside::NotLogin;
        };
        let vendor = self
            .scan_inner(&text, None, Pass::Login)
            .into_iter()
            .filter(|f| self.rules.iter().any(|r| r.id == f.rule && !r.generic))
            .max_by_key(|f| f.end - f.start);
        let out = match vendor {
            Some(f) => Inside::Found((f.rule, f.fingerprint, f.redacted)),
            None => {
                let pw = &text[at..];
                match self.accept(rule, pw, b"") {
                    Verdict::Report(n) if n == pw.len() => {
                        Inside::Found((rule.id.clone(), fingerprint(pw), redact(pw)))
                    }
                    _ => Inside::Refused,
                }
            }
        };
        crate::wipe::vec(&mut text);
        out
    }

    fn confirm(
        &self,
        r: usize,
        hay: &[u8],
        (s, e): (usize, usize),
        out: &mut Vec<(usize, usize, usize)>,
        vetoes: &mut Vec<(usize, usize)>,
        decoded: &mut Vec<((usize, usize), Reported)>,
    ) {
        let rule = &self.rules[r];
        let win = &hay[s..e];
        let mut pos = 0;
        let mut locs = rule.regex.capture_locations();
        // A rejected candidate resumes the search at its secret, not after the whole match:
        // `credential: "NAME_TOKEN=value"` must still be tried as `NAME_TOKEN=value`.
        while pos < win.len() {
            let Some(whole) = rule.regex.captures_read_at(&mut locs, win, pos) else {
                break;
            };
            let Some((g, (ms, me))) = rule
                .groups
                .iter()
                .find_map(|&g| locs.get(g).map(|span| (g, span)))
            else {
                pos = whole.end().max(pos + 1);
                continue;
            };
            let name = rule
                .name_group
                .and_then(|g| locs.get(g))
                .map_or(&[][..], |(a, b)| &win[a..b]);
            let verdict = if rule.public {
                Verdict::Veto
            } else if rule.decode {
                match self.inside(rule, &win[ms..me]) {
                    Inside::Found(c) => {
                        decoded.push(((s + ms, s + me), c));
                        Verdict::Report(me - ms)
                    }
                    // Judged: no generic rule reports the encoded value either.
                    Inside::Refused => Verdict::Veto,
                    Inside::NotLogin => Verdict::Drop,
                }
            } else {
                let mut secret = &win[ms..me];
                if rule.bare.contains(&g) {
                    let from = (s + ms).saturating_sub(512);
                    secret = validate::trim_value(secret, &hay[from..s + ms]);
                }
                self.accept(rule, secret, name)
            };
            match verdict {
                Verdict::Report(len) => {
                    out.push((s + ms, s + ms + len, r));
                    pos = whole.end().max(pos + 1);
                }
                Verdict::Veto => {
                    vetoes.push((s + ms, s + me));
                    pos = whole.end().max(pos + 1);
                }
                Verdict::Drop => pos = ms.max(whole.start() + 1).max(pos + 1),
            }
        }
    }

    fn accept(&self, rule: &Rule, secret: &[u8], name: &[u8]) -> Verdict {
        // A vendor shape too uniform to be issued, or a known placeholder, is one for every
        // rule. A key block's body is random base64: `XxXXx` or `DuMmY` in it is chance,
        // one key in about 20,000 (placeholder blocks are short).
        let block = rule.multiline && secret.len() > 256;
        if !validate::entropy_ok(secret, rule.entropy) || !block && validate::placeholder(secret) {
            return if rule.generic {
                Verdict::Drop
            } else {
                Verdict::Veto
            };
        }
        let valid = match rule.validator {
            Validator::None => true,
            Validator::GithubCrc32 => validate::github_crc32(secret),
            Validator::Jwt => validate::jwt(secret),
            Validator::Generic => validate::generic(secret, name),
            Validator::Password => validate::password(secret),
            Validator::NotWords => validate::not_words(secret),
        };
        // A vendor rule that recognised the shape and then refused it (a wrong checksum, a
        // documented example) has judged these bytes for every rule.
        let refused = !valid || rule.allow.iter().any(|a| a.is_match(secret));
        match (refused, rule.generic) {
            (false, _) => Verdict::Report(secret.len()),
            (true, false) => Verdict::Veto,
            (true, true) => Verdict::Drop,
        }
    }

    /// Sorts `found` by start and settles overlaps: vendor findings first (the longer, then
    /// the earlier rule, wins); a generic finding survives only where it overlaps no vendor
    /// finding and no vetoed value.
    fn resolve(&self, found: &mut Vec<(usize, usize, usize)>, vetoes: &[(usize, usize)]) {
        let (mut vendor, generic): (Vec<_>, Vec<_>) =
            found.drain(..).partition(|f| !self.rules[f.2].generic);
        resolve_overlaps(&mut vendor);
        let overlaps = |a: (usize, usize), b: (usize, usize)| a.0 < b.1 && b.0 < a.1;
        let mut generic: Vec<_> = generic
            .into_iter()
            .filter(|g| {
                !vendor.iter().any(|v| overlaps((g.0, g.1), (v.0, v.1)))
                    && !vetoes.iter().any(|&v| overlaps((g.0, g.1), v))
            })
            .collect();
        // Among shapes the earlier rule wins (a URL's password over `NAME: value` reading
        // on past the `@`), then the longer finding.
        generic.sort_unstable_by_key(|g| (g.2, g.0, usize::MAX - g.1));
        let mut kept: Vec<(usize, usize, usize)> = Vec::with_capacity(generic.len());
        for g in generic {
            if !kept.iter().any(|k| overlaps((g.0, g.1), (k.0, k.1))) {
                kept.push(g);
            }
        }
        vendor.extend(kept);
        vendor.sort_unstable_by_key(|f| (f.0, f.1));
        *found = vendor;
    }
}

/// Each rule's lazy DFA cache. At the regex crate's 2 MiB, some rules' caches filled on
/// source text and were cleared and rebuilt over and over (engine 934 MB/s on 311 MB of
/// sources, 1036 at 3 MiB, 1044 at 4); 4 MiB costs ~1.3 MB more at peak there.
const DFA_CACHE: usize = 4 << 20;

/// Every rule compiled, in order, by as many threads as there are cores (the keyword
/// prefilter's builder runs beside them): each takes the next rule not yet taken.
fn compile_all(specs: &[RuleSpec]) -> Result<Vec<Rule>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let helpers = threads.saturating_sub(1).min(specs.len() / 8);
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(spec) = specs.get(i) else {
                return done;
            };
            done.push((i, compile(spec)));
        }
    };
    let mut all: Vec<(usize, Result<Rule>)> = std::thread::scope(|s| {
        // A thread refused (a process or thread limit) leaves its share to the others.
        let others: Vec<_> = (0..helpers)
            .filter_map(|_| std::thread::Builder::new().spawn_scoped(s, work).ok())
            .collect();
        let mut all = work();
        for o in others {
            all.extend(o.join().unwrap_or_default());
        }
        all
    });
    // A helper that panicked left its rules out: compiled again here, where the panic shows.
    if all.len() < specs.len() {
        let have: std::collections::HashSet<usize> = all.iter().map(|(i, _)| *i).collect();
        for (i, spec) in specs.iter().enumerate() {
            if !have.contains(&i) {
                all.push((i, compile(spec)));
            }
        }
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

/// `pattern`, one of rule `id`'s (`what`: its regex or an allow pattern), compiled as every
/// rule pattern is: bytes (see `compile`). A pattern written for Unicode regexes (`\p{L}`,
/// `[äöü]`) is refused saying what to do.
fn bytes_regex(pattern: &str, id: &str, what: &str, dfa: Option<usize>) -> Result<Regex> {
    let mut b = regex::bytes::RegexBuilder::new(pattern);
    b.unicode(false);
    if let Some(limit) = dfa {
        b.dfa_size_limit(limit);
    }
    b.build().map_err(|e| {
        let hint = if e.to_string().contains("Unicode") {
            "; rules match bytes: wrap the part that needs Unicode in (?u:...)"
        } else {
            ""
        };
        anyhow!("rule `{id}`: {what} does not compile: {e}{hint}")
    })
}

/// Regexes match bytes, not characters (`unicode(false)`): `\w`, `\d`, `\s`, `\b` and
/// `(?i)` are ASCII, as in the Go regexps gitleaks-style rules are written for, and `.` and a
/// negated class match any byte. With Unicode on, a negated class could not match a byte
/// that is not UTF-8, so a key with such a byte beside it (a core dump, a binary protocol)
/// went unseen: 123 of 528 planted keys found, 504 now, as in plain text. Also less memory
/// and compile time (daemon RSS at idle 60.7 -> 55.2 MB), and the same findings on 1.7 GB
/// of this host's text and 1.4 GB of its binaries (by hand, 2026-12-08). `(?u:…)` turns
/// Unicode back on within a rule: the values that end at whitespace use it, so a
/// non-breaking space still ends them and a non-ASCII letter does not.
fn compile(spec: &RuleSpec) -> Result<Rule> {
    let regex = bytes_regex(&spec.regex, &spec.id, "regex", Some(DFA_CACHE))?;
    let names: Vec<Option<&str>> = regex.capture_names().collect();
    let mut groups: Vec<usize> = (0..names.len())
        .filter(|&i| names[i].is_some_and(|n| n.starts_with("secret")))
        .collect();
    if groups.is_empty() {
        groups.push(usize::from(regex.captures_len() > 1));
    }
    let name_group = names.iter().position(|n| *n == Some("name"));
    let bare: Vec<usize> = (0..names.len())
        .filter(|&i| names[i].is_some_and(|n| n.starts_with("secret_bare")))
        .collect();
    let decode = match spec.decode.as_deref() {
        None | Some("") => false,
        Some("basic") => true,
        Some(d) => {
            return Err(anyhow!(
                "rule `{}`: unknown decode `{d}`; the one known is basic",
                spec.id
            ))
        }
    };
    let validator = match spec.validator.as_deref() {
        None | Some("") => Validator::None,
        Some("github-crc32") => Validator::GithubCrc32,
        Some("jwt") => Validator::Jwt,
        Some("generic") => Validator::Generic,
        Some("password") => Validator::Password,
        Some("not-words") => Validator::NotWords,
        Some(v) => {
            return Err(anyhow!(
                "rule `{}`: unknown validator `{v}`; use github-crc32, jwt, generic, password or not-words",
                spec.id
            ))
        }
    };
    if spec.keywords.is_empty() {
        return Err(anyhow!(
            "rule `{}` has no keywords; give it at least one literal to prefilter on",
            spec.id
        ));
    }
    let allow = spec
        .allow
        .iter()
        .map(|a| bytes_regex(a, &spec.id, "allow pattern", None))
        .collect::<Result<_>>()?;
    Ok(Rule {
        id: spec.id.clone(),
        description: spec.description.clone(),
        regex,
        groups,
        name_group,
        bare,
        entropy: spec.entropy,
        validator,
        span: spec.span,
        multiline: spec.multiline,
        after: spec.after.as_bytes().to_vec(),
        allow,
        public: spec.public,
        generic: spec.generic,
        decode,
    })
}

/// Does `hay` hold one of the bytes in `after`? (Yes when `after` is empty.)
fn follows(after: &[u8], hay: &[u8]) -> bool {
    match *after {
        [] => true,
        [a] => memchr::memchr(a, hay).is_some(),
        [a, b] => memchr::memchr2(a, b, hay).is_some(),
        [a, b, c] => memchr::memchr3(a, b, c, hay).is_some(),
        _ => hay.iter().any(|x| after.contains(x)),
    }
}

/// Sorts by start and drops findings contained in (or duplicating) a longer one.
fn resolve_overlaps(found: &mut Vec<(usize, usize, usize)>) {
    // Longest first at each start; then keep a finding only if it is not inside the last kept.
    found.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    let mut kept: Vec<(usize, usize, usize)> = Vec::with_capacity(found.len());
    for f in found.drain(..) {
        if let Some(last) = kept.last() {
            if f.0 >= last.0 && f.1 <= last.1 {
                continue;
            }
        }
        kept.push(f);
    }
    *found = kept;
}
