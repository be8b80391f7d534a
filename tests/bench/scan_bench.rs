//! Detection quality and speed, side by side with the peers installed on this machine.
//! - recall per rule on a generated corpus: every rule's sample secrets embedded in the
//!   shapes agent hosts leak in (shell exports, JSON configs, Authorization headers, Python
//!   tracebacks, JVM hs_err env dumps, Node diagnostic reports, URLs);
//! - false positives on generated hard negatives;
//! - findings on installed Rust, C and Python sources, and engine MB/s per core;
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

use leakwatch::detect::{
    fingerprint,
    samples::{pem, sample, Rng, ALNUM, B64, HEX},
    Engine,
};

const ROUNDS: usize = 40;

struct Planted {
    rule: String,
    context: &'static str,
    /// The exact bytes as written to the corpus.
    secret: String,
}

fn json_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The contexts a leak is embedded in; `None` where the shape cannot hold this text.
fn contexts(text: &str, secret: &str) -> Vec<(&'static str, String, String)> {
    let multiline = text.contains('\n');
    let mut v = vec![
        ("shell-export", format!("# deploy env\nexport APP_CONFIG_VALUE=\"{text}\"\nexport PATH=/usr/bin\n"), secret.to_string()),
        (
            "json-config",
            format!("{{\n  \"name\": \"agent\",\n  \"settings\": {{\"value\": \"{}\", \"retries\": 3}}\n}}\n", json_escape(text)),
            json_escape(secret),
        ),
        (
            "node-report",
            format!("{{\"header\": {{\"reportVersion\": 3}}, \"environmentVariables\": {{\"HOME\": \"/root\", \"APP_VALUE\": \"{}\"}}}}\n", json_escape(text)),
            json_escape(secret),
        ),
        (
            "jvm-hs-err",
            format!("# A fatal error has been detected by the Java Runtime Environment:\n#\n\nEnvironment Variables:\nJAVA_TOOL_OPTIONS=-Xmx2g\nAPP_OPTS={text}\nSHELL=/bin/bash\n"),
            secret.to_string(),
        ),
        (
            "python-traceback",
            format!("Traceback (most recent call last):\n  File \"/srv/agent/run.py\", line 41, in <module>\n    main()\nRuntimeError: upstream rejected credentials {text} (401)\n"),
            secret.to_string(),
        ),
    ];
    if !multiline {
        v.push((
            "http-header",
            format!("> POST /v1/messages HTTP/1.1\n> Host: api.internal\n> Authorization: Bearer {text}\n> Content-Type: application/json\n"),
            secret.to_string(),
        ));
        v.push((
            "url",
            format!("GET https://api.internal/v1/run?token={text}&model=large 200\n"),
            secret.to_string(),
        ));
    }
    v
}

fn recall_corpus(engine: &Engine, dir: &Path, rng: &mut Rng) -> (Vec<Planted>, String) {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).unwrap();
    let mut planted = Vec::new();
    let mut n = 0;
    for (rule, _) in engine.rules() {
        for _ in 0..ROUNDS {
            let (secret, text) = sample(rule, rng).unwrap();
            for (ctx, body, exact) in contexts(&text, &secret) {
                n += 1;
                fs::write(dir.join(format!("{n:06}-{ctx}.txt")), body).unwrap();
                planted.push(Planted {
                    rule: rule.to_string(),
                    context: ctx,
                    secret: exact,
                });
            }
        }
    }
    // leakwatch's own recall: scan each file, look for the planted fingerprint.
    let mut by_rule: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut by_ctx: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (i, p) in planted.iter().enumerate() {
        let body = fs::read(dir.join(format!("{:06}-{}.txt", i + 1, p.context))).unwrap();
        let want = fingerprint(p.secret.as_bytes());
        let hit = engine.scan(&body).iter().any(|f| f.fingerprint == want);
        for e in [
            by_rule.entry(p.rule.clone()).or_default(),
            by_ctx.entry(p.context).or_default(),
        ] {
            e.1 += 1;
            if hit {
                e.0 += 1;
            }
        }
    }
    let found: usize = by_rule.values().map(|v| v.0).sum();
    let mut md = String::new();
    writeln!(
        md,
        "## Recall (generated corpus)\n\n{} rules x {ROUNDS} fresh secrets x up to 7 contexts = {} planted secrets, one file each, under `{}`. A secret counts as found when a finding's fingerprint equals the SHA-256 of the exact planted bytes.\n\n**leakwatch: {found}/{} = {:.2} %** (target >= 99 %: {})\n",
        by_rule.len(),
        planted.len(),
        dir.display(),
        planted.len(),
        100.0 * found as f64 / planted.len() as f64,
        met(found as f64 / planted.len() as f64 >= 0.99)
    )
    .unwrap();
    md.push_str("| context | found | recall |\n|---|---|---|\n");
    for (c, (f, t)) in &by_ctx {
        writeln!(
            md,
            "| {c} | {f}/{t} | {:.1} % |",
            100.0 * *f as f64 / *t as f64
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
    let mut cases: Vec<(&str, String)> = Vec::new();
    for _ in 0..200 {
        let sha1 = rng.string(HEX, 40);
        let sha256 = rng.string(HEX, 64);
        let uuid = format!(
            "{}-{}-4{}-a{}-{}",
            rng.string(HEX, 8),
            rng.string(HEX, 4),
            rng.string(HEX, 3),
            rng.string(HEX, 3),
            rng.string(HEX, 12)
        );
        cases.push((
            "git-sha",
            format!(
                "commit {sha1}\nMerge: {} {}\n",
                &sha1[..7],
                rng.string(HEX, 7)
            ),
        ));
        cases.push((
            "uuid",
            format!("{{\"request_id\": \"{uuid}\", \"trace_id\": \"{uuid}\"}}\n"),
        ));
        cases.push((
            "hash",
            format!(
                "{sha256}  agent-1.2.3.tar.gz\nsha1={sha1}\nmd5: {}\n",
                rng.string(HEX, 32)
            ),
        ));
        cases.push((
            "sri-integrity",
            format!("\"integrity\": \"sha512-{}==\",\n", rng.string(B64, 86)),
        ));
        cases.push((
            "docker-digest",
            format!("image: registry.internal/agent@sha256:{sha256}\n"),
        ));
        cases.push((
            "placeholder",
            [
                "OPENAI_API_KEY=your-api-key-here",
                "ANTHROPIC_API_KEY=${ANTHROPIC_API_KEY}",
                "api_key: <KEY>",
                "password = \"changeme\"",
                "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE",
                "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "token: xxxxxxxxxxxxxxxxxxxxxxxx",
                "Authorization: Bearer <token>",
                "GITHUB_TOKEN={{ secrets.GITHUB_TOKEN }}",
            ]
            .join("\n"),
        ));
        for p in ["ghp_", "gho_", "ghs_", "npm_"] {
            let mut t = leakwatch::detect::samples::checksummed(rng, p).into_bytes();
            let i = t.len() - 2;
            t[i] = if t[i] == b'a' { b'b' } else { b'a' };
            cases.push((
                "bad-checksum-token",
                format!("TOKEN={}\n", String::from_utf8(t).unwrap()),
            ));
        }
        cases.push(("pem-public", pem(rng, "PUBLIC KEY", 6)));
        cases.push(("pem-certificate", pem(rng, "CERTIFICATE", 18)));
        cases.push(("ssh-public-key", format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{} dev@host\nssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ{} ci@runner\n", rng.string(B64, 43), rng.string(B64, 300))));
        let mut js = String::new();
        for _ in 0..40 {
            let (a, b) = (
                rng.string(b"abcdefghijklmnopqrstuvwxyz", 2),
                rng.string(ALNUM, 8),
            );
            write!(js, "var {a}=function(e,t){{var key=e[t],token=n.{b};return key&&token?{a}(key):null}};").unwrap();
        }
        cases.push(("minified-js", js));
    }
    let mut by_kind: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    for (i, (kind, body)) in cases.iter().enumerate() {
        fs::write(dir.join(format!("{i:06}-{kind}.txt")), body).unwrap();
        let f = engine.scan(body.as_bytes()).len();
        let e = by_kind.entry(kind).or_default();
        e.0 += 1;
        e.1 += body.len();
        e.2 += f;
    }
    let total: usize = by_kind.values().map(|v| v.2).sum();
    let mut md = format!(
        "## False positives (generated hard negatives)\n\n{} files under `{}`. **leakwatch: {total} findings** (target 0: {}).\n\n| kind | files | findings |\n|---|---|---|\n",
        cases.len(),
        dir.display(),
        met(total == 0)
    );
    for (k, (n, _, f)) in &by_kind {
        writeln!(md, "| {k} | {n} | {f} |").unwrap();
    }
    md.push('\n');
    md
}

/// Installed Rust, C and Python sources, copied into one tree so every tool scans the same
/// bytes.
fn source_tree(dir: &Path) -> (Vec<PathBuf>, u64) {
    let roots: Vec<(PathBuf, &[&str])> = vec![
        (PathBuf::from("/usr/include"), &["h", "c"]),
        (
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".cargo/registry/src"),
            &["rs"],
        ),
        (
            PathBuf::from("/root/.pyenv/versions/3.12.1/lib/python3.12"),
            &["py"],
        ),
        (PathBuf::from("/usr/lib/python3"), &["py"]),
    ];
    let _ = fs::remove_dir_all(dir);
    let mut files = Vec::new();
    let mut bytes = 0u64;
    for (ri, (root, exts)) in roots.iter().enumerate() {
        for e in walkdir::WalkDir::new(root).into_iter().flatten() {
            let p = e.path();
            let ok = e.file_type().is_file()
                && p.extension()
                    .and_then(|x| x.to_str())
                    .is_some_and(|x| exts.contains(&x));
            if !ok {
                continue;
            }
            let rel = p.strip_prefix(root).unwrap();
            let dst = dir.join(format!("r{ri}")).join(rel);
            fs::create_dir_all(dst.parent().unwrap()).unwrap();
            if fs::copy(p, &dst).is_ok() {
                bytes += fs::metadata(&dst).map(|m| m.len()).unwrap_or(0);
                files.push(dst);
            }
        }
    }
    (files, bytes)
}

fn real_source(engine: &Engine, files: &[PathBuf], bytes: u64) -> String {
    let bufs: Vec<Vec<u8>> = files.iter().filter_map(|f| fs::read(f).ok()).collect();
    let mut findings = Vec::new();
    let mut times = Vec::new();
    // This VM's speed moves with its host's load: many passes, the median and the spread.
    const PASSES: usize = 11;
    for round in 0..PASSES {
        let t = Instant::now();
        let mut n = Vec::new();
        for (i, b) in bufs.iter().enumerate() {
            for f in engine.scan(b) {
                n.push((i, f.rule, f.line));
            }
        }
        times.push(t.elapsed());
        if round == 0 {
            findings = n;
        }
    }
    times.sort();
    let rate = |t: std::time::Duration| bytes as f64 / 1e6 / t.as_secs_f64();
    let median = times[PASSES / 2];
    let mbps = rate(median);
    let mut md = format!(
        "## Real source\n\n{} files, {:.1} MB of Rust (`~/.cargo/registry/src`), C (`/usr/include`) and Python (pyenv 3.12 stdlib, `/usr/lib/python3`) sources, copied into one tree.\n\n- engine, one core, in memory: **{:.0} MB/s** (median of {PASSES} passes, {:.2} s each; slowest pass {:.0} MB/s, fastest {:.0} MB/s; target >= 1000 MB/s per core: {})\n- findings: **{}** = {:.2} per 100 MB (target < 0.5: {})\n\n",
        files.len(),
        bytes as f64 / 1e6,
        mbps,
        median.as_secs_f64(),
        rate(times[PASSES - 1]),
        rate(times[0]),
        met(mbps >= 1000.0),
        findings.len(),
        findings.len() as f64 / (bytes as f64 / 1e8),
        met((findings.len() as f64 / (bytes as f64 / 1e8)) < 0.5)
    );
    if !findings.is_empty() {
        md.push_str("| file | line | rule |\n|---|---|---|\n");
        for (i, rule, line) in findings.iter().take(30) {
            writeln!(md, "| {} | {line} | {rule} |", files[*i].display()).unwrap();
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
    let mut md = String::from("## Side by side\n\nSame machine, same run, same trees. Speed: wall clock over the real-source tree (all cores unless noted; the tools' own file walking, reading and output included). Recall: the planted corpus above; a secret counts as found when a 16-byte slice of its exact text appears in the tool's output (Kingfisher, ripsecrets print findings in plaintext), the SHA-1 of the exact secret does (detect-secrets' `hashed_secret`; a finding whose boundaries differ from the planted secret is not counted), or, for leakwatch, its fingerprint.\n\n| tool | real source: wall | MB/s | vs leakwatch | recall on planted corpus |\n|---|---|---|---|---|\n");
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
    md.push_str(&real_source(&engine, &files, bytes));
    if std::env::var_os("LW_BENCH_NO_PEERS").is_none() {
        md.push_str(&peers_section(
            &root,
            &root.join("real"),
            bytes,
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
