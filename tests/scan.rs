//! `leakwatch scan` as a user runs it: directories, stdin, formats, exit codes, binary
//! skipping and big streamed files, with secrets generated here.
use std::{
    io::Write,
    process::{Command, Stdio},
};

use leakwatch_tests::*;

fn tree(name: &str) -> TempDir {
    let d = TempDir::new(&format!("scan-{name}"));
    std::fs::create_dir_all(d.join("sub/deeper")).unwrap();
    d
}

/// One JSON value per line of a `--format json` run's stdout.
fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn finds_secrets_in_a_tree_with_lines_and_exit_code_1() {
    let d = tree("tree");
    let (gh, _) = secret("github-pat");
    let (ak, _) = secret("anthropic-api-key");
    std::fs::write(
        d.join("sub/.env"),
        format!("# config\nDEBUG=1\nGITHUB_TOKEN={gh}\n"),
    )
    .unwrap();
    std::fs::write(
        d.join("sub/deeper/app.log"),
        format!("line1\nline2\nline3\nclient init key={ak}\n"),
    )
    .unwrap();
    std::fs::write(d.join("clean.txt"), "nothing here\n").unwrap();
    let out = Command::new(bin())
        .args(["scan", "--format", "json"])
        .arg(&d)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let g = lines
        .iter()
        .find(|l| s(l, "rule") == "github-pat")
        .expect("github finding");
    assert!(s(g, "path").ends_with("sub/.env"));
    assert_eq!(n(g, "line"), 3);
    assert_eq!(n(g, "column"), 14);
    assert_eq!(s(g, "fingerprint"), fingerprint(&gh));
    let a = lines
        .iter()
        .find(|l| s(l, "rule") == "anthropic-api-key")
        .expect("anthropic finding");
    assert_eq!(n(a, "line"), 4);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains(&gh) && !text.contains(&ak),
        "plaintext in scan output"
    );
}

#[test]
fn clean_is_0_unreadable_is_2() {
    let d = tree("clean");
    std::fs::write(d.join("a.txt"), "hello\n").unwrap();
    let out = Command::new(bin()).arg("scan").arg(&d).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let out = Command::new(bin())
        .arg("scan")
        .arg(d.join("does-not-exist"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does-not-exist"));
}

#[test]
fn stdin_and_sarif() {
    let (k, _) = secret("stripe-secret-key");
    let mut c = Command::new(bin())
        .args(["scan", "--format", "sarif", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(format!("a\nb\nSTRIPE={k}\n").as_bytes())
        .unwrap();
    let out = c.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("SARIF is JSON");
    assert_eq!(v["version"], "2.1.0");
    let r = &v["runs"][0]["results"][0];
    assert_eq!(r["ruleId"], "stripe-secret-key");
    assert_eq!(
        r["locations"][0]["physicalLocation"]["region"]["startLine"],
        3
    );
    assert_eq!(r["partialFingerprints"]["secretSha256/v1"], fingerprint(&k));
    assert!(
        v["runs"][0]["tool"]["driver"]["rules"]
            .as_array()
            .unwrap()
            .len()
            >= 45
    );
}

#[test]
fn binary_files_are_skipped_unless_asked() {
    let d = tree("bin");
    let (k, _) = secret("groq-api-key");
    let mut b = vec![0u8, 1, 2, 3];
    b.extend_from_slice(format!("GROQ={k}\n").as_bytes());
    std::fs::write(d.join("blob.bin"), &b).unwrap();
    let out = Command::new(bin()).args(["scan"]).arg(&d).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 binary file(s) skipped"));
    let out = Command::new(bin())
        .args(["scan", "--binary", "--format", "json"])
        .arg(&d)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn big_file_is_streamed_and_a_secret_on_a_chunk_edge_is_found_once() {
    let d = tree("big");
    let (k, _) = secret("openai-project-key");
    let mut f = std::fs::File::create(d.join("big.log")).unwrap();
    let line = "2026-11-23T08:00:00Z INFO agent step completed without incident\n";
    let mut written = 0usize;
    let mut lines = 0usize;
    // Place the key across the 1 MiB boundary of the second chunk, deep in a 20 MB file.
    let edge = 2 * (1 << 20) - k.len() / 2 - "OPENAI_API_KEY=".len();
    while written + line.len() < edge {
        f.write_all(line.as_bytes()).unwrap();
        written += line.len();
        lines += 1;
    }
    let pad = edge - written;
    f.write_all(&vec![b'x'; pad]).unwrap();
    f.write_all(format!(" OPENAI_API_KEY={k}\n").as_bytes())
        .unwrap();
    lines += 1;
    while written < 20 << 20 {
        f.write_all(line.as_bytes()).unwrap();
        written += line.len();
    }
    drop(f);
    let out = Command::new(bin())
        .args(["scan", "--format", "json"])
        .arg(d.join("big.log"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let hits = json_lines(&out);
    assert_eq!(hits.len(), 1, "{hits:#?}");
    assert_eq!(s(&hits[0], "fingerprint"), fingerprint(&k));
    assert_eq!(n(&hits[0], "line") as usize, lines);
}

#[test]
fn baseline_ignore_files_and_inline_markers_suppress_known_findings() {
    let d = tree("ignore");
    let (old, _) = secret("openai-project-key");
    let (marked, _) = secret("github-pat");
    let (new, _) = secret("stripe-secret-key");
    std::fs::write(d.join("a.env"), format!("OPENAI_API_KEY={old}\n")).unwrap();
    std::fs::write(
        d.join("sub/b.py"),
        format!("TOKEN = \"{marked}\"  # leakwatch:allow test fixture\n"),
    )
    .unwrap();
    let scan = |extra: &[&std::ffi::OsStr]| {
        Command::new(bin())
            .args(["scan", "--format", "json"])
            .args(extra)
            .arg(d.join("a.env"))
            .arg(d.join("sub"))
            .current_dir(&d)
            .output()
            .unwrap()
    };
    // The marked line is never reported; the old key is, until it is in a baseline.
    let first = scan(&[]);
    assert_eq!(first.status.code(), Some(1));
    let report = String::from_utf8_lossy(&first.stdout).to_string();
    assert_eq!(report.lines().count(), 1, "{report}");
    assert!(report.contains(&fingerprint(&old)));
    let baseline = d.join("baseline.jsonl");
    std::fs::write(&baseline, &report).unwrap();
    let quiet = scan(&["--ignore".as_ref(), baseline.as_os_str()]);
    assert_eq!(
        quiet.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&quiet.stdout)
    );
    // A new secret still shows through the baseline, and a plain fingerprint list in
    // `.leakwatchignore` is read without being named.
    std::fs::write(d.join("sub/c.sh"), format!("export STRIPE_KEY={new}\n")).unwrap();
    let again = scan(&["--ignore".as_ref(), baseline.as_os_str()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stdout).contains(&fingerprint(&new)));
    std::fs::write(
        d.join(".leakwatchignore"),
        format!(
            "# rotated 2026-11-23\n{}\n{}  stripe test key\n",
            fingerprint(&old),
            fingerprint(&new)
        ),
    )
    .unwrap();
    let human = Command::new(bin())
        .arg("scan")
        .arg(d.join("a.env"))
        .arg(d.join("sub"))
        .current_dir(&d)
        .output()
        .unwrap();
    assert_eq!(human.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&human.stderr).contains("3 suppressed"),
        "{}",
        String::from_utf8_lossy(&human.stderr)
    );
    // A malformed ignore file is one clear error, exit 2.
    std::fs::write(d.join("bad"), "sha256:nothex\n").unwrap();
    let bad = scan(&["--ignore".as_ref(), d.join("bad").as_os_str()]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("bad:1: not a fingerprint"), "{err}");
    for out in [
        &first.stdout,
        &quiet.stdout,
        &again.stdout,
        &human.stdout,
        &bad.stderr,
    ] {
        for secret in [&old, &marked, &new] {
            assert!(
                !contains(out, secret.as_bytes()),
                "plaintext secret in scan output"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// Runs git in `dir` with a fixed identity; returns its trimmed stdout.
fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=leakwatch test",
            "-c",
            "user.email=test@example.invalid",
        ])
        .args([
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Writes `file`, commits it (with whatever else is staged) and returns the commit.
fn commit(dir: &std::path::Path, file: &str, data: &[u8], message: &str) -> String {
    std::fs::write(dir.join(file), data).unwrap();
    git(dir, &["add", file]);
    git(dir, &["commit", "-q", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

#[test]
fn git_history_finds_deleted_and_branch_only_secrets_with_their_commit() {
    let d = tree("git");
    // Committed, then deleted; committed on a side branch only; never committed.
    let (deleted, _) = secret("github-pat");
    let (branch, _) = secret("anthropic-api-key");
    let (uncommitted, _) = secret("openai-project-key");
    let (streamed, _) = secret("slack-token");
    git(&d, &["init", "-q"]);
    // Blobs over 8 MiB are streamed from git's pipe: a text one with a secret in the
    // middle, and a binary one that is skipped part-way; the blobs after them must still
    // be read in step.
    let mut big = "2026-11-23 worker: request ok\n".repeat(300_000);
    big.insert_str(big.len() / 2, &format!("export SLACK_TOKEN={streamed}\n"));
    let mut binary = vec![0u8; 9 << 20];
    binary[100..110].copy_from_slice(b"not text!\n");
    std::fs::write(d.join("big.bin"), &binary).unwrap();
    git(&d, &["add", "big.bin"]);
    let big_commit = commit(&d, "big.log", big.as_bytes(), "big files");
    let config = format!("# ci\nGITHUB_TOKEN={deleted}\n");
    let added = commit(&d, "config.env", config.as_bytes(), "add config");
    git(&d, &["rm", "-q", "config.env"]);
    git(&d, &["commit", "-q", "-m", "remove config"]);
    // The same blob again in a later commit: still one finding, from the first commit.
    commit(&d, "copy.env", config.as_bytes(), "copy");
    git(&d, &["rm", "-q", "copy.env"]);
    git(&d, &["commit", "-q", "-m", "remove copy"]);
    git(&d, &["checkout", "-q", "-b", "side"]);
    let log = format!("boot\nclient key={branch}\n");
    let on_side = commit(&d, "sub/app.log", log.as_bytes(), "log");
    git(&d, &["checkout", "-q", "main"]);
    std::fs::write(d.join("wip.txt"), format!("OPENAI_API_KEY={uncommitted}\n")).unwrap();

    let hist = Command::new(bin())
        .args(["scan", "--git", "--format", "json"])
        .arg(&d)
        .output()
        .unwrap();
    assert_eq!(
        hist.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&hist.stderr)
    );
    let found = json_lines(&hist);
    assert_eq!(found.len(), 3, "{found:#?}");
    let b = found
        .iter()
        .find(|f| s(f, "rule") == "slack-token")
        .expect("streamed secret");
    assert_eq!(s(b, "fingerprint"), fingerprint(&streamed));
    assert_eq!(s(b, "commit"), big_commit);
    assert_eq!(n(b, "line"), 150_001);
    let g = found
        .iter()
        .find(|f| s(f, "rule") == "github-pat")
        .expect("deleted secret");
    assert_eq!(s(g, "fingerprint"), fingerprint(&deleted));
    assert_eq!(s(g, "commit"), added);
    assert_eq!(n(g, "line"), 2);
    assert!(s(g, "path").ends_with("config.env"), "{g}");
    let a = found
        .iter()
        .find(|f| s(f, "rule") == "anthropic-api-key")
        .expect("branch secret");
    assert_eq!(s(a, "commit"), on_side);
    assert!(s(a, "path").ends_with("sub/app.log"), "{a}");

    let summary = String::from_utf8_lossy(&hist.stderr);
    assert!(summary.is_empty(), "{summary}");

    // The work tree holds the uncommitted one and big.log, not the deleted or branch ones
    // (git's objects are compressed).
    let work = Command::new(bin())
        .args(["scan", "--format", "json"])
        .arg(&d)
        .output()
        .unwrap();
    let mut found: Vec<String> = json_lines(&work)
        .iter()
        .map(|f| {
            assert!(f.get("commit").is_none());
            s(f, "fingerprint").to_string()
        })
        .collect();
    found.sort();
    let mut want = vec![fingerprint(&uncommitted), fingerprint(&streamed)];
    want.sort();
    assert_eq!(found, want);

    // Human output names the commit; SARIF carries it as a property.
    let human = Command::new(bin())
        .args(["scan", "--git", "--color", "never"])
        .arg(&d)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains(&format!("(commit {})", &added[..12])),
        "{text}"
    );
    let sarif = Command::new(bin())
        .args(["scan", "--git", "--format", "sarif"])
        .arg(&d)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&sarif.stdout).unwrap();
    let commits: Vec<&str> = v["runs"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["properties"]["commit"].as_str().unwrap())
        .collect();
    assert!(commits.contains(&added.as_str()) && commits.contains(&on_side.as_str()));

    // Not a repository: one clear error, exit 2.
    let plain = tree("git-plain");
    let bad = Command::new(bin())
        .args(["scan", "--git"])
        .arg(&plain)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("not a Git repository"), "{err}");

    for out in [&hist, &work, &human, &sarif] {
        let all = [&out.stdout[..], &out.stderr[..]].concat();
        for secret in [&deleted, &branch, &uncommitted, &streamed] {
            assert!(
                !contains(&all, secret.as_bytes()),
                "plaintext in scan output"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&plain);
}

/// Named on the command line, a FIFO or a process substitution is read (it is not "0
/// files, clean"); met in a walk, a FIFO is skipped and counted, never blocked on.
#[test]
fn fifos_and_process_substitutions_are_read_when_named() {
    let d = tree("fifo");
    let (k, _) = secret("anthropic-api-key");
    let fp = fingerprint(&k);
    let keyfile = d.join("key.txt");
    std::fs::write(&keyfile, format!("ANTHROPIC_API_KEY={k}\n")).unwrap();
    // A process substitution: bash gives the scanner /dev/fd/N, a pipe.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{} scan --format json <(cat {})",
            bin().display(),
            keyfile.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(json_lines(&out)
        .iter()
        .any(|f| f["fingerprint"] == fp.as_str()));
    // A named FIFO, given by name, with a writer.
    let fifo = d.join("sub/pipe");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let writer = Command::new("sh")
        .arg("-c")
        .arg(format!("cat {} > {}", keyfile.display(), fifo.display()))
        .spawn()
        .unwrap();
    let out = Command::new(bin())
        .args(["scan", "--format", "json"])
        .arg(&fifo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(json_lines(&out)
        .iter()
        .any(|f| f["fingerprint"] == fp.as_str()));
    drop(writer);
    // In a walk the FIFO (now without a writer) is skipped and counted; the walk ends.
    std::fs::remove_file(&keyfile).unwrap();
    let out = Command::new(bin()).args(["scan"]).arg(&d).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 FIFO(s)/device(s) skipped"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
