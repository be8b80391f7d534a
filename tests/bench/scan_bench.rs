//! Detection quality and speed, side by side with the peers installed on this machine.
//! - recall per rule, per class and per context on the planted corpus (`scan_corpus`), and
//!   whether each found secret was reported by its own rule;
//! - false positives on generated hard negatives, per category;
//! - findings on installed Rust, C and Python sources and `/usr/share/doc`, per root, and
//!   engine MB/s per core on the sources;
//! - end-to-end wall time of `leakwatch scan`, Kingfisher, ripsecrets and detect-secrets on
//!   the same source tree, and the peers' recall on the same generated corpus.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use leakwatch::detect::{fingerprint, samples::Rng, Engine};

use crate::scan_corpus::{cases, contexts, negatives as negative_cases};

/// Fresh secrets per rule (three times as many per generic class).
const ROUNDS: usize = 20;

struct Planted {
    rule: String,
    context: &'static str,
    /// The exact bytes as written to the corpus.
    secret: String,
}

fn recall_corpus(engine: &Engine, dir: &Path, rng: &mut Rng) -> (Vec<Planted>, String) {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).unwrap();
    let mut planted = Vec::new();
    let mut n = 0;
    for case in cases(engine, rng, ROUNDS) {
        for (ctx, body, exact) in contexts(&case) {
            n += 1;
            fs::write(dir.join(format!("{n:06}-{ctx}.txt")), body).unwrap();
            planted.push(Planted {
                rule: case.rule.clone(),
                context: ctx,
                secret: exact,
            });
        }
    }
    // leakwatch's own recall: scan each file, look for the planted fingerprint, and note
    // whether the rule that reported it is the one expected (generic classes: the generic
    // rule).
    let mut by_rule: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut by_ctx: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    let mut own_rule = 0;
    for (i, p) in planted.iter().enumerate() {
        let body = fs::read(dir.join(format!("{:06}-{}.txt", i + 1, p.context))).unwrap();
        let want = fingerprint(p.secret.as_bytes());
        let found = engine.scan(&body);
        let hit = found.iter().find(|f| f.fingerprint == want);
        let expected = p.rule.split(' ').next().unwrap_or_default();
        let own = hit.is_some_and(|f| f.rule == expected);
        own_rule += own as usize;
        if !own && std::env::var_os("LW_BENCH_MISSES").is_some() {
            eprintln!(
                "{} {:06}-{}.txt: {}",
                if hit.is_some() {
                    "other-rule"
                } else {
                    "missed"
                },
                i + 1,
                p.context,
                p.rule
            );
        }
        let r = by_rule.entry(p.rule.clone()).or_default();
        r.1 += 1;
        r.0 += hit.is_some() as usize;
        let c = by_ctx.entry(p.context).or_default();
        c.2 += 1;
        c.0 += hit.is_some() as usize;
        c.1 += own as usize;
    }
    let found: usize = by_rule.values().map(|v| v.0).sum();
    let mut md = String::new();
    writeln!(
        md,
        "## Recall (planted corpus)\n\n{} rules and generic classes ({ROUNDS} fresh secrets per rule, {} per generic class: punctuated passwords, Django keys, hex API keys) x up to {} contexts = {} planted secrets, one file each, under `{}`. Public-by-design rules are planted as negatives instead. A secret counts as found when a finding's fingerprint equals the SHA-256 of the exact planted bytes (for PEM keys, of their canonical form); it is attributed when that finding's rule is the one expected.\n\n**leakwatch: {found}/{} = {:.2} %** (target >= 99 %: {}); attributed to its own rule: {own_rule}/{found} = {:.2} %\n",
        by_rule.len(),
        3 * ROUNDS,
        by_ctx.len(),
        planted.len(),
        dir.display(),
        planted.len(),
        100.0 * found as f64 / planted.len() as f64,
        met(found as f64 / planted.len() as f64 >= 0.99),
        100.0 * own_rule as f64 / found.max(1) as f64
    )
    .unwrap();
    md.push_str("| context | found | recall | own rule |\n|---|---|---|---|\n");
    for (c, (f, o, t)) in &by_ctx {
        writeln!(
            md,
            "| {c} | {f}/{t} | {:.1} % | {:.1} % |",
            100.0 * *f as f64 / *t as f64,
            100.0 * *o as f64 / (*f).max(1) as f64
        )
        .unwrap();
    }
    md.push_str(
        "\n<details><summary>per rule</summary>\n\n| rule | found | recall |\n|---|---|---|\n",
    );
    for (r, (f, t)) in &by_rule {
        writeln!(
            md,
            "| {r} | {f}/{t} | {:.1} % |",
            100.0 * *f as f64 / *t as f64
        )
        .unwrap();
    }
    md.push_str("\n</details>\n\n");
    (planted, md)
}

fn negatives(engine: &Engine, dir: &Path, rng: &mut Rng) -> String {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).unwrap();
    let cases = negative_cases(rng, 200);
    let mut by_kind: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    for (i, (kind, body)) in cases.iter().enumerate() {
        fs::write(dir.join(format!("{i:06}-{kind}.txt")), body).unwrap();
        let f = engine.scan(body.as_bytes()).len();
        let e = by_kind.entry(kind).or_default();
        e.0 += 1;
        e.1 += (f > 0) as usize;
        e.2 += f;
    }
    let flagged: usize = by_kind.values().map(|v| v.1).sum();
    let total: usize = by_kind.values().map(|v| v.2).sum();
    let mut md = format!(
        "## False positives (generated hard negatives)\n\n{} files under `{}`: digests, ids, placeholders, bad-checksum tokens (also in URLs), public-by-design keys (every public rule's sample), the jwt.io example, code, URLs and e-mails under key names, variable references, masked values, public keys and certificates, minified JS. **leakwatch: {flagged} files flagged, {total} findings** (target 0: {}).\n\n| kind | files | files flagged | findings |\n|---|---|---|---|\n",
        cases.len(),
        dir.display(),
        met(flagged == 0)
    );
    for (k, (n, fl, f)) in &by_kind {
        writeln!(md, "| {k} | {n} | {fl} | {f} |").unwrap();
    }
    md.push('\n');
    md
}

/// Where the real text comes from: (label, directory, extensions; empty = every text file,
/// `.gz` decompressed).
fn roots() -> Vec<(&'static str, PathBuf, &'static [&'static str])> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    vec![
        (
            "C headers (/usr/include)",
            PathBuf::from("/usr/include"),
            &["h", "c"],
        ),
        (
            "Rust (~/.cargo/registry/src)",
            home.join(".cargo/registry/src"),
            &["rs"],
        ),
        (
            "Python stdlib (pyenv 3.12)",
            PathBuf::from("/root/.pyenv/versions/3.12.1/lib/python3.12"),
            &["py"],
        ),
        (
            "Python (/usr/lib/python3)",
            PathBuf::from("/usr/lib/python3"),
            &["py"],
        ),
        (
            "documentation (/usr/share/doc)",
            PathBuf::from("/usr/share/doc"),
            &[],
        ),
    ]
}

/// Copies the real text into one tree so every tool scans the same bytes; returns each
/// file with its root's index, and the bytes per root.
fn source_tree(dir: &Path) -> (Vec<(PathBuf, usize)>, Vec<u64>) {
    let roots = roots();
    let _ = fs::remove_dir_all(dir);
    let mut files = Vec::new();
    let mut bytes = vec![0u64; roots.len()];
    for (ri, (_, root, exts)) in roots.iter().enumerate() {
        for e in walkdir::WalkDir::new(root).into_iter().flatten() {
            let p = e.path();
            let ext = p.extension().and_then(|x| x.to_str()).unwrap_or("");
            if !e.file_type().is_file() || (!exts.is_empty() && !exts.contains(&ext)) {
                continue;
            }
            let rel = p.strip_prefix(root).unwrap();
            let mut dst = dir.join(format!("r{ri}")).join(rel);
            fs::create_dir_all(dst.parent().unwrap()).unwrap();
            let body = if exts.is_empty() && ext == "gz" {
                dst.set_extension("");
                Command::new("gzip")
                    .args(["-dc"])
                    .arg(p)
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
                    .map(|o| o.stdout)
            } else {
                fs::read(p).ok()
            };
            // Documentation trees hold images and archives: text only.
            let Some(body) =
                body.filter(|b| !exts.is_empty() || !b.iter().take(8192).any(|&c| c == 0))
            else {
                continue;
            };
            if fs::write(&dst, &body).is_ok() {
                bytes[ri] += body.len() as u64;
                files.push((dst, ri));
            }
        }
    }
    (files, bytes)
}

fn real_source(engine: &Engine, files: &[(PathBuf, usize)], bytes: &[u64]) -> String {
    let roots = roots();
    // Index-aligned with `files`, so a finding names its file.
    let bufs: Vec<(Vec<u8>, usize)> = files
        .iter()
        .map(|(f, r)| (fs::read(f).unwrap_or_default(), *r))
        .collect();
    let docs = roots.len() - 1;
    let source_bytes: u64 = bytes[..docs].iter().sum();
    let total: u64 = bytes.iter().sum();
    let mut findings = Vec::new();
    let mut times = Vec::new();
    // This VM's speed moves with its host's load: many passes, the median and the spread.
    // Speed is measured on the source roots; findings are counted on everything.
    const PASSES: usize = 11;
    for (i, (b, r)) in bufs.iter().enumerate() {
        for f in engine.scan(b) {
            findings.push((i, *r, f.rule, f.line));
        }
    }
    for _ in 0..PASSES {
        let t = Instant::now();
        let mut n = 0;
        for (b, _) in bufs.iter().filter(|(_, r)| *r < docs) {
            n += engine.scan(b).len();
        }
        std::hint::black_box(n);
        times.push(t.elapsed());
    }
    times.sort();
    let rate = |t: std::time::Duration| source_bytes as f64 / 1e6 / t.as_secs_f64();
    let median = times[PASSES / 2];
    let mbps = rate(median);
    let per100 = |n: usize, b: u64| n as f64 / (b as f64 / 1e8);
    let mut md = format!(
        "## Real text\n\n{} files, {:.1} MB: installed sources and the documentation tree (`.gz` files decompressed, binary files skipped), copied into one tree.\n\n- engine, one core, in memory, on the {:.1} MB of sources: **{:.0} MB/s** (median of {PASSES} passes, {:.2} s each; slowest pass {:.0} MB/s, fastest {:.0} MB/s; target >= 1000 MB/s per core: {})\n- findings: **{}** = {:.2} per 100 MB (target < 0.5: {})\n\n| root | MB | findings | per 100 MB |\n|---|---|---|---|\n",
        files.len(),
        total as f64 / 1e6,
        source_bytes as f64 / 1e6,
        mbps,
        median.as_secs_f64(),
        rate(times[PASSES - 1]),
        rate(times[0]),
        met(mbps >= 1000.0),
        findings.len(),
        per100(findings.len(), total),
        met(per100(findings.len(), total) < 0.5)
    );
    for (ri, (label, _, _)) in roots.iter().enumerate() {
        let n = findings.iter().filter(|f| f.1 == ri).count();
        writeln!(
            md,
            "| {label} | {:.1} | {n} | {:.2} |",
            bytes[ri] as f64 / 1e6,
            per100(n, bytes[ri])
        )
        .unwrap();
    }
    md.push('\n');
    if !findings.is_empty() {
        md.push_str("| file | line | rule |\n|---|---|---|\n");
        for (i, _, rule, line) in findings.iter().take(30) {
            writeln!(md, "| {} | {line} | {rule} |", files[*i].0.display()).unwrap();
        }
        md.push('\n');
    }
    md
}

struct Peer {
    name: &'static str,
    /// Command line with `{}` for the directory to scan.
    args: Vec<&'static str>,
}

fn peers(lw: &Path) -> Vec<Peer> {
    let lw: &'static str = Box::leak(lw.display().to_string().into_boxed_str());
    vec![
        Peer {
            name: "leakwatch scan",
            args: vec![lw, "scan", "--format", "json", "{}"],
        },
        Peer {
            name: "leakwatch scan -j 1",
            args: vec![lw, "scan", "-j", "1", "--format", "json", "{}"],
        },
        Peer {
            name: "kingfisher 2.x (-n, no validation)",
            args: vec![
                "kingfisher",
                "scan",
                "-n",
                "--git-history",
                "none",
                "--format",
                "json",
                "{}",
            ],
        },
        Peer {
            name: "ripsecrets",
            args: vec!["ripsecrets", "{}"],
        },
        Peer {
            name: "detect-secrets",
            args: vec!["detect-secrets", "scan", "--all-files", "{}"],
        },
    ]
}

/// Longest a peer may run on one tree before it is stopped and reported as such.
const PEER_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs a peer on `dir` with its output in `out`; returns the wall time (None when the tool
/// is not installed) and whether it was stopped at PEER_TIMEOUT.
fn run_peer(p: &Peer, dir: &Path, out: &Path) -> Option<(Duration, bool)> {
    let args: Vec<String> = p
        .args
        .iter()
        .map(|a| a.replace("{}", &dir.display().to_string()))
        .collect();
    let f = fs::File::create(out).ok()?;
    let t = Instant::now();
    let mut child = Command::new(&args[0])
        .args(&args[1..])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(f.try_clone().ok()?)
        .stderr(f)
        .env("NO_COLOR", "1")
        .spawn()
        .ok()?;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return Some((t.elapsed(), false));
        }
        if t.elapsed() > PEER_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Some((t.elapsed(), true));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn peers_section(
    root: &Path,
    real: &Path,
    real_bytes: u64,
    recall_dir: &Path,
    planted: &[Planted],
) -> String {
    let lw = PathBuf::from(std::env::var_os("LEAKWATCH_BIN").expect("LEAKWATCH_BIN"));
    let mut md = String::from("## Side by side\n\nSame machine, same run, same trees. Speed: wall clock over the real-text tree (all cores unless noted; the tools' own file walking, reading and output included). Recall: the planted corpus above; a secret counts as found when a 16-byte slice of its exact text appears in the tool's output (Kingfisher, ripsecrets print findings in plaintext), the SHA-1 of the exact secret does (detect-secrets' `hashed_secret`; a finding whose boundaries differ from the planted secret is not counted), or, for leakwatch, its fingerprint.\n\n| tool | real text: wall | MB/s | vs leakwatch | recall on planted corpus |\n|---|---|---|---|---|\n");
    let mut base = None;
    let mut peer_best = 0.0f64;
    for p in peers(&lw) {
        let out = root.join(format!(
            "out-{}.txt",
            p.name.split_whitespace().next().unwrap()
        ));
        let Some((d, timed_out)) = run_peer(&p, real, &out) else {
            writeln!(md, "| {} | not installed | | | |", p.name).unwrap();
            continue;
        };
        let mbps = real_bytes as f64 / 1e6 / d.as_secs_f64();
        let ratio = match base {
            None => {
                base = Some(mbps);
                "1.00x".to_string()
            }
            Some(b) => {
                if !p.name.starts_with("leakwatch") {
                    peer_best = peer_best.max(mbps);
                }
                format!("{:.2}x", mbps / b)
            }
        };
        let recall = if p.name.ends_with("-j 1") {
            String::new()
        } else {
            let rec_out = root.join("recall-out.txt");
            match run_peer(&p, recall_dir, &rec_out) {
                Some((_, true)) => format!("stopped after {} s", PEER_TIMEOUT.as_secs()),
                Some((_, false)) => {
                    let text = fs::read_to_string(&rec_out).unwrap_or_default();
                    let found = planted
                        .iter()
                        .filter(|s| {
                            if p.name.starts_with("leakwatch") {
                                text.contains(&fingerprint(s.secret.as_bytes()))
                            } else if p.name.starts_with("detect-secrets") {
                                // detect-secrets reports SHA-1 of each secret, not the secret.
                                use sha1::Digest as _;
                                let h = sha1::Sha1::digest(s.secret.as_bytes());
                                text.contains(
                                    &h.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                                )
                            } else {
                                // A distinctive slice of the secret, robust to the tool
                                // trimming prefixes or quoting.
                                let mid = s.secret.len() / 2;
                                let lo = mid.saturating_sub(8);
                                s.secret
                                    .get(lo..(lo + 16).min(s.secret.len()))
                                    .is_some_and(|k| text.contains(k))
                            }
                        })
                        .count();
                    let _ = fs::remove_file(&rec_out);
                    format!(
                        "{found}/{} = {:.1} %",
                        planted.len(),
                        100.0 * found as f64 / planted.len() as f64
                    )
                }
                None => "-".into(),
            }
        };
        let (wall, bound) = if timed_out {
            (format!("> {} s (stopped)", PEER_TIMEOUT.as_secs()), "< ")
        } else {
            (format!("{:.2} s", d.as_secs_f64()), "")
        };
        writeln!(
            md,
            "| {} | {wall} | {bound}{mbps:.0} | {ratio} | {recall} |",
            p.name
        )
        .unwrap();
        let _ = fs::remove_file(&out);
    }
    if let Some(b) = base {
        writeln!(
            md,
            "\nTarget: faster than every peer: {} (leakwatch {:.0} MB/s, fastest peer {:.0} MB/s).",
            met(b > peer_best),
            b,
            peer_best
        )
        .unwrap();
    }
    md.push_str("\nPeers print the secrets they find; their outputs (synthetic secrets only) are deleted after counting.\n\n");
    md
}

pub fn run() -> String {
    let engine = Engine::builtin();
    let root = std::env::temp_dir().join("leakwatch-bench-corpus");
    fs::create_dir_all(&root).unwrap();
    let mut rng = Rng::from_time();
    let (planted, mut md) = recall_corpus(&engine, &root.join("recall"), &mut rng);
    md.push_str(&negatives(&engine, &root.join("negatives"), &mut rng));
    let (files, bytes) = source_tree(&root.join("real"));
    md.push_str(&real_source(&engine, &files, &bytes));
    if std::env::var_os("LW_BENCH_NO_PEERS").is_none() {
        md.push_str(&peers_section(
            &root,
            &root.join("real"),
            bytes.iter().sum(),
            &root.join("recall"),
            &planted,
        ));
    }
    md
}

pub fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**not met**"
    }
}
