//! Fleet freeze: one frozen set shared by every host, kept in etcd. A fleet entry is a
//! fingerprint, a length and a short prefix (never plaintext); each daemon watches the list,
//! applies every entry as a local freeze and writes its acknowledgement under a lease, so a
//! host that dies ages out of `fleet status`. Layout under `prefix` (default `/leakwatch/`):
//!
//! - `frozen/FINGERPRINT`: an `Entry` (`entry`), put by `leakwatch fleet freeze`;
//! - `unfrozen/FINGERPRINT`: a `Tombstone`, put with the delete by `fleet unfreeze`. Only a
//!   tombstone unfreezes: an entry that merely vanished (a wiped or restored etcd) stays
//!   frozen on every host, which says so;
//! - `hosts/HOST/alive`, `hosts/HOST/applied/FINGERPRINT`, `hosts/HOST/refused/KEY`: what
//!   each daemon reports, under its lease.
//!
//! `watch` is the daemon side, `cli` the `leakwatch fleet …` commands.
pub mod cli;
pub mod entry;
pub mod watch;

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context as _, Result};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use serde::Deserialize;

/// `[fleet]` in the config.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// etcd endpoints (`https://10.0.0.5:2379`, `http://127.0.0.1:2379`). Empty: no fleet.
    pub etcd: Vec<String>,
    /// Key prefix; starts and ends with `/`.
    pub prefix: String,
    /// CA certificate (PEM) that signed the etcd servers' certificates.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM), when etcd asks for one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// etcd user, with its password in `password_file` (first line).
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// This host's name under `hosts/` (default: the kernel's hostname).
    pub host: Option<String>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            etcd: Vec::new(),
            prefix: "/leakwatch/".into(),
            ca: None,
            cert: None,
            key: None,
            user: None,
            password_file: None,
            host: None,
        }
    }
}

/// Seconds a host's lease lives without a keep-alive: its `alive` key and acknowledgements
/// vanish this long after it died or lost etcd.
pub const LEASE_TTL: i64 = 15;

impl FleetConfig {
    pub fn enabled(&self) -> bool {
        !self.etcd.is_empty()
    }

    /// Messages start with `[fleet] key` (see `Config::validate`).
    pub fn validate(&self) -> Result<()> {
        for e in &self.etcd {
            let rest = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"));
            match rest {
                Some(r) if !r.is_empty() && !r.contains('/') => {}
                _ => bail!("[fleet] etcd entry `{e}` is not an endpoint; give http://HOST:PORT or https://HOST:PORT"),
            }
        }
        if !self.prefix.starts_with('/') || !self.prefix.ends_with('/') || self.prefix.len() > 200 {
            bail!(
                "[fleet] prefix = \"{}\" must start and end with `/` (e.g. \"/leakwatch/\")",
                self.prefix
            );
        }
        if self.cert.is_some() != self.key.is_some() {
            bail!("[fleet] cert and key go together: give both files or neither");
        }
        if self.user.is_some() != self.password_file.is_some() {
            bail!("[fleet] user and password_file go together: give both or neither");
        }
        if self.etcd.iter().any(|e| e.starts_with("https://")) && self.ca.is_none() {
            bail!("[fleet] ca is needed for https endpoints: give the CA certificate (PEM) that signed etcd's");
        }
        if let Some(h) = &self.host {
            if !valid_host(h) {
                bail!("[fleet] host = \"{h}\" is not a host name; use letters, digits, `.`, `-` and `_` (1 to 253)");
            }
        }
        Ok(())
    }

    /// The CA, certificate, key and password files can be read: checked when the daemon
    /// starts and before a fleet command talks to etcd, so a broken `[fleet]` is one error
    /// at deploy time, not a host that quietly never joins.
    pub fn check_files(&self) -> Result<()> {
        for (what, p) in [
            ("ca", &self.ca),
            ("cert", &self.cert),
            ("key", &self.key),
            ("password_file", &self.password_file),
        ] {
            if let Some(p) = p {
                std::fs::File::open(p).with_context(|| {
                    format!(
                        "[fleet] {what} = \"{}\" cannot be read; fix the path or its permissions",
                        p.display()
                    )
                })?;
            }
        }
        Ok(())
    }

    /// This host's name under `hosts/`.
    pub fn host_name(&self) -> Result<String> {
        if let Some(h) = &self.host {
            return Ok(h.clone());
        }
        let h = kernel_hostname()?;
        if !valid_host(&h) {
            bail!("the hostname `{h}` cannot name this host in the fleet store; set [fleet] host");
        }
        Ok(h)
    }

    pub fn frozen_key(&self, fp: &str) -> String {
        format!("{}frozen/{fp}", self.prefix)
    }

    pub fn tombstone_key(&self, fp: &str) -> String {
        format!("{}unfrozen/{fp}", self.prefix)
    }

    pub fn host_key(&self, host: &str, what: &str) -> String {
        format!("{}hosts/{host}/{what}", self.prefix)
    }
}

/// The kernel's hostname.
pub fn kernel_hostname() -> Result<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading /proc/sys/kernel/hostname")?;
    Ok(h.trim().to_string())
}

pub fn valid_host(h: &str) -> bool {
    (1..=253).contains(&h.len())
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && h != "."
        && h != ".."
}

/// Connects to etcd (TLS and user as configured); fails within a few seconds when no
/// endpoint answers.
pub async fn connect(f: &FleetConfig) -> Result<Client> {
    let mut o = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
    if let (Some(u), Some(p)) = (&f.user, &f.password_file) {
        let pw = std::fs::read_to_string(p).with_context(|| {
            format!(
                "cannot read the etcd password file {}; check [fleet] password_file",
                p.display()
            )
        })?;
        let pw = zeroize::Zeroizing::new(pw);
        o = o.with_user(u.clone(), pw.lines().next().unwrap_or("").to_string());
    }
    if f.ca.is_some() || f.cert.is_some() {
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p).with_context(|| {
                format!(
                    "cannot read the {what} {}; check [fleet] in the config",
                    p.display()
                )
            })
        };
        let mut tls = TlsOptions::new();
        if let Some(ca) = &f.ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca, "etcd CA certificate")?));
        }
        if let (Some(c), Some(k)) = (&f.cert, &f.key) {
            tls = tls.identity(Identity::from_pem(
                read(c, "etcd client certificate")?,
                read(k, "etcd client key")?,
            ));
        }
        o = o.with_tls(tls);
    }
    let c = Client::connect(&f.etcd, Some(o))
        .await
        .with_context(|| format!("cannot connect to etcd at {}", f.etcd.join(", ")))?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked_with_one_sentence_each() {
        let ok = FleetConfig {
            etcd: vec!["http://127.0.0.1:2379".into()],
            ..Default::default()
        };
        ok.validate().unwrap();
        for (f, want) in [
            (
                FleetConfig {
                    etcd: vec!["127.0.0.1:2379".into()],
                    ..ok.clone()
                },
                "not an endpoint",
            ),
            (
                FleetConfig {
                    prefix: "leakwatch".into(),
                    ..ok.clone()
                },
                "start and end",
            ),
            (
                FleetConfig {
                    cert: Some("/c".into()),
                    ..ok.clone()
                },
                "cert and key",
            ),
            (
                FleetConfig {
                    user: Some("u".into()),
                    ..ok.clone()
                },
                "password_file",
            ),
            (
                FleetConfig {
                    etcd: vec!["https://10.0.0.1:2379".into()],
                    ..ok.clone()
                },
                "ca is needed",
            ),
            (
                FleetConfig {
                    host: Some("a/b".into()),
                    ..ok.clone()
                },
                "not a host name",
            ),
        ] {
            let e = f.validate().unwrap_err().to_string();
            assert!(e.starts_with("[fleet] "), "{e}");
            assert!(e.contains(want), "{e}");
        }
        let missing = FleetConfig {
            ca: Some("/nonexistent/leakwatch-ca.pem".into()),
            ..ok.clone()
        };
        let e = missing.check_files().unwrap_err().to_string();
        assert!(
            e.contains("[fleet] ca") && e.contains("cannot be read"),
            "{e}"
        );
        ok.check_files().unwrap();
    }
}
