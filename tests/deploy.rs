//! Deployment files: the systemd unit passes `systemd-analyze verify` (pointed at the built
//! binary, since /usr/local/bin may not hold one here) and the example config is accepted by
//! the daemon's own parser through `leakwatch rules --config`.
use std::process::Command;

use leakwatch_tests::{bin, TempDir};

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(root().join("deploy/leakwatch.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/leakwatch daemon"));
    let dir = TempDir::new("unit");
    let path = dir.join("leakwatch.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/leakwatch", &bin().display().to_string()),
    )
    .unwrap();
    verify(&[], &path);
}

/// `systemd-analyze verify ARGS UNIT` succeeds with no complaint about our unit (only
/// those count: the host's own units are not ours to verify).
fn verify(args: &[String], unit: &std::path::Path) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(args)
        .arg(unit)
        .output()
        .expect("systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("leakwatch.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify {args:?}: {err}"
    );
}

#[test]
fn example_config_is_accepted() {
    let out = Command::new(bin())
        .args(["rules", "--config"])
        .arg(root().join("deploy/leakwatch.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("acme-internal-token"));
    assert!(text.lines().count() >= 46);
}

#[test]
fn bad_config_is_one_clear_error() {
    let dir = TempDir::new("badcfg");
    let p = dir.join("bad.toml");
    std::fs::write(&p, "metrics_adr = 3\n").unwrap();
    let out = Command::new(bin())
        .args(["rules", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("bad.toml") && err.contains("unknown field"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}

/// The Prometheus alert rules load and pass their promtool unit tests, and every metric
/// they use is one the daemon registers and the README documents.
#[test]
fn prometheus_rules_pass_promtool_and_use_real_metrics() {
    let promtool = std::env::var_os("LEAKWATCH_PROMTOOL")
        .expect("LEAKWATCH_PROMTOOL is not set: run the tests with `cargo xtask test`");
    let deploy = root().join("deploy");
    for (verb, file) in [
        ("check", "leakwatch.rules.yml"),
        ("test", "leakwatch.rules.test.yml"),
    ] {
        let out = Command::new(&promtool)
            .args([verb, "rules", file])
            .current_dir(&deploy)
            .output()
            .expect("running promtool");
        assert!(
            out.status.success(),
            "promtool {verb} rules {file}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rules = std::fs::read_to_string(deploy.join("leakwatch.rules.yml")).unwrap();
    let metrics_src = std::fs::read_to_string(root().join("leakwatch/src/metrics.rs")).unwrap();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut used: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("leakwatch_"))
        .collect();
    used.sort();
    used.dedup();
    assert!(used.len() >= 5, "{used:?}");
    for m in used {
        assert!(
            metrics_src.contains(&format!("\"{m}\"")),
            "{m} is not registered by the daemon"
        );
        assert!(
            readme.contains(&format!("`{m}")),
            "{m} is not documented in README.md"
        );
    }
}

#[test]
fn systemd_unit_exposure_is_at_most_4_5() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(root().join("deploy/leakwatch.service"))
        .output()
        .expect("systemd-analyze");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    eprintln!("systemd-analyze security --offline=true deploy/leakwatch.service: {line}");
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in: {line}"));
    assert!(score <= 4.5, "exposure {score} > 4.5: {line}");
}

#[test]
fn install_into_a_root_verifies_is_idempotent_and_uninstall_keeps_the_config() {
    let r = TempDir::new("root");
    // The OS part the unit relies on (ExecReload's kill), and a Prometheus to feed rules.
    std::fs::create_dir_all(r.join("bin")).unwrap();
    std::fs::copy(
        ["/usr/bin/kill", "/bin/kill"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("kill(1)"),
        r.join("bin/kill"),
    )
    .unwrap();
    std::fs::create_dir_all(r.join("etc/prometheus")).unwrap();
    let run = |cmd: &str| {
        let out = Command::new(bin())
            .args([cmd, "--root"])
            .arg(&r)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = run("install");
    for f in [
        "usr/local/bin/leakwatch",
        "etc/systemd/system/leakwatch.service",
        "etc/leakwatch/leakwatch.toml",
        "usr/local/share/leakwatch/leakwatch.rules.yml",
        "etc/prometheus/rules.d/leakwatch.rules.yml",
    ] {
        assert!(r.join(f).is_file(), "{f} not installed:\n{first}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = |f: &str| std::fs::metadata(r.join(f)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("usr/local/bin/leakwatch"), 0o755);
    assert_eq!(mode("etc/leakwatch/leakwatch.toml"), 0o600);
    assert_eq!(
        std::fs::read(r.join("usr/local/bin/leakwatch")).unwrap(),
        std::fs::read(bin()).unwrap(),
        "the installed binary is this one"
    );
    verify(
        &[format!("--root={}", r.display())],
        &r.join("etc/systemd/system/leakwatch.service"),
    );
    // Again: nothing changes; an edited config is never overwritten.
    std::fs::write(
        r.join("etc/leakwatch/leakwatch.toml"),
        "dedupe_seconds = 5\n",
    )
    .unwrap();
    let second = run("install");
    assert!(
        !second.contains("installed:") && second.contains("unchanged: binary"),
        "{second}"
    );
    assert_eq!(
        std::fs::read_to_string(r.join("etc/leakwatch/leakwatch.toml")).unwrap(),
        "dedupe_seconds = 5\n"
    );
    let gone = run("uninstall");
    assert!(!r.join("usr/local/bin/leakwatch").exists(), "{gone}");
    assert!(!r.join("etc/systemd/system/leakwatch.service").exists());
    assert!(!r
        .join("etc/prometheus/rules.d/leakwatch.rules.yml")
        .exists());
    assert!(
        r.join("etc/leakwatch/leakwatch.toml").exists(),
        "config kept"
    );
    let again = run("uninstall");
    assert!(again.contains("absent: binary"), "{again}");
    let _ = std::fs::remove_dir_all(&r);
}

#[test]
fn a_real_prometheus_fires_the_leak_alert_after_a_real_leak() {
    use leakwatch_tests::*;
    use std::time::{Duration, Instant};
    let prom = std::env::var("LEAKWATCH_PROMETHEUS")
        .expect("LEAKWATCH_PROMETHEUS: the Prometheus server xtask installs (cargo xtask test)");
    let mut d = Daemon::start("d-prom");
    let scratch = d.scratch();
    let port = free_port();
    let web = format!("127.0.0.1:{port}");
    let cfg = scratch.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: leakwatch\n    static_configs:\n      - targets: ['{}']\n",
            root().join("deploy/leakwatch.rules.yml").display(),
            d.metrics
        ),
    )
    .unwrap();
    let mut p = Command::new(&prom)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            scratch.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(scratch.join("prometheus.log")).unwrap())
        .spawn()
        .expect("starting prometheus");
    let up = wait_until(60, "prometheus scraping leakwatch", || {
        http_get(&web, "/api/v1/query?query=up%7Bjob%3D%22leakwatch%22%7D")
            .filter(|b| b.contains("\"value\"") && b.contains("\"1\""))
    });
    assert!(up.contains("leakwatch"), "{up}");
    // Two scrapes with the series at 0 before the leak (they exist from the start).
    std::thread::sleep(Duration::from_secs(3));
    let (secret, text) = secret("openai-project-key");
    let key = scratch.join("key");
    std::fs::write(&key, &text).unwrap();
    let out = scratch.join("app.log");
    let mut c = python()
        .args([
            "-c",
            "import sys; open(sys.argv[2], 'a').write('key=' + open(sys.argv[1]).read() + '\\n')",
        ])
        .arg(&key)
        .arg(&out)
        .spawn()
        .unwrap();
    assert!(c.wait().unwrap().success());
    let t0 = Instant::now();
    let alerts = wait_until(60, "LeakwatchCredentialLeaked firing", || {
        http_get(&web, "/api/v1/alerts").filter(|b| {
            b.contains("\"alertname\":\"LeakwatchCredentialLeaked\"")
                && b.contains("\"rule\":\"openai-project-key\"")
                && b.contains("\"state\":\"firing\"")
        })
    });
    eprintln!(
        "prometheus: LeakwatchCredentialLeaked firing {:.1} s after the leak",
        t0.elapsed().as_secs_f64()
    );
    assert!(alerts.contains("\"source\":\"file\""), "{alerts}");
    let _ = p.kill();
    let _ = p.wait();
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}
