//! `cargo xtask`: installs the eBPF toolchain this project needs (idempotently), builds the
//! kernel object with Debian's rustc and embeds it in the daemon, and runs the checks,
//! tests and benchmarks.
use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

/// Pinned versions (see shared notes/toolchain.md: aya 0.14 line, LLVM 22 = Debian rustc's).
const BPF_LINKER_VERSION: &str = "0.13.0";
const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
];
/// Programs the integration tests run.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("curl", "curl"),
    ("ss", "iproute2"),
    ("systemd-analyze", "systemd"),
    // etcd-client's build script compiles etcd's protobuf definitions with it.
    ("protoc", "protobuf-compiler"),
    // Builds the Go TLS client the tls suite wraps (Debian's Go 1.19).
    ("go", "golang-go"),
];

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the eBPF toolchain if anything is missing.
    Install,
    /// Compile the kernel programs (bpfel-unknown-none).
    BuildEbpf,
    /// Kernel programs + release daemon at target/release/leakwatch.
    Build,
    /// Build, then run the daemon on its embedded defaults (extra args go to `daemon`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// fmt, clippy, unit tests, integration tests with the real eBPF programs (root).
    Test {
        /// Only run integration tests whose name contains this.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Run the benchmarks and rewrite BENCHMARKS.md.
    Bench {
        /// Run only this part and replace only its sections of BENCHMARKS.md.
        #[arg(long, value_parser = ["freeze", "write", "tls", "cost", "hooks", "scan", "actions", "core", "fleet"])]
        only: Option<String>,
    },
    /// Fuzz with cargo fuzz (libFuzzer) for this many seconds: the detection engine, or
    /// with --target the ring-record decoder (`decode`) or the control parser (`control`).
    Fuzz {
        #[arg(default_value_t = 300)]
        seconds: u64,
        #[arg(long, default_value = "engine", value_parser = ["engine", "decode", "control"])]
        target: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Install => install(),
        Cmd::BuildEbpf => install().and_then(|_| build_ebpf()),
        Cmd::Build => install().and_then(|_| build()),
        Cmd::Run { args } => install().and_then(|_| build()).and_then(|_| run(&args)),
        Cmd::Test { filter } => test(filter.as_deref()),
        Cmd::Bench { only } => install()
            .and_then(|_| build())
            .and_then(|_| bench(only.as_deref())),
        Cmd::Fuzz { seconds, target } => install()
            .and_then(|_| build_ebpf())
            .and_then(|_| fuzz(&target, seconds)),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn cargo_bin() -> PathBuf {
    env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into())
        .join(".cargo/bin")
}

fn sh(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {:?}", cmd);
    let st = cmd
        .status()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !st.success() {
        bail!("{:?} failed with {st}", cmd.get_program());
    }
    Ok(())
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn bpf_linker_ok() -> bool {
    Command::new(cargo_bin().join("bpf-linker"))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false)
}

/// Installs what is missing; a no-op (well under a second) when everything is present.
fn install() -> Result<()> {
    let llvm_ok = std::fs::read_dir("/usr/lib/llvm-22/lib")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libLLVM"))
        })
        .unwrap_or(false);
    let debian_ok = Path::new("/usr/bin/rustc").exists()
        && Path::new("/usr/bin/cargo").exists()
        && Path::new("/usr/lib/rustlib/bpfel-unknown-none/lib").exists()
        && llvm_ok;
    let mut pkgs: Vec<&str> = Vec::new();
    if !debian_ok {
        pkgs.extend(APT_PACKAGES);
    }
    for (cmd, pkg) in TEST_PACKAGES {
        if !have(cmd) {
            pkgs.push(pkg);
        }
    }
    if !pkgs.is_empty() {
        sh(Command::new("apt-get").arg("update").arg("-qq"))?;
        sh(Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    install_promtool()?;
    install_etcd()?;
    if !bpf_linker_ok() {
        let path = format!(
            "/usr/lib/llvm-22/bin:{}",
            env::var("PATH").unwrap_or_default()
        );
        sh(Command::new(cargo_bin().join("cargo"))
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("PATH", path))?;
    }
    Ok(())
}

/// promtool (to test deploy/leakwatch.rules.yml) and the Prometheus server (which the tests
/// start on loopback, with its own data dir), taken from Debian's prometheus package
/// without installing it: installing would also set up and start a system Prometheus.
fn promtool() -> PathBuf {
    root().join("target/tools/promtool")
}

fn prometheus() -> PathBuf {
    root().join("target/tools/prometheus")
}

fn install_promtool() -> Result<()> {
    if promtool().exists() && prometheus().exists() {
        return Ok(());
    }
    let x = extract_deb("prometheus")?;
    std::fs::copy(x.join("usr/bin/promtool"), promtool())?;
    std::fs::copy(x.join("usr/bin/prometheus"), prometheus())?;
    let _ = std::fs::remove_dir_all(x.parent().unwrap_or(&x));
    Ok(())
}

/// Downloads Debian package `pkg` and unpacks it (not installed: no maintainer scripts run);
/// returns the unpacked tree, `target/tools/PKG-deb/x`.
fn extract_deb(pkg: &str) -> Result<PathBuf> {
    let dir = root().join(format!("target/tools/{pkg}-deb"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let download = || {
        sh(Command::new("apt-get")
            .current_dir(&dir)
            .args(["download", "-qq", pkg]))
    };
    if download().is_err() {
        // Package lists may be missing or stale on a fresh machine.
        sh(Command::new("apt-get").args(["update", "-qq"]))?;
        download()?;
    }
    let deb = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| {
            anyhow::anyhow!("apt-get download {pkg} left no .deb in {}", dir.display())
        })?;
    sh(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(dir.join("x")))?;
    Ok(dir.join("x"))
}

/// etcd (the fleet tests start one on loopback with its own data dir), taken from Debian's
/// etcd-server package without installing it, which would set up a system etcd.
fn etcd() -> PathBuf {
    root().join("target/tools/etcd")
}

fn install_etcd() -> Result<()> {
    if etcd().exists() {
        return Ok(());
    }
    let x = extract_deb("etcd-server")?;
    std::fs::copy(x.join("usr/bin/etcd"), etcd())?;
    let _ = std::fs::remove_dir_all(x.parent().unwrap_or(&x));
    Ok(())
}

fn ebpf_object() -> PathBuf {
    root().join("target/bpfel-unknown-none/release/leakwatch")
}

fn build_ebpf() -> Result<()> {
    let path = format!(
        "{}:{}",
        cargo_bin().display(),
        env::var("PATH").unwrap_or_default()
    );
    sh(Command::new("/usr/bin/cargo")
        .current_dir(root())
        .args([
            "build",
            "-p",
            "leakwatch-ebpf",
            "--bins",
            "--release",
            "--target",
            "bpfel-unknown-none",
        ])
        .env("RUSTC", "/usr/bin/rustc")
        .env("RUSTC_BOOTSTRAP", "aya_ebpf,leakwatch")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "--cfg=bpf_target_arch=\"x86_64\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf",
        )
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env("PATH", path))?;
    if !ebpf_object().exists() {
        bail!(
            "the eBPF build finished but {} is missing",
            ebpf_object().display()
        );
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root())
        .env("LEAKWATCH_BPF_OBJECT", ebpf_object());
    c
}

fn build() -> Result<()> {
    build_ebpf()?;
    sh(cargo().args(["build", "--release", "-p", "leakwatch"]))
}

fn run(args: &[String]) -> Result<()> {
    let bin = root().join("target/release/leakwatch");
    sh(Command::new(bin).arg("daemon").args(args))
}

fn test(filter: Option<&str>) -> Result<()> {
    install()?;
    sh(cargo().args(["fmt", "--all", "--check"]))?;
    build()?;
    sh(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "leakwatch-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Unit tests of every userspace crate (pure code: decoding, rules, classification).
    sh(cargo().args([
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "leakwatch-ebpf",
        "--lib",
        "--bins",
    ]))?;
    // Integration tests: start the real daemon, load the real eBPF programs, run real programs.
    let mut it = cargo();
    it.args([
        "test",
        "--release",
        "-p",
        "leakwatch-tests",
        "--tests",
        "--",
        // Every daemon sees the whole host (default scope: every process), so each test's
        // writes are scanned by every other test's daemon: two at a time keeps the 2-core
        // machine from falling behind its own 15 s alert deadlines.
        "--test-threads=2",
    ])
    .env("LEAKWATCH_BIN", root().join("target/release/leakwatch"))
    .env("LEAKWATCH_PROMTOOL", promtool())
    .env("LEAKWATCH_PROMETHEUS", prometheus())
    .env("LEAKWATCH_ETCD", etcd());
    if let Some(f) = filter {
        it.arg(f);
    }
    sh(&mut it)?;
    if filter.is_none() {
        unit_capabilities()?;
    }
    Ok(())
}

/// The exec, freeze (kill + sever), held, write and flood tests again, every daemon run under exactly the
/// unit's `CapabilityBoundingSet` with `NoNewPrivileges` (setpriv): proof the unit's
/// capability set is enough, on a machine without systemd as PID 1.
fn unit_capabilities() -> Result<()> {
    let unit = std::fs::read_to_string(root().join("deploy/leakwatch.service"))?;
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .context("deploy/leakwatch.service has no CapabilityBoundingSet=")?
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert!(
        unit.lines().any(|l| l == "NoNewPrivileges=yes"),
        "the unit sets NoNewPrivileges=yes"
    );
    let wrap = format!(
        "setpriv --bounding-set=-all,{} --inh-caps=-all --nnp",
        caps.join(",")
    );
    eprintln!(
        "xtask: exec, freeze, held, write and flood tests under the unit's capabilities: {wrap}"
    );
    sh(cargo()
        .args([
            "test",
            "--release",
            "-p",
            "leakwatch-tests",
            "--test",
            "exec",
            "--test",
            "freeze",
            "--test",
            "held",
            "--test",
            "write",
            "--test",
            "flood",
            "--",
            "--test-threads=2",
        ])
        .env("LEAKWATCH_BIN", root().join("target/release/leakwatch"))
        .env("LEAKWATCH_PROMTOOL", promtool())
        .env("LEAKWATCH_DAEMON_WRAP", wrap))
}

/// Peers compared in BENCHMARKS.md, installed from the registries this machine reaches.
fn install_peers() -> Result<()> {
    if !have("kingfisher") || !have("detect-secrets") {
        sh(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "-q",
            "kingfisher-bin",
            "detect-secrets",
        ]))?;
    }
    if !have("ripsecrets") {
        sh(Command::new(cargo_bin().join("cargo")).args(["install", "--locked", "ripsecrets"]))?;
    }
    Ok(())
}

/// Every part, or only `only` (freeze, write, tls, cost, hooks, scan, actions, core, fleet): the peers are needed by scan
/// alone, perf by cost alone.
fn bench(only: Option<&str>) -> Result<()> {
    if only.is_none_or(|p| p == "scan") {
        install_peers()?;
    }
    // The cost part profiles the agent's core with perf.
    if only.is_none_or(|p| p == "cost") && !have("perf") {
        sh(Command::new("apt-get").args(["update", "-qq"]))?;
        sh(Command::new("apt-get")
            .args(["install", "-y", "-qq", "linux-perf"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let mut c = cargo();
    c.args([
        "run",
        "--release",
        "-p",
        "leakwatch-tests",
        "--bin",
        "bench",
        "--",
    ])
    .arg(root().join("BENCHMARKS.md"))
    .env("LEAKWATCH_BIN", root().join("target/release/leakwatch"))
    .env("LEAKWATCH_ETCD", etcd());
    if let Some(p) = only {
        c.args(["--only", p]);
    }
    sh(&mut c)
}

/// cargo fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them
/// (no sanitizer: the stable toolchain here ships no ASan runtime).
fn fuzz(target: &str, seconds: u64) -> Result<()> {
    if !have("cargo-fuzz") {
        sh(Command::new(cargo_bin().join("cargo")).args(["install", "--locked", "cargo-fuzz"]))?;
    }
    let dict = root().join("target/fuzz-engine.dict");
    std::fs::write(&dict, keyword_dict()?)?;
    sh(Command::new(cargo_bin().join("cargo"))
        .current_dir(root().join("fuzz"))
        .env("RUSTC_BOOTSTRAP", "1")
        .env("LEAKWATCH_BPF_OBJECT", ebpf_object())
        .args(["fuzz", "run", "--sanitizer", "none", target, "--"])
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-dict={}", dict.display())))
}

/// A libFuzzer dictionary of every rule keyword (literals from the built-in rule files), so
/// the fuzzer reaches each rule's regex quickly.
fn keyword_dict() -> Result<String> {
    let mut rules = String::new();
    for file in ["rules.toml", "rules_saas.toml"] {
        rules += &std::fs::read_to_string(root().join("leakwatch/src/detect").join(file))?;
    }
    let mut out = String::new();
    for line in rules.lines().filter_map(|l| l.strip_prefix("keywords = [")) {
        for kw in line.trim_end_matches(']').split(',') {
            let kw = kw.trim().trim_matches(|c| c == '"' || c == '\'');
            if !kw.is_empty() {
                out.push_str(&format!(
                    "\"{}\"\n",
                    kw.replace('\\', "\\\\").replace('"', "\\\"")
                ));
            }
        }
    }
    Ok(out)
}
