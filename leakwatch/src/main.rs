//! leakwatch command line: parses arguments and hands off to the library.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use leakwatch::daemon::{self, Overrides};

const DEFAULT_SOCKET: &str = "/run/leakwatch/control.sock";

#[derive(Parser)]
#[command(
    name = "leakwatch",
    version,
    about = "Watch a Linux host for credential leaks; freeze a leaked credential."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where the fleet store is; defaults come from the config's `[fleet]`.
#[derive(clap::Args)]
struct EtcdArgs {
    /// Config file whose `[fleet]` names etcd (default: the installed one, if any).
    #[arg(long)]
    config: Option<PathBuf>,
    /// etcd endpoint, http(s)://HOST:PORT (repeatable).
    #[arg(long)]
    etcd: Vec<String>,
    /// Key prefix (default /leakwatch/).
    #[arg(long)]
    prefix: Option<String>,
    /// CA certificate (PEM) of the etcd servers.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate and key (PEM).
    #[arg(long)]
    cert: Option<PathBuf>,
    #[arg(long)]
    key: Option<PathBuf>,
    /// etcd user; its password is read from --password-file.
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    password_file: Option<PathBuf>,
}

impl EtcdArgs {
    fn target(self) -> leakwatch::fleet::cli::Target {
        leakwatch::fleet::cli::Target {
            config: self.config,
            etcd: self.etcd,
            prefix: self.prefix,
            ca: self.ca,
            cert: self.cert,
            key: self.key,
            user: self.user,
            password_file: self.password_file,
        }
    }
}

#[derive(Subcommand)]
enum FleetCmd {
    /// Freeze a credential on every host (read from stdin or a hidden prompt, never argv).
    /// Exit status 1 if some live host has not applied it within --wait.
    Freeze {
        /// Freeze by fingerprint (sha256:…) instead of the credential itself.
        #[arg(long)]
        fingerprint: Option<String>,
        /// Read the credential from this file (first line, newline stripped).
        #[arg(long)]
        from_file: Option<PathBuf>,
        /// Seconds to wait for every live host to acknowledge.
        #[arg(long, default_value_t = 10.0)]
        wait: f64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Refused: a credential must not be passed in argv.
        #[arg(hide = true)]
        stray: Vec<String>,
    },
    /// Lift a fleet freeze on every host (explicit: removing the entry by hand does not).
    Unfreeze {
        fingerprint: String,
        /// Seconds to wait for every host to lift it.
        #[arg(long, default_value_t = 10.0)]
        wait: f64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Remove every record of a host that is gone for good (it stops being listed offline).
    Forget {
        host: String,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Each fleet-frozen credential, which hosts applied it (when, kills, severs) and which
    /// live hosts have not yet; hosts known but offline.
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the monitor (root): load the eBPF probes and alert on credentials.
    Daemon {
        /// TOML config file (defaults are embedded; see README).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Also append alerts (JSON lines) to this file.
        #[arg(long)]
        alerts: Option<PathBuf>,
        /// Prometheus endpoint address, IP:PORT.
        #[arg(long)]
        metrics_addr: Option<String>,
        /// Control socket path.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// State directory (frozen set, hash seed).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Freeze a leaked credential (read from stdin or a hidden prompt, never argv): kill
    /// every process holding it, sever their TCP connections, keep it dead at exec.
    Freeze {
        /// Freeze by fingerprint (sha256:…) instead of the credential itself.
        #[arg(long)]
        fingerprint: Option<String>,
        /// Read the credential from this file (first line, newline stripped).
        #[arg(long)]
        from_file: Option<PathBuf>,
        /// Also search the memory of every process (finds keys set with setenv or read
        /// from files; slower).
        #[arg(long)]
        deep: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Also publish it to the fleet (etcd, from `--etcd` or the config's `[fleet]`).
        #[arg(long)]
        fleet: bool,
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Refused: a credential must not be passed in argv.
        #[arg(hide = true)]
        stray: Vec<String>,
    },
    /// Freeze across every host running leakwatch, through etcd; works from any machine
    /// that reaches etcd, no local daemon needed.
    Fleet {
        #[command(subcommand)]
        cmd: FleetCmd,
    },
    /// Remove a credential from the frozen set.
    Unfreeze {
        fingerprint: String,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Frozen credentials (when, how many kills), probe health and loss counters.
    Status {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Scan files, directories (recursively) and `-` (stdin) for credentials. Exit status:
    /// 0 clean, 1 credentials found, 2 something could not be read.
    Scan(ScanArgs),
    /// What processes did (execs, connects, writes, findings, kills), from the action log
    /// in the state dir; works while the daemon runs and after it stopped.
    Actions {
        /// From this long ago (48h, 30m, 7d) or this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Up to this long ago or this time.
        #[arg(long)]
        until: Option<String>,
        /// Only rows of this systemd unit.
        #[arg(long)]
        unit: Option<String>,
        /// This process (from its first sighting).
        #[arg(long)]
        pid: Option<u32>,
        /// Every process that held or sent this credential (sha256:…).
        #[arg(long)]
        fingerprint: Option<String>,
        /// Also everything the selected processes spawned, transitively.
        #[arg(long)]
        tree: bool,
        /// Only these kinds: exec, connect, write, finding, kill, sever, freeze
        /// (repeatable or comma-separated).
        #[arg(long)]
        kind: Vec<String>,
        /// Only the last N rows.
        #[arg(long)]
        limit: Option<usize>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "/var/lib/leakwatch")]
        state_dir: PathBuf,
    },
    /// List the detection rules.
    Rules {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Install this binary, the systemd unit, the example config (never overwriting one)
    /// and the Prometheus rules. Idempotent.
    Install {
        /// Install under this directory instead of `/` (an image, a staging tree).
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Also become the kernel's core_pattern pipe handler: cores are scanned, then
        /// passed on unchanged to the pattern in effect now (`uninstall` restores it).
        #[arg(long)]
        core_handler: bool,
    },
    /// The core_pattern pipe handler (run by the kernel, set up by `install
    /// --core-handler`): scans the core on stdin and passes it on unchanged.
    CoreHandler {
        /// Where `install --core-handler` left its settings (the daemon's state dir).
        #[arg(long, default_value = "/var/lib/leakwatch")]
        state_dir: PathBuf,
        /// The kernel's values: %P %I %s %t %u %g %d %c %C %h %e.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        values: Vec<String>,
    },
    /// Remove what `install` put there; the config and the state (frozen set) stay.
    Uninstall {
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
}

#[derive(clap::Args)]
struct ScanArgs {
    #[arg(default_value = ".")]
    paths: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "human")]
    format: leakwatch::scan::Format,
    /// Also scan binary files (skipped by default).
    #[arg(long)]
    binary: bool,
    /// Worker threads (default: every core).
    #[arg(long, short = 'j')]
    threads: Option<usize>,
    /// Also report credentials frozen in this state dir or frozen.json.
    #[arg(long)]
    frozen: Option<PathBuf>,
    /// Rules config (TOML with [[rule]] tables).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Colour and progress bar: always, never, or auto (on a terminal).
    #[arg(long, default_value = "auto")]
    color: String,
    /// Do not report these fingerprints: a file of `sha256:…` lines, or an earlier
    /// `--format json` report used as a baseline. Repeatable; `.leakwatchignore` in the
    /// current directory is read too when present.
    #[arg(long, value_name = "FILE")]
    ignore: Vec<PathBuf>,
    /// The paths are Git repositories: scan every blob in their history (all refs, each
    /// blob once) and report the commit that added it, instead of their files.
    #[arg(long)]
    git: bool,
}

struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            // One write per line: eprintln! on unbuffered stderr writes each formatted piece
            // with its own write(2), so a reader of the log file (the journal, a test
            // waiting for `ready:`) could see half a line.
            let line = format!(
                "{} leakwatch: {}: {}\n",
                leakwatch::alerts::now_rfc3339(),
                r.level().as_str().to_lowercase(),
                r.args()
            );
            let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
        }
    }
    fn flush(&self) {}
}

fn main() -> ExitCode {
    let _ = log::set_logger(&StderrLog);
    log::set_max_level(match std::env::var("LEAKWATCH_LOG").as_deref() {
        Ok("debug") => log::LevelFilter::Debug,
        Ok("warn") => log::LevelFilter::Warn,
        _ => log::LevelFilter::Info,
    });
    leakwatch::panics::install_hook();
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Daemon { .. } | Cmd::Scan(_)) {
        // A closed pipe (`leakwatch status | head -1`) ends a command quietly, as it ends
        // any Unix tool, instead of a panic in println!. The daemon keeps it ignored; scan
        // handles EPIPE itself (it still owes its exit status).
        // SAFETY: restoring the default disposition of one signal, before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.cmd {
        Cmd::Daemon {
            config,
            alerts,
            metrics_addr,
            socket,
            state_dir,
        } => {
            let o = Overrides {
                config,
                alerts,
                metrics_addr,
                socket,
                state_dir,
            };
            daemon::tune_malloc();
            match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(daemon::run(o)),
                Err(e) => Err(anyhow::anyhow!("cannot start the async runtime: {e}")),
            }
        }
        Cmd::Freeze {
            fingerprint,
            from_file,
            deep,
            json,
            socket,
            fleet,
            etcd,
            stray,
        } => leakwatch::cli::freeze(leakwatch::cli::FreezeArgs {
            socket,
            fingerprint,
            from_file,
            deep,
            json,
            fleet: fleet.then(|| etcd.target()),
            stray,
        }),
        Cmd::Fleet { cmd } => return fleet(cmd),
        Cmd::Unfreeze {
            fingerprint,
            socket,
        } => leakwatch::cli::unfreeze(&socket, fingerprint),
        Cmd::Status { json, socket } => leakwatch::cli::status(&socket, json),
        Cmd::Rules { config } => list_rules(config),
        Cmd::Actions {
            since,
            until,
            unit,
            pid,
            fingerprint,
            tree,
            kind,
            limit,
            json,
            state_dir,
        } => {
            let q = leakwatch::actions::query::Query {
                state_dir,
                since,
                until,
                unit,
                pid,
                tree,
                fingerprint,
                kinds: kind,
                json,
                limit,
            };
            leakwatch::actions::query::run(&q, &mut std::io::stdout().lock()).map(|_| ())
        }
        Cmd::Install { root, core_handler } => leakwatch::install::install(&root, core_handler),
        Cmd::CoreHandler { state_dir, values } => {
            return ExitCode::from(leakwatch::core_handler::run(&state_dir, &values))
        }
        Cmd::Uninstall { root } => leakwatch::install::uninstall(&root),
        Cmd::Scan(args) => match scan(args) {
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("leakwatch: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `leakwatch fleet …`: 0 done everywhere, 1 some live host has not acknowledged, 2 error.
fn fleet(cmd: FleetCmd) -> ExitCode {
    use leakwatch::fleet::cli as f;
    let wait = |s: f64| std::time::Duration::from_secs_f64(s.clamp(0.0, 3600.0));
    let r = match cmd {
        FleetCmd::Freeze {
            fingerprint,
            from_file,
            wait: w,
            json,
            etcd,
            stray,
        } => leakwatch::cli::fleet_key(fingerprint, from_file, stray)
            .and_then(|key| runtime(f::freeze(&etcd.target(), key, wait(w), json))),
        FleetCmd::Unfreeze {
            fingerprint,
            wait: w,
            json,
            etcd,
        } => leakwatch::cli::checked_fingerprint(fingerprint)
            .and_then(|fp| runtime(f::unfreeze(&etcd.target(), &fp, wait(w), json))),
        FleetCmd::Forget { host, etcd } => runtime(f::forget(&etcd.target(), &host)).map(|()| true),
        FleetCmd::Status { json, etcd } => runtime(f::status(&etcd.target(), json)).map(|()| true),
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("leakwatch: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn runtime<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?
        .block_on(f)
}

fn list_rules(config: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = daemon::effective_config(&Overrides {
        config,
        ..Default::default()
    })?;
    let set = cfg.rules()?;
    let engine = leakwatch::detect::Engine::new(&set)?;
    for (id, desc) in engine.rules() {
        let hosts = set
            .rules
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.hosts.join(", "))
            .unwrap_or_default();
        if hosts.is_empty() {
            println!("{id:32} {desc}");
        } else {
            println!("{id:32} {desc} (expected at {hosts})");
        }
    }
    Ok(())
}

fn scan(a: ScanArgs) -> anyhow::Result<u8> {
    use std::io::IsTerminal;
    let cfg = daemon::effective_config(&Overrides {
        config: a.config,
        ..Default::default()
    })?;
    let engine = leakwatch::detect::Engine::new(&cfg.rules()?)?;
    let color = match a.color.as_str() {
        "always" => Some(true),
        "never" => Some(false),
        "auto" => None,
        other => anyhow::bail!("--color must be always, never or auto, not `{other}`"),
    };
    let frozen = a
        .frozen
        .map(|p| leakwatch::scan::load_frozen(&p))
        .transpose()?;
    let mut ignore_files = a.ignore;
    let implicit = PathBuf::from(".leakwatchignore");
    if implicit.is_file() && !ignore_files.contains(&implicit) {
        ignore_files.push(implicit);
    }
    let mut ignore = std::collections::HashSet::new();
    for f in &ignore_files {
        leakwatch::scan::load_ignore(f, &mut ignore)?;
    }
    let format = a.format;
    let opts = leakwatch::scan::Options {
        paths: a.paths,
        format,
        binary: a.binary,
        threads: a.threads,
        frozen,
        color,
        ignore,
        git: a.git,
    };
    let summary = leakwatch::scan::run(&engine, &opts)?;
    let tty = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut out = std::io::stdout().lock();
    leakwatch::scan::print(&engine, &summary, format, color.unwrap_or(tty), &mut out)?;
    for e in &summary.errors {
        eprintln!("leakwatch: cannot scan {e}");
    }
    if format == leakwatch::scan::Format::Human {
        eprintln!(
            "leakwatch: {} finding(s) in {} file(s), {:.1} MB scanned, {} binary file(s) skipped, {} FIFO(s)/device(s) skipped, {} suppressed{}",
            summary.hits.len(),
            summary.files,
            summary.bytes as f64 / 1e6,
            summary.binary_skipped,
            summary.special_skipped,
            summary.suppressed,
            if summary.errors.is_empty() {
                String::new()
            } else {
                format!(", {} error(s)", summary.errors.len())
            }
        );
    }
    Ok(summary.exit_code())
}
