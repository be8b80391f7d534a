//! Daemon configuration: TOML with embedded defaults, so `leakwatch daemon` runs with no file.
//! Command-line flags override the file. Every field is documented in README.md.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::detect::{RuleSet, RuleSpec};

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Alert file (JSON lines, mode 0600). Empty: stdout only.
    pub alerts: Option<PathBuf>,
    /// Also write alerts to stdout (the journal, under systemd).
    pub alerts_stdout: bool,
    /// Rotate the alert file at this size in MB (10^6 bytes; fractions allowed; 0: never).
    pub alerts_max_mb: f64,
    /// Rotated alert files kept (`alerts.jsonl.1` newest).
    pub alerts_keep: u32,
    /// Prometheus endpoint, `IP:PORT`. Empty string disables it.
    pub metrics_addr: String,
    /// Control socket used by `freeze`, `unfreeze`, `status`.
    pub socket: PathBuf,
    /// Where the frozen set and the hash seed are kept.
    pub state_dir: PathBuf,
    /// Seconds during which the same credential from the same source, program and parent is
    /// alerted once (repeats are counted in `leakwatch_findings_suppressed_total`). 0: every time.
    pub dedupe_seconds: u64,
    /// Never killed by freeze (matched against comm or exe path), besides pid 1 and leakwatch.
    pub protected: Vec<String>,
    /// Extra or overriding detection rules (`[[rule]]` tables).
    pub rule: Vec<RuleSpec>,
    /// Whose write payloads the kernel copies.
    pub scope: Scope,
    pub capture: Capture,
    /// The action log (`STATE_DIR/actions.db`).
    pub actions: Actions,
    /// Where each rule's credential is expected to go (`[[destination]]` tables), besides
    /// its provider's hosts.
    pub destination: Vec<crate::dest::DestinationSpec>,
    /// Whether a host name a socket carries is trusted only where it resolves.
    pub host_check: crate::dest::HostCheck,
    /// Fleet freeze through etcd (`fleet`); no `etcd` endpoints: off.
    pub fleet: crate::fleet::FleetConfig,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Actions {
    pub enabled: bool,
    /// Bound on the log's data in MB (10^6 bytes); the oldest rows go first. 0: no bound.
    pub max_mb: f64,
    /// Rows older than this go (`30d`, `12h`…).
    pub max_age: String,
    /// `redacted`: exec rows keep argv with detected credentials as previews; `none`: no argv.
    pub argv: String,
}

impl Default for Actions {
    fn default() -> Self {
        Actions {
            enabled: true,
            max_mb: 256.0,
            max_age: "30d".into(),
            argv: "redacted".into(),
        }
    }
}

impl Actions {
    /// `max_age` in milliseconds (validated at load).
    pub fn max_age_ms(&self) -> i64 {
        humantime::parse_duration(&self.max_age).map_or(i64::MAX / 2, |d| d.as_millis() as i64)
    }
}

/// A process is in scope when it matches any list; all empty: every process.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Scope {
    /// systemd units: every cgroup so named, and its sub-cgroups.
    pub units: Vec<String>,
    /// cgroup2 paths relative to the cgroup2 mount (`/system.slice/x.service`), with subtrees.
    pub cgroups: Vec<String>,
    pub uids: Vec<u32>,
    /// Process names (the kernel's 15-byte comm).
    pub comms: Vec<String>,
}

impl Scope {
    pub fn is_everyone(&self) -> bool {
        self.units.is_empty()
            && self.cgroups.is_empty()
            && self.uids.is_empty()
            && self.comms.is_empty()
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Capture {
    /// Payload bytes copied per write-family call (1..=65536).
    pub max_bytes: u32,
    /// Busy regular files are read back from the page cache instead of copied at each
    /// write (see `pipeline::held`).
    pub by_reference: bool,
    /// MiB of the kernel ring for exec, connect, kill and core records (a power of two).
    pub events_ring_mb: u32,
    /// MiB of the kernel ring for write-family records (a power of two).
    pub writes_ring_mb: u32,
}

/// Ring sizes a config may give, in MiB.
pub const RING_MB_MAX: u32 = 1024;

impl Capture {
    /// (`EVENTS`, `WRITES`) ring sizes in bytes.
    pub fn ring_bytes(&self) -> (u32, u32) {
        (self.events_ring_mb << 20, self.writes_ring_mb << 20)
    }
}

impl Default for Capture {
    fn default() -> Self {
        Capture {
            max_bytes: leakwatch_common::WRITE_CAPTURE_DEFAULT,
            by_reference: true,
            events_ring_mb: 4,
            writes_ring_mb: 4,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            alerts: None,
            alerts_stdout: true,
            alerts_max_mb: 100.0,
            alerts_keep: 5,
            metrics_addr: "127.0.0.1:9477".into(),
            socket: PathBuf::from("/run/leakwatch/control.sock"),
            state_dir: PathBuf::from("/var/lib/leakwatch"),
            dedupe_seconds: 60,
            protected: vec!["systemd".into(), "sshd".into(), "systemd-journald".into()],
            rule: Vec::new(),
            scope: Scope::default(),
            capture: Capture::default(),
            actions: Actions::default(),
            destination: Vec::new(),
            host_check: Default::default(),
            fleet: crate::fleet::FleetConfig::default(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read config file {}; check the path given to --config",
                path.display()
            )
        })?;
        Config::parse(&text).with_context(|| format!("config file {} is invalid", path.display()))
    }

    pub fn parse(text: &str) -> Result<Config> {
        let c: Config =
            toml::from_str(text).map_err(|e| match e.span().map(|s| line_col(text, s.start)) {
                Some((l, c)) => anyhow::anyhow!("line {l}, column {c}: {}", e.message()),
                None => anyhow::anyhow!("{}", e.message()),
            })?;
        c.validate().map_err(|e| {
            let msg = e.to_string();
            match locate(text, &msg) {
                Some((l, c)) => anyhow::anyhow!("line {l}, column {c}: {msg}"),
                None => e,
            }
        })?;
        Ok(c)
    }

    /// Checks what TOML types cannot: ranges and shapes of values. Each message starts
    /// with the key it is about (`key = …` or `[table] key …`): `parse` finds its line.
    fn validate(&self) -> Result<()> {
        if !(self.alerts_max_mb >= 0.0 && self.alerts_max_mb.is_finite()) {
            bail!(
                "alerts_max_mb = {} is not a size; give megabytes, 0 for no rotation",
                self.alerts_max_mb
            );
        }
        let a = &self.actions;
        if !(a.max_mb >= 0.0 && a.max_mb.is_finite()) {
            bail!(
                "[actions] max_mb = {} is not a size; give megabytes, 0 for no bound",
                a.max_mb
            );
        }
        if humantime::parse_duration(&a.max_age).is_err() {
            bail!(
                "[actions] max_age = \"{}\" is not a duration; give e.g. \"30d\" or \"12h\"",
                a.max_age
            );
        }
        if a.argv != "redacted" && a.argv != "none" {
            bail!(
                "[actions] argv = \"{}\" is not a choice; give \"redacted\" or \"none\"",
                a.argv
            );
        }
        let max = leakwatch_common::WRITE_DATA_MAX as u32;
        if self.capture.max_bytes == 0 || self.capture.max_bytes > max {
            bail!(
                "[capture] max_bytes = {} is out of range; give 1..={max} bytes per call",
                self.capture.max_bytes
            );
        }
        for (name, mb) in [
            ("events_ring_mb", self.capture.events_ring_mb),
            ("writes_ring_mb", self.capture.writes_ring_mb),
        ] {
            if !mb.is_power_of_two() || mb > RING_MB_MAX {
                bail!("[capture] {name} = {mb} is not a ring size; give a power of two from 1 to {RING_MB_MAX} (MiB)");
            }
        }
        for c in &self.scope.comms {
            if c.is_empty() || c.len() > 15 {
                bail!("[scope] comms entry `{c}` is not a process name; the kernel's comm is 1 to 15 bytes (the first 15 of the program's file name)");
            }
        }
        for u in &self.scope.units {
            if u.is_empty() || u.contains('/') {
                bail!(
                    "[scope] units entry `{u}` is not a unit name; give names like `agent.service`"
                );
            }
        }
        for g in &self.scope.cgroups {
            if !g.starts_with('/') {
                bail!("[scope] cgroups entry `{g}` is not a cgroup path; give it relative to the cgroup2 mount, starting with `/` (e.g. `/system.slice/agent.service`)");
            }
        }
        self.host_check.validate()?;
        self.fleet.validate()
    }

    /// Every rule's expected destinations: built-in hosts and `[[destination]]`.
    pub fn destinations(&self) -> Result<crate::dest::Destinations> {
        crate::dest::Destinations::new(&self.rules()?, &self.destination, &self.host_check)
    }

    /// Built-in rules with this config's rules applied.
    pub fn rules(&self) -> Result<RuleSet> {
        let mut set = RuleSet::builtin();
        set.merge(self.rule.clone())?;
        Ok(set)
    }
}

/// Where the key a validation message starts with (`key = …`, `[table] key …`) is set in
/// `text`: its first line in that table (top level when none), as (line, column).
fn locate(text: &str, msg: &str) -> Option<(usize, usize)> {
    let (table, rest) = match msg.strip_prefix('[') {
        Some(r) => {
            let (t, rest) = r.split_once("] ")?;
            (Some(t), rest)
        }
        None => (None, msg),
    };
    let key: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if key.is_empty() {
        return None;
    }
    let mut current: Option<&str> = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if let Some(h) = t.strip_prefix('[') {
            current = h.split(']').next().map(str::trim);
            continue;
        }
        let is_key = t
            .strip_prefix(key.as_str())
            .is_some_and(|r| r.trim_start().starts_with('='));
        if is_key && current == table {
            return Some((i + 1, 1 + line.len() - t.len()));
        }
    }
    None
}

/// 1-based line and column (in characters) of byte offset `at` of `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = text.get(..at).unwrap_or(text);
    let line = 1 + before.matches('\n').count();
    let col = 1 + before.rsplit('\n').next().map_or(0, |l| l.chars().count());
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_out_of_range_is_named_with_its_line() {
        let text = "alerts_max_mb = 5\n\n[actions]\nenabled = true\n  max_age = \"soon\"\n";
        let e = Config::parse(text).unwrap_err().to_string();
        assert!(e.starts_with("line 5, column 3: [actions] max_age"), "{e}");
        let e = Config::parse("[capture]\nmax_bytes = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("line 2, column 1: [capture] max_bytes"),
            "{e}"
        );
        let e = Config::parse("alerts_max_mb = -1\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("line 1, column 1: alerts_max_mb"), "{e}");
        for bad in [
            "events_ring_mb = 3",
            "writes_ring_mb = 0",
            "events_ring_mb = 2048",
        ] {
            let e = Config::parse(&format!("[capture]\nmax_bytes = 512\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("line 3, column 1: [capture]"), "{bad}: {e}");
            assert!(e.contains("power of two"), "{bad}: {e}");
        }
        let c = Config::parse("[capture]\nevents_ring_mb = 16\n").unwrap();
        assert_eq!(c.capture.ring_bytes(), (16 << 20, 4 << 20));
    }

    #[test]
    fn empty_config_is_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.socket, PathBuf::from("/run/leakwatch/control.sock"));
        assert_eq!(c.dedupe_seconds, 60);
    }

    #[test]
    fn example_config_parses() {
        let c = Config::parse(include_str!("../../deploy/leakwatch.toml")).unwrap();
        assert!(c.rules().is_ok());
    }

    #[test]
    fn scope_and_capture_parse_and_are_checked() {
        let c = Config::parse("[scope]\nunits = [\"a.service\"]\ncomms = [\"python3\"]\nuids = [0]\n[capture]\nmax_bytes = 4096\n").unwrap();
        assert_eq!(c.scope.units, vec!["a.service"]);
        assert_eq!(c.capture.max_bytes, 4096);
        assert!(!c.scope.is_everyone());
        assert!(Config::parse("").unwrap().scope.is_everyone());
        for bad in [
            "[capture]\nmax_bytes = 0",
            "[capture]\nmax_bytes = 70000",
            "[scope]\ncomms = [\"a-name-longer-than-15\"]",
            "[scope]\nunits = [\"a/b\"]",
            "[scope]\ncgroups = [\"relative\"]",
        ] {
            let e = Config::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("[capture]") || e.contains("[scope]"),
                "{bad}: {e}"
            );
        }
        let e = Config::parse("dedupe_seconds = 1\n[scope]\nnames = []").unwrap_err();
        assert!(e.to_string().starts_with("line 3, column 1:"), "{e}");
        let e = Config::parse("dedupe_seconds = 1\nmetrics_addr = 9\n").unwrap_err();
        assert!(e.to_string().starts_with("line 2, column 16:"), "{e}");
        assert!(
            e.to_string().contains("string"),
            "says what was expected: {e}"
        );
    }

    #[test]
    fn the_example_fleet_table_parses_once_uncommented() {
        let ex = include_str!("../../deploy/leakwatch.toml");
        let at = ex.find("# [fleet]").expect("example has a [fleet] table");
        let table: String = ex[at..]
            .lines()
            .take_while(|l| l.starts_with("# "))
            .map(|l| format!("{}\n", &l[2..]))
            .collect();
        let c = Config::parse(&table).unwrap();
        assert_eq!(c.fleet.etcd.len(), 2);
        assert_eq!(c.fleet.host.as_deref(), Some("web-7"));
        let e = Config::parse("dedupe_seconds = 1\n[fleet]\netcd = [\"10.0.0.1:2379\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("line 3, column 1:") && e.contains("[fleet] etcd"),
            "{e}"
        );
    }

    #[test]
    fn unknown_field_is_an_error() {
        let e = Config::parse("alert = \"/x\"").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
