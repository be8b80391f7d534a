//! Daemon configuration: TOML with embedded defaults, so `leakwatch daemon` runs with no file.
//! Command-line flags override the file. Every field is documented in README.md.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::detect::{RuleSet, RuleSpec};

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Alert file (JSON lines, mode 0600). Empty: stdout only.
    pub alerts: Option<PathBuf>,
    /// Also write alerts to stdout (the journal, under systemd).
    pub alerts_stdout: bool,
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            alerts: None,
            alerts_stdout: true,
            metrics_addr: "127.0.0.1:9477".into(),
            socket: PathBuf::from("/run/leakwatch/control.sock"),
            state_dir: PathBuf::from("/var/lib/leakwatch"),
            dedupe_seconds: 60,
            protected: vec!["systemd".into(), "sshd".into(), "systemd-journald".into()],
            rule: Vec::new(),
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
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.message()))
    }

    /// Built-in rules with this config's rules applied.
    pub fn rules(&self) -> Result<RuleSet> {
        let mut set = RuleSet::builtin();
        set.merge(self.rule.clone())?;
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn unknown_field_is_an_error() {
        let e = Config::parse("alert = \"/x\"").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
