//! The alert record (the JSON contract of DESIGN.md); `sinks` writes them. Nothing here
//! ever receives plaintext: findings arrive as fingerprint + preview.
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::source::Source;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Alert {
    pub ts: String,
    pub kind: &'static str,
    pub rule: Option<String>,
    pub source: Option<Source>,
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
    /// Kernel time of the event the alert is about (0: none): for the latency histogram,
    /// not part of the record.
    #[serde(skip)]
    pub event_ktime_ns: u64,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_fields_are_present() {
        let a = Alert {
            rule: Some("r".into()),
            source: Some(Source::Env),
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
