//! `leakwatch scan --git`: every blob reachable from any ref of a repository, each scanned
//! once however many commits hold it, so a secret committed and later deleted is still
//! found. Findings carry the blob's path and the oldest commit that added it.
//!
//! Through the git CLI (`rev-list --objects`, one `cat-file --batch` stream): it is present
//! wherever a repository is, and a Git library would be a large dependency for two pipes.
use std::{
    collections::{HashMap, HashSet},
    io::{BufRead, BufReader, Read, Write},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use super::{scan_buf, scan_reader, FileResult, Options, WHOLE_MAX};
use crate::detect::Engine;

/// The results for every blob of `repo`, or one error saying why it could not be read.
pub(super) fn scan_repo(engine: &Engine, opts: &Options, repo: &Path) -> Vec<FileResult> {
    if repo.as_os_str() == "-" {
        return vec![FileResult::Error(
            "-: standard input has no history; leave out --git to scan it".into(),
        )];
    }
    match scan_history(engine, opts, repo) {
        Ok(r) => r,
        Err(e) => vec![FileResult::Error(format!("{}: {e:#}", repo.display()))],
    }
}

fn git(repo: &Path) -> Command {
    let mut c = Command::new("git");
    // Paths as they are, not octal-escaped, in `log --raw`.
    c.arg("-C").arg(repo).args(["-c", "core.quotePath=false"]);
    c
}

/// (object id, path) of every blob reachable from any ref, each blob once.
fn blobs(repo: &Path) -> Result<Vec<(String, String)>> {
    let out = git(repo)
        .args([
            "rev-list",
            "--objects",
            "--all",
            "--filter=object:type=blob",
        ])
        .output()
        .context("running git (is it installed?)")?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        bail!(
            "not a Git repository ({}); give a repository's directory, or leave out --git",
            why.lines().next().unwrap_or("git rev-list failed").trim()
        );
    }
    let mut seen = HashSet::new();
    let mut v = Vec::new();
    for line in out.stdout.split(|&b| b == b'\n') {
        // Commits come without a path; trees are filtered out.
        let line = String::from_utf8_lossy(line);
        if let Some((oid, path)) = line.split_once(' ') {
            if seen.insert(oid.to_string()) {
                v.push((oid.to_string(), path.to_string()));
            }
        }
    }
    Ok(v)
}

/// One blob from the `cat-file --batch` stream: read whole, or already scanned when big.
enum Blob {
    Whole(Vec<u8>),
    Done(FileResult),
}

fn scan_history(engine: &Engine, opts: &Options, repo: &Path) -> Result<Vec<FileResult>> {
    let list = blobs(repo)?;
    let mut child = git(repo)
        .args(["cat-file", "--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("running git cat-file")?;
    let mut stdin = child.stdin.take().context("git cat-file stdin")?;
    let ids: Vec<String> = list.iter().map(|(oid, _)| oid.clone()).collect();
    // Fed from a thread: git answers while it reads, and both pipes would fill otherwise.
    let feeder = std::thread::spawn(move || -> std::io::Result<()> {
        let mut w = std::io::BufWriter::new(&mut stdin);
        for oid in ids {
            writeln!(w, "{oid}")?;
        }
        w.flush()
    });
    let mut out = BufReader::with_capacity(1 << 16, child.stdout.take().context("git stdout")?);
    let mut broken = false;
    // Read in order on this thread's side of the bridge; scanned on every core.
    let results: Vec<(usize, FileResult)> = list
        .iter()
        .enumerate()
        .map_while(|(i, (oid, path))| {
            if broken {
                return None;
            }
            let name = repo.join(path);
            let blob = match next_blob(engine, opts, &mut out, oid, &name) {
                Ok(b) => b,
                Err(e) => {
                    broken = true;
                    Blob::Done(FileResult::Error(format!(
                        "{}: {e:#}; the blobs after it were not scanned",
                        name.display()
                    )))
                }
            };
            Some((i, name, blob))
        })
        .par_bridge()
        .map(|(i, name, blob)| match blob {
            Blob::Whole(bytes) => (i, scan_buf(engine, opts, &name, &bytes)),
            Blob::Done(r) => (i, r),
        })
        .collect();
    drop(out);
    let _ = child.kill();
    let _ = child.wait();
    let _ = feeder.join();
    // Which commit first added each blob with findings, and under which path (the walk
    // may have met the blob first under a later name).
    let mut results = results;
    results.sort_by_key(|(i, _)| *i);
    let wanted: HashSet<&str> = results
        .iter()
        .filter(|(_, r)| matches!(r, FileResult::Scanned { hits, .. } if !hits.is_empty()))
        .map(|(i, _)| list[*i].0.as_str())
        .collect();
    // Without commits the findings still count: report them, and say what is missing.
    let first = first_commits(repo, &wanted).unwrap_or_else(|e| {
        results.push((
            usize::MAX,
            FileResult::Error(format!(
                "{}: {e:#}; findings are reported without their commit",
                repo.display()
            )),
        ));
        HashMap::new()
    });
    for (i, r) in &mut results {
        if let FileResult::Scanned { hits, .. } = r {
            let Some((oid, _)) = list.get(*i) else {
                continue;
            };
            if let Some((commit, path)) = first.get(oid.as_str()) {
                for h in hits {
                    h.commit = Some(commit.clone());
                    h.path = repo.join(path).display().to_string();
                }
            }
        }
    }
    Ok(results.into_iter().map(|(_, r)| r).collect())
}

/// Reads the next `cat-file --batch` answer, which must be for `oid`.
fn next_blob(
    engine: &Engine,
    opts: &Options,
    out: &mut impl BufRead,
    oid: &str,
    name: &Path,
) -> Result<Blob> {
    let mut header = String::new();
    out.read_line(&mut header)
        .context("reading git cat-file output")?;
    let mut f = header.split_whitespace();
    let (got, kind, size) = (f.next(), f.next(), f.next());
    if got != Some(oid) {
        bail!("git cat-file answered `{}` for {oid}", header.trim());
    }
    if kind == Some("missing") {
        return Ok(Blob::Done(FileResult::Error(format!(
            "{}: blob {oid} is missing from the repository",
            name.display()
        ))));
    }
    let size: u64 = size
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("git cat-file header `{}`", header.trim()))?;
    let mut body = out.by_ref().take(size);
    let blob = if size > WHOLE_MAX {
        // Streamed like a big file: memory stays flat whatever the blob's size.
        let r = scan_reader(engine, opts, &name.display().to_string(), &mut body);
        // A scan that stopped early (a binary blob) leaves the rest of it in the pipe.
        std::io::copy(&mut body, &mut std::io::sink())?;
        Blob::Done(r)
    } else {
        let mut bytes = Vec::with_capacity(size as usize);
        body.read_to_end(&mut bytes)?;
        Blob::Whole(bytes)
    };
    if body.limit() != 0 {
        bail!("git cat-file ended inside blob {oid}");
    }
    // Each blob is followed by a newline.
    let mut nl = [0u8; 1];
    out.read_exact(&mut nl)?;
    Ok(blob)
}

/// For each blob in `oids`: the oldest commit, on any ref, that added it, and its path
/// there. One walk of the history, oldest first, stopped once every blob is placed.
fn first_commits(repo: &Path, oids: &HashSet<&str>) -> Result<HashMap<String, (String, String)>> {
    let mut found = HashMap::new();
    if oids.is_empty() {
        return Ok(found);
    }
    let mut child = git(repo)
        .args([
            "log",
            "--all",
            "--reverse",
            "--no-abbrev",
            "--raw",
            "--no-renames",
        ])
        // A blob first made in a merge (a conflict resolved by hand) shows in its diff
        // against the first parent.
        .args(["--format=commit %H", "--diff-merges=first-parent"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("running git log")?;
    let out = BufReader::new(child.stdout.take().context("git log stdout")?);
    let mut commit = String::new();
    for line in out.split(b'\n') {
        let line = line.context("reading git log output")?;
        let line = String::from_utf8_lossy(&line);
        if let Some(c) = line.strip_prefix("commit ") {
            commit = c.to_string();
        } else if let Some((meta, path)) = line.strip_prefix(':').and_then(|r| r.split_once('\t')) {
            // `:old-mode new-mode old-oid new-oid status<TAB>path`
            if let Some(oid) = meta.split(' ').nth(3).filter(|o| oids.contains(o)) {
                found
                    .entry(oid.to_string())
                    .or_insert_with(|| (commit.clone(), path.to_string()));
                if found.len() == oids.len() {
                    break;
                }
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(found)
}
