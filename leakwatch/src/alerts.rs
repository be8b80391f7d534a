//! Alert lines (the JSON contract of DESIGN.md) and where they go: stdout and the alert
//! file. Nothing here ever receives plaintext: findings arrive as fingerprint + preview.
use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::Path,
    sync::Mutex,
    time::SystemTime,
};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{Map, Value};

#[derive(Clone, Debug, Default, Serialize)]
pub struct Alert {
    pub ts: String,
    pub kind: &'static str,
    pub rule: Option<String>,
    pub source: Option<&'static str>,
    pub fingerprint: Option<String>,
    pub redacted: Option<String>,
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    pub exe: String,
    pub unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// Kind-specific fields (env var name, argv index, counts…).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Alert {
    pub fn new(kind: &'static str) -> Alert {
        Alert {
            ts: now_rfc3339(),
            kind,
            ..Default::default()
        }
    }

    pub fn with(mut self, key: &str, v: impl Into<Value>) -> Alert {
        self.extra.insert(key.to_string(), v.into());
        self
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Writes each alert as one JSON line to stdout and, if configured, to an append-only file
/// created with mode 0600.
pub struct AlertSink {
    file: Option<Mutex<File>>,
    stdout: bool,
}

impl AlertSink {
    pub fn new(path: Option<&Path>, stdout: bool) -> Result<AlertSink> {
        let file = match path {
            Some(p) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).with_context(|| {
                        format!("creating the directory of the alert file {}", p.display())
                    })?;
                }
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(p)
                    .with_context(|| {
                        format!(
                            "opening the alert file {}; check the path and permissions",
                            p.display()
                        )
                    })?;
                Some(Mutex::new(f))
            }
            None => None,
        };
        Ok(AlertSink { file, stdout })
    }

    pub fn emit(&self, alert: &Alert) {
        let Ok(mut line) = serde_json::to_string(alert) else {
            return;
        };
        line.push('\n');
        if self.stdout {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }
        if let Some(f) = &self.file {
            if let Ok(mut f) = f.lock() {
                if let Err(e) = f.write_all(line.as_bytes()) {
                    log::error!("writing the alert file failed: {e}; alerts still go to stdout");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_fields_are_present() {
        let a = Alert {
            rule: Some("r".into()),
            source: Some("env"),
            ..Alert::new("finding")
        }
        .with("var", "X_KEY");
        let v: Value = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        for k in [
            "ts",
            "kind",
            "rule",
            "source",
            "fingerprint",
            "redacted",
            "pid",
            "ppid",
            "uid",
            "comm",
            "exe",
            "unit",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert!(v["unit"].is_null());
        assert!(v.get("path").is_none());
        assert_eq!(v["var"], "X_KEY");
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
    }
}
