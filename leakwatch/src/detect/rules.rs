//! Rules as data: the built-in `rules.toml` compiled into the binary, plus rules from the
//! config file (same id replaces, new id adds, `disabled` removes).
use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// Built-in rule files, in priority order: the core formats, then SaaS and platform tokens.
const BUILTIN: [(&str, &str); 2] = [
    ("rules.toml", include_str!("rules.toml")),
    ("rules_saas.toml", include_str!("rules_saas.toml")),
];

/// One rule as written in TOML.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub id: String,
    #[serde(default)]
    pub description: String,
    pub keywords: Vec<String>,
    pub regex: String,
    /// Minimum Shannon entropy (bits per byte) of the secret.
    #[serde(default)]
    pub entropy: f64,
    /// `github-crc32`, `jwt` or `generic`.
    #[serde(default)]
    pub validator: Option<String>,
    /// How far past a keyword hit the match may extend, in bytes.
    #[serde(default = "default_span")]
    pub span: usize,
    /// The match may span lines (PEM blocks); otherwise only the keyword's line is searched.
    #[serde(default)]
    pub multiline: bool,
    /// Bytes of which one must follow the keyword within the window (its line, for
    /// single-line rules) before the regex is tried, e.g. `=:` when the regex needs an
    /// assignment after the keyword. A cheap necessary condition; empty: none.
    #[serde(default)]
    pub after: String,
    /// Regexes on the secret; a match suppresses the finding.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Recognises a value that is public by design (a publishable key): never reported, and
    /// a `generic` rule's finding overlapping it is dropped.
    #[serde(default)]
    pub public: bool,
    /// Names a shape, not a vendor (`NAME=value`, `Bearer …`, URL passwords): loses every
    /// overlap with a vendor rule's finding, whatever the lengths, so a token keeps its
    /// own rule, span and fingerprint wherever it sits.
    #[serde(default)]
    pub generic: bool,
    /// Set in a config file to switch a built-in rule off.
    #[serde(default)]
    pub disabled: bool,
    /// `basic`: the secret group is `base64(USER:PASSWORD)`; what is reported is the
    /// credential inside (another rule's token, else the password), see `decode`.
    #[serde(default)]
    pub decode: Option<String>,
    /// Where this credential is expected to be sent (its provider's API hosts;
    /// `*.suffix` for any subdomain): a send there is recorded, not alerted (`dest`).
    #[serde(default)]
    pub hosts: Vec<String>,
}

fn default_span() -> usize {
    512
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    rule: Vec<RuleSpec>,
}

/// An ordered set of rule specs (order = priority when two rules claim the same bytes).
#[derive(Clone, Debug)]
pub struct RuleSet {
    pub rules: Vec<RuleSpec>,
}

impl RuleSet {
    /// The rules compiled into the binary.
    pub fn builtin() -> RuleSet {
        let mut rules = Vec::new();
        for (name, text) in BUILTIN {
            let file: RuleFile = toml::from_str(text)
                .unwrap_or_else(|e| panic!("built-in {name} does not parse: {e}"));
            rules.extend(file.rule);
        }
        RuleSet { rules }
    }

    /// Parses `[[rule]]` tables from TOML text; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Vec<RuleSpec>> {
        let file: RuleFile = toml::from_str(text).with_context(|| {
            format!(
                "{origin}: rules are not valid TOML; fix the file or remove the [[rule]] entries"
            )
        })?;
        Ok(file.rule)
    }

    /// Applies overrides: same id replaces (or removes, if `disabled`), new id appends.
    pub fn merge(&mut self, extra: Vec<RuleSpec>) -> Result<()> {
        for spec in extra {
            if spec.keywords.iter().any(|k| k.is_empty()) {
                bail!(
                    "rule `{}` has an empty keyword; every keyword must be at least one byte",
                    spec.id
                );
            }
            match self.rules.iter().position(|r| r.id == spec.id) {
                Some(i) if spec.disabled => {
                    self.rules.remove(i);
                }
                Some(i) => self.rules[i] = spec,
                None if spec.disabled => {}
                None => self.rules.push(spec),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_has_the_formats() {
        let set = RuleSet::builtin();
        assert!(set.rules.len() >= 45, "only {} rules", set.rules.len());
        let mut ids: Vec<_> = set.rules.iter().map(|r| r.id.as_str()).collect();
        ids.sort();
        let n = ids.len();
        ids.dedup();
        assert_eq!(n, ids.len(), "duplicate rule ids");
    }

    #[test]
    fn merge_replaces_adds_and_disables() {
        let mut set = RuleSet::builtin();
        let n = set.rules.len();
        let extra = RuleSet::parse(
            r#"
[[rule]]
id = "jwt"
disabled = true
keywords = []
regex = ""

[[rule]]
id = "acme-token"
keywords = ["acme_"]
regex = '(?P<secret>acme_[a-z0-9]{20})'
"#,
            "test",
        )
        .unwrap();
        set.merge(extra).unwrap();
        assert_eq!(set.rules.len(), n);
        assert!(set.rules.iter().all(|r| r.id != "jwt"));
        assert!(set.rules.iter().any(|r| r.id == "acme-token"));
    }

    #[test]
    fn bad_toml_is_one_clear_error() {
        let err = RuleSet::parse("[[rule]]\nid = 3", "/etc/x.toml").unwrap_err();
        assert!(format!("{err}").contains("/etc/x.toml"));
    }
}
