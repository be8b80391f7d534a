//! `leakwatch scan`: offline scan of files, directories (recursively) and stdin with the
//! detection engine. Files are scanned in parallel on every core; big files are streamed in
//! 1 MiB chunks, never read whole; binary files are skipped (and counted) unless asked.
//! Known findings are suppressed (and counted) by fingerprint (`--ignore`, a baseline) or by
//! a `leakwatch:allow` (or gitleaks' `gitleaks:allow`) marker on the finding's line. With
//! `--git` the paths are repositories and their history is scanned instead (`git`).
use std::{
    collections::HashSet,
    fs::File,
    io::{IsTerminal, Read, Write},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::json;

use crate::detect::{frozen::FrozenSet, stream::StreamScanner, Detector, Engine};

mod git;

/// Files up to this size are read whole; larger ones are streamed.
const WHOLE_MAX: u64 = 8 << 20;
const CHUNK: usize = 1 << 20;
/// Bytes looked at to decide whether a file is binary.
const SNIFF: usize = 8192;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
    Sarif,
}

pub struct Options {
    pub paths: Vec<PathBuf>,
    pub format: Format,
    pub binary: bool,
    pub threads: Option<usize>,
    pub frozen: Option<FrozenSet>,
    /// Colour and progress: None = only when stdout/stderr is a terminal.
    pub color: Option<bool>,
    /// Fingerprints not to report (see `load_ignore`).
    pub ignore: HashSet<String>,
    /// The paths are Git repositories: scan their history (see `git`), not their files.
    pub git: bool,
}

/// Markers that suppress a finding on their line, as `# leakwatch:allow`.
const ALLOW_MARKERS: [&[u8]; 2] = [b"leakwatch:allow", b"gitleaks:allow"];

/// Reads an ignore file: one fingerprint (`sha256:` + 64 hex) per line, `#` comments, or
/// the JSON lines of an earlier `leakwatch scan --format json` (their `fingerprint`), so a
/// previous report serves as a baseline.
pub fn load_ignore(path: &Path, into: &mut HashSet<String>) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the ignore file {}", path.display()))?;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fp = if line.starts_with('{') {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["fingerprint"].as_str().map(str::to_string))
        } else {
            line.split_whitespace().next().map(str::to_string)
        };
        // Stored in the canonical lower-case form findings carry.
        match fp.and_then(|fp| crate::detect::frozen::FrozenKey::from_fingerprint(&fp)) {
            Some(key) => {
                into.insert(key.fingerprint());
            }
            _ => anyhow::bail!(
                "{}:{}: not a fingerprint (sha256: and 64 hex digits) or a JSON finding; fix or remove the line",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(())
}

/// Does the line of `buf` around `at` carry an allow marker?
fn allowed_inline(buf: &[u8], at: usize) -> bool {
    // The marker is a comment beside the value: on a megabyte-long line (minified code, a
    // JSON log line) with thousands of findings, only its neighbourhood is looked at.
    let lo = at.saturating_sub(ALLOW_REACH);
    let hi = (at + ALLOW_REACH).min(buf.len());
    let start = memchr::memrchr(b'\n', &buf[lo..at]).map_or(lo, |p| lo + p + 1);
    let end = memchr::memchr(b'\n', &buf[at..hi]).map_or(hi, |p| at + p);
    let line = &buf[start..end];
    ALLOW_MARKERS
        .iter()
        .any(|m| memchr::memmem::find(line, m).is_some())
}

#[derive(Clone, Debug, Serialize)]
pub struct Hit {
    pub path: String,
    pub line: usize,
    pub column: usize,
    pub offset: u64,
    pub rule: String,
    pub fingerprint: String,
    pub redacted: String,
    /// With `--git`: the oldest commit that added the blob the finding is in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub files: u64,
    pub bytes: u64,
    pub binary_skipped: u64,
    /// FIFOs, sockets and devices met in a walk (never read: they may never end).
    pub special_skipped: u64,
    /// Findings dropped by `--ignore` or an allow marker.
    pub suppressed: u64,
    pub errors: Vec<String>,
    pub hits: Vec<Hit>,
}

impl Summary {
    /// 0 clean, 1 credentials found, 2 something could not be scanned.
    pub fn exit_code(&self) -> u8 {
        if !self.errors.is_empty() {
            2
        } else if !self.hits.is_empty() {
            1
        } else {
            0
        }
    }
}

enum Input {
    Stdin,
    /// A file and, when a progress bar needs it, its size.
    File(PathBuf, u64),
    /// A FIFO, a process substitution (`<(…)`) or a device named on the command line:
    /// read as a stream, at most `SPECIAL_MAX` bytes.
    Special(PathBuf),
    /// One met in a walk: skipped and counted.
    SkippedSpecial,
    /// A path the walk could not read.
    Unreadable(String),
}

/// Bytes read from a FIFO or device named on the command line (`/dev/zero` never ends).
const SPECIAL_MAX: u64 = 1 << 30;

/// Every input the paths name, in walk order. Sizes are looked up only when `sized`:
/// otherwise each worker learns its file's size from the open file, in parallel.
fn inputs(paths: &[PathBuf], sized: bool) -> impl Iterator<Item = Input> + Send + '_ {
    paths
        .iter()
        .flat_map(move |p| -> Box<dyn Iterator<Item = Input> + Send> {
            if p.as_os_str() == "-" {
                return Box::new(std::iter::once(Input::Stdin));
            }
            // Named explicitly (followed: `<(…)` is a /dev/fd symlink to a pipe): read it.
            if let Ok(md) = std::fs::metadata(p) {
                if !md.is_dir() && !md.is_file() {
                    return Box::new(std::iter::once(Input::Special(p.clone())));
                }
            }
            Box::new(
                walkdir::WalkDir::new(p)
                    .follow_links(false)
                    .into_iter()
                    .filter_map(move |e| match e {
                        Ok(e) if e.file_type().is_file() => {
                            let len = match sized {
                                true => e.metadata().map(|m| m.len()).unwrap_or(0),
                                false => 0,
                            };
                            Some(Input::File(e.into_path(), len))
                        }
                        Ok(e) if e.file_type().is_dir() || e.file_type().is_symlink() => None,
                        Ok(_) => Some(Input::SkippedSpecial),
                        Err(err) => Some(Input::Unreadable(format!(
                            "{}: {}",
                            err.path().unwrap_or(p).display(),
                            err
                        ))),
                    }),
            )
        })
}

pub fn run(engine: &Engine, opts: &Options) -> Result<Summary> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.unwrap_or(0))
        .build()?;
    let scan = |i: &Input| match i {
        Input::Stdin => scan_reader(engine, opts, "-", std::io::stdin().lock()),
        Input::File(p, _) => scan_file(engine, opts, p),
        Input::Special(p) => scan_special(engine, opts, p),
        Input::SkippedSpecial => FileResult::Special,
        Input::Unreadable(e) => FileResult::Error(e.clone()),
    };
    let results: Vec<FileResult> = if opts.git {
        pool.install(|| {
            opts.paths
                .iter()
                .flat_map(|repo| git::scan_repo(engine, opts, repo))
                .collect()
        })
    } else if progress_possible(opts.color) {
        // The bar needs the total first: walk (and stat) everything, then scan.
        let all: Vec<Input> = inputs(&opts.paths, true).collect();
        let total = all
            .iter()
            .map(|i| if let Input::File(_, l) = i { *l } else { 0 })
            .sum();
        let progress = progress_bar(total, opts.color);
        let done = AtomicU64::new(0);
        let results = pool.install(|| {
            all.par_iter()
                .map(|i| {
                    let r = scan(i);
                    if let (Some(pb), Input::File(_, len)) = (&progress, i) {
                        pb.set_position(done.fetch_add(*len, Ordering::Relaxed) + len);
                    }
                    r
                })
                .collect()
        });
        if let Some(pb) = progress {
            pb.finish_and_clear();
        }
        results
    } else {
        // Scan while the walk goes on: on a tree of small files the walk alone is a
        // quarter of the time.
        pool.install(|| {
            inputs(&opts.paths, false)
                .par_bridge()
                .map(|i| scan(&i))
                .collect()
        })
    };
    let mut summary = Summary::default();
    for r in results {
        match r {
            FileResult::Scanned {
                bytes,
                hits,
                suppressed,
            } => {
                summary.files += 1;
                summary.bytes += bytes;
                summary.suppressed += suppressed;
                summary.hits.extend(hits);
            }
            FileResult::Binary => summary.binary_skipped += 1,
            FileResult::Special => summary.special_skipped += 1,
            FileResult::Error(e) => summary.errors.push(e),
        }
    }
    summary.errors.sort();
    summary
        .hits
        .sort_by(|a, b| a.path.cmp(&b.path).then(a.offset.cmp(&b.offset)));
    Ok(summary)
}

enum FileResult {
    Scanned {
        bytes: u64,
        hits: Vec<Hit>,
        suppressed: u64,
    },
    Binary,
    Special,
    Error(String),
}

/// A FIFO or device given by name, streamed; past `SPECIAL_MAX` bytes it is an error
/// (what was read is still reported).
fn scan_special(engine: &Engine, opts: &Options, path: &Path) -> FileResult {
    let name = path.display().to_string();
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) => return FileResult::Error(format!("{name}: {e}")),
    };
    match scan_reader(engine, opts, &name, f.take(SPECIAL_MAX)) {
        FileResult::Scanned { bytes, hits, .. } if bytes >= SPECIAL_MAX && hits.is_empty() => {
            FileResult::Error(format!(
                "{name}: stopped after {} GiB (it does not end like a file)",
                SPECIAL_MAX >> 30
            ))
        }
        r => r,
    }
}

fn scan_file(engine: &Engine, opts: &Options, path: &Path) -> FileResult {
    let err = |e: std::io::Error| FileResult::Error(format!("{}: {e}", path.display()));
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) => return err(e),
    };
    let len = match f.metadata() {
        Ok(m) => m.len(),
        Err(e) => return err(e),
    };
    if len > WHOLE_MAX {
        return scan_reader(engine, opts, &path.display().to_string(), f);
    }
    thread_local! {
        // One buffer per worker, kept between files: a fresh allocation per file costs page
        // faults (and zeroing) for every byte read.
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with_borrow_mut(|buf| {
        let n = match read_whole(&mut f, len as usize, buf) {
            Ok(n) => n,
            Err(e) => return err(e),
        };
        scan_buf(engine, opts, path, &buf[..n])
    })
}

/// Scans bytes read whole, as the file (or blob) at `path`.
fn scan_buf(engine: &Engine, opts: &Options, path: &Path, buf: &[u8]) -> FileResult {
    if !opts.binary && is_binary(buf) {
        return FileResult::Binary;
    }
    let mut hits = hits_in(engine, opts, path, buf);
    let before = hits.len();
    hits.retain(|h| {
        !opts.ignore.contains(&h.fingerprint) && !allowed_inline(buf, h.offset as usize)
    });
    FileResult::Scanned {
        bytes: buf.len() as u64,
        suppressed: (before - hits.len()) as u64,
        hits,
    }
}

/// Reads `f` to its end into `buf[..n]` and returns n, in one read plus the one that sees
/// the end when `size` is right (a file that grew meanwhile is read whole all the same).
/// `buf` keeps its length between calls, so it is zeroed only when it grows.
fn read_whole(f: &mut File, size: usize, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut n = 0;
    loop {
        let want = n.max(size) + 1;
        if buf.len() < want {
            buf.resize(want.next_power_of_two().max(1 << 16), 0);
        }
        match f.read(&mut buf[n..]) {
            Ok(0) => return Ok(n),
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A NUL byte makes a file binary, unless the rest is text: a saved `/proc/PID/environ` or
/// `cmdline`, a crash report's string table — `KEY=value` separated by NULs, which is
/// exactly where credentials sit.
fn is_binary(head: &[u8]) -> bool {
    let h = &head[..head.len().min(SNIFF)];
    if memchr::memchr(0, h).is_none() {
        return false;
    }
    let nul = h.iter().filter(|&&b| b == 0).count();
    let control = h
        .iter()
        .filter(|&&b| (b < 0x20 && !b"\0\t\n\r".contains(&b)) || b == 0x7f)
        .count();
    control * 100 > h.len() || nul * 5 > h.len()
}

/// Whole-buffer scan: rule findings plus frozen credentials.
fn hits_in(engine: &Engine, opts: &Options, path: &Path, buf: &[u8]) -> Vec<Hit> {
    let mut found = Detector::new(engine, opts.frozen.as_ref()).scan(buf);
    found.sort_by_key(|f| f.start);
    // Where the line of the last hit began, carried forward: one pass over the buffer
    // however many hits a long line holds.
    let (mut pos, mut line_start) = (0, 0);
    found
        .into_iter()
        .map(|f| {
            if let Some(p) = memchr::memrchr(b'\n', &buf[pos..f.start]) {
                line_start = pos + p + 1;
            }
            pos = f.start;
            Hit {
                // Built per hit: most files have none.
                path: path.display().to_string(),
                line: f.line,
                column: f.start - line_start + 1,
                offset: f.start as u64,
                rule: f.rule,
                fingerprint: f.fingerprint,
                redacted: f.redacted,
                commit: None,
            }
        })
        .collect()
}

/// How far from a finding an inline allow marker is looked for on its line.
const ALLOW_REACH: usize = 4096;

/// Streams a reader in 1 MiB chunks with a bounded tail, so a secret across a chunk edge
/// is still found and memory stays flat whatever the size.
fn scan_reader(engine: &Engine, opts: &Options, name: &str, mut r: impl Read) -> FileResult {
    let d = Detector::new(engine, opts.frozen.as_ref());
    let mut s = StreamScanner::new(engine);
    let mut buf = vec![0u8; CHUNK];
    let mut hits = Vec::new();
    let mut bytes = 0u64;
    let mut first = true;
    let mut suppressed = 0;
    // Keeps a finding unless ignored or marked. A marker is seen only when the finding and
    // its line lie in the chunk being fed: one found later from the scanner's tail (near a
    // chunk edge) is kept even if marked.
    let mut keep = |f: crate::detect::stream::StreamFinding, chunk: &[u8], chunk_at: u64| {
        let inline = f
            .offset
            .checked_sub(chunk_at)
            .filter(|&o| o < chunk.len() as u64)
            .is_some_and(|o| allowed_inline(chunk, o as usize));
        if inline || opts.ignore.contains(&f.finding.fingerprint) {
            suppressed += 1;
            None
        } else {
            Some(stream_hit(name, f))
        }
    };
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return FileResult::Error(format!("{name}: {e}")),
        };
        if first && !opts.binary && is_binary(&buf[..n]) {
            return FileResult::Binary;
        }
        first = false;
        for f in s.feed(&d, &buf[..n]) {
            hits.extend(keep(f, &buf[..n], bytes));
        }
        bytes += n as u64;
    }
    for f in s.finish(&d) {
        hits.extend(keep(f, &[], bytes));
    }
    FileResult::Scanned {
        bytes,
        hits,
        suppressed,
    }
}

fn stream_hit(name: &str, f: crate::detect::stream::StreamFinding) -> Hit {
    Hit {
        path: name.to_string(),
        line: f.line,
        column: 0,
        offset: f.offset,
        rule: f.finding.rule,
        fingerprint: f.finding.fingerprint,
        redacted: f.finding.redacted,
        commit: None,
    }
}

fn progress_possible(color: Option<bool>) -> bool {
    let tty = std::io::stderr().is_terminal();
    tty && color.unwrap_or(tty)
}

fn progress_bar(total: u64, color: Option<bool>) -> Option<indicatif::ProgressBar> {
    if !progress_possible(color) || total < (64 << 20) {
        return None;
    }
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(pb)
}

/// Writes the findings in the chosen format to `out`.
pub fn print(
    engine: &Engine,
    s: &Summary,
    format: Format,
    color: bool,
    out: &mut impl Write,
) -> Result<()> {
    match format {
        Format::Human => {
            let (p, r, d) = if color {
                ("\x1b[35m", "\x1b[1;31m", "\x1b[0m")
            } else {
                ("", "", "")
            };
            for h in &s.hits {
                let col = if h.column > 0 {
                    format!(":{}", h.column)
                } else {
                    String::new()
                };
                let commit = match &h.commit {
                    Some(c) => format!(" (commit {})", &c[..c.len().min(12)]),
                    None => String::new(),
                };
                writeln!(
                    out,
                    "{p}{}:{}{col}{d}: {r}{}{d} {} {}{commit}",
                    h.path,
                    h.line,
                    h.rule,
                    h.redacted,
                    &h.fingerprint[..19]
                )?;
            }
        }
        Format::Json => {
            for h in &s.hits {
                writeln!(out, "{}", serde_json::to_string(h)?)?;
            }
        }
        Format::Sarif => writeln!(out, "{}", serde_json::to_string_pretty(&sarif(engine, s))?)?,
    }
    Ok(())
}

/// SARIF 2.1.0 log of the findings (one run, one result per finding).
pub fn sarif(engine: &Engine, s: &Summary) -> serde_json::Value {
    let mut rules: Vec<serde_json::Value> = engine
        .rules()
        .map(|(id, desc)| json!({"id": id, "name": id, "shortDescription": {"text": desc}}))
        .collect();
    rules.push(json!({"id": "frozen", "name": "frozen", "shortDescription": {"text": "A frozen (known leaked) credential"}}));
    let results: Vec<serde_json::Value> = s
        .hits
        .iter()
        .map(|h| {
            let mut region = json!({"startLine": h.line, "byteOffset": h.offset});
            if h.column > 0 {
                region["startColumn"] = json!(h.column);
            }
            let mut result = json!({
                "ruleId": h.rule,
                "level": "error",
                "message": {"text": format!("{} found: {}", h.rule, h.redacted)},
                "locations": [{"physicalLocation": {
                    "artifactLocation": {"uri": h.path},
                    "region": region,
                }}],
                "partialFingerprints": {"secretSha256/v1": h.fingerprint},
            });
            if let Some(c) = &h.commit {
                result["properties"] = json!({"commit": c});
            }
            result
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "leakwatch",
                "version": env!("CARGO_PKG_VERSION"),
                "informationUri": "https://github.com/leakwatch/leakwatch",
                "rules": rules,
            }},
            "results": results,
        }],
    })
}

/// Reads the frozen set (`frozen.json` in a daemon's state dir) for `--frozen`.
pub fn load_frozen(path: &Path) -> Result<FrozenSet> {
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let store = crate::respond::store::Store::open(&dir)
        .with_context(|| format!("reading the frozen set from {}", path.display()))?;
    Ok(FrozenSet::new(store.keys()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_separated_text_is_text() {
        assert!(!is_binary(b"HOME=/root\0PATH=/usr/bin\0TOKEN=abc\0"));
        assert!(!is_binary(b"plain text\n"));
        assert!(is_binary(
            b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x03\0>\0\x01\0"
        ));
        assert!(is_binary("u\0t\0f\x001\x006\0".as_bytes()));
    }

    #[test]
    fn read_whole_reads_past_a_wrong_size_and_reuses_its_buffer() {
        let dir = std::env::temp_dir().join(format!("lw-read-whole-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (big, small) = (dir.join("big"), dir.join("small"));
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&big, &data).unwrap();
        std::fs::write(&small, b"short").unwrap();
        let mut buf = Vec::new();
        // A size that is too small (the file grew since it was looked at).
        let n = read_whole(&mut File::open(&big).unwrap(), 10, &mut buf).unwrap();
        assert_eq!(&buf[..n], &data[..]);
        // The buffer stays large; only the new file's bytes count.
        let n = read_whole(&mut File::open(&small).unwrap(), 5, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"short");
        assert!(buf.len() > 300_000);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
