//! `STATE_DIR/core-handler.toml`: what `leakwatch install --core-handler` remembers for the
//! handler, which the kernel starts with nothing but its pattern's arguments — the
//! `core_pattern` leakwatch replaced (where cores go on to), the daemon's socket and
//! config, and how long a stalled downstream may hold a core. `uninstall` puts
//! `previous` back.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub const FILE: &str = "core-handler.toml";

/// The default time a previous handler may go without taking bytes.
pub const FORWARD_TIMEOUT: &str = "10s";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The core_pattern before leakwatch's: a file pattern or `|program args…`.
    pub previous: String,
    /// The daemon's control socket.
    pub socket: PathBuf,
    /// The daemon's config (rules); none: the embedded rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<PathBuf>,
    /// Alert file written directly when the daemon cannot be reached; none: the config's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<PathBuf>,
    /// How long the previous handler may take no bytes before forwarding stops
    /// (`10s`, `500ms`).
    #[serde(default = "default_timeout")]
    pub forward_timeout: String,
}

fn default_timeout() -> String {
    FORWARD_TIMEOUT.to_string()
}

impl Settings {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE)
    }

    /// None when there is no file.
    pub fn load(state_dir: &Path) -> Result<Option<Settings>> {
        let path = Settings::path(state_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let s: Settings =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        s.timeout()
            .with_context(|| format!("forward_timeout in {}", path.display()))?;
        Ok(Some(s))
    }

    pub fn timeout(&self) -> Result<Duration> {
        humantime::parse_duration(&self.forward_timeout).with_context(|| {
            format!(
                "`{}` is not a duration (give e.g. 10s or 500ms)",
                self.forward_timeout
            )
        })
    }

    /// The file's text, with a header saying what it is.
    pub fn to_text(&self) -> Result<String> {
        Ok(format!(
            "# Written by `leakwatch install --core-handler`; read by `leakwatch core-handler`\n\
             # at every crash. `previous` is the core_pattern leakwatch replaced: cores go on\n\
             # there, and `leakwatch uninstall` puts it back.\n{}",
            toml::to_string(self)?
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_with_awkward_patterns() {
        let dir = std::env::temp_dir().join(format!("lw-ch-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(Settings::load(&dir).unwrap(), None);
        let s = Settings {
            previous:
                "|/usr/lib/systemd/systemd-coredump %P %u %g %s %t 9223372036854775808 %h \"q\" \\"
                    .into(),
            socket: "/run/leakwatch/control.sock".into(),
            config: Some("/etc/leakwatch/leakwatch.toml".into()),
            alerts: None,
            forward_timeout: "1500ms".into(),
        };
        std::fs::write(Settings::path(&dir), s.to_text().unwrap()).unwrap();
        let back = Settings::load(&dir).unwrap().unwrap();
        assert_eq!(back, s);
        assert_eq!(back.timeout().unwrap(), Duration::from_millis(1500));
        std::fs::write(
            Settings::path(&dir),
            "previous = \"core\"\nsocket = \"/s\"\nforward_timeout = \"soon\"\n",
        )
        .unwrap();
        let e = format!("{:#}", Settings::load(&dir).unwrap_err());
        assert!(e.contains("not a duration"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
