//! The one scan everything uses: rule findings plus frozen credentials, deduplicated. The
//! daemon (argv, env, payload streams) and `leakwatch scan` both go through it, so a frozen
//! key is reported the same way wherever it is seen.
use super::{frozen::FrozenSet, redact, Engine, Finding};

/// Rule name of a frozen credential that no rule recognised.
pub const FROZEN_RULE: &str = "frozen";

#[derive(Clone, Copy)]
pub struct Detector<'a> {
    pub engine: &'a Engine,
    pub frozen: Option<&'a FrozenSet>,
}

impl<'a> Detector<'a> {
    pub fn new(engine: &'a Engine, frozen: Option<&'a FrozenSet>) -> Detector<'a> {
        let frozen = frozen.filter(|f| !f.is_empty());
        Detector { engine, frozen }
    }

    /// Rule findings, then the frozen credentials no rule reported at the same place.
    pub fn scan(&self, hay: &[u8]) -> Vec<Finding> {
        self.add_frozen(hay, self.engine.scan(hay))
    }

    /// `scan`, also collecting the keyword windows the end of `hay` left open (see
    /// `Engine::scan_open`).
    pub fn scan_open(&self, hay: &[u8], open: &mut Vec<(usize, usize)>) -> Vec<Finding> {
        self.add_frozen(hay, self.engine.scan_open(hay, open))
    }

    fn add_frozen(&self, hay: &[u8], mut out: Vec<Finding>) -> Vec<Finding> {
        for f in self.frozen_only(hay) {
            if !out
                .iter()
                .any(|x| x.start == f.start && x.fingerprint == f.fingerprint)
            {
                out.push(f);
            }
        }
        out
    }

    /// Longest frozen credential that can be matched (0 without a frozen set).
    pub fn frozen_reach(&self) -> usize {
        self.frozen.map_or(0, |set| set.max_len())
    }

    /// Frozen credentials alone (the daemon checks these first: a kill must not wait for
    /// the rule scan).
    pub fn frozen_only(&self, hay: &[u8]) -> Vec<Finding> {
        let Some(set) = self.frozen else {
            return Vec::new();
        };
        set.find(hay)
            .into_iter()
            .map(|h| Finding {
                rule: FROZEN_RULE.into(),
                start: h.start,
                end: h.end,
                line: 1 + memchr::memchr_iter(b'\n', &hay[..h.start]).count(),
                fingerprint: set.keys()[h.key].fingerprint(),
                redacted: redact(&hay[h.start..h.end]),
            })
            .collect()
    }

    /// Is this finding a frozen credential (whatever rule found it)?
    pub fn is_frozen(&self, f: &Finding) -> bool {
        f.rule == FROZEN_RULE
            || self
                .frozen
                .is_some_and(|set| set.keys().iter().any(|k| k.fingerprint() == f.fingerprint))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::frozen::FrozenKey;
    use crate::detect::samples::{sample, Rng, ALNUM};

    #[test]
    fn frozen_key_is_reported_once_beside_rule_findings() {
        let engine = Engine::builtin();
        let mut rng = Rng::from_time();
        let (known, text) = sample("anthropic-api-key", &mut rng).unwrap();
        let opaque = rng.string(ALNUM, 40);
        let set = FrozenSet::new(vec![
            FrozenKey::from_secret(known.as_bytes()),
            FrozenKey::from_secret(opaque.as_bytes()),
        ]);
        let hay = format!("key={text}\nline two {opaque} end\n");
        let d = Detector::new(&engine, Some(&set));
        let found = d.scan(hay.as_bytes());
        let fps: Vec<&str> = found.iter().map(|f| f.fingerprint.as_str()).collect();
        let fk = crate::detect::fingerprint(known.as_bytes());
        let fo = crate::detect::fingerprint(opaque.as_bytes());
        assert_eq!(fps.iter().filter(|f| **f == fk).count(), 1, "{found:?}");
        assert_eq!(fps.iter().filter(|f| **f == fo).count(), 1, "{found:?}");
        let o = found.iter().find(|f| f.fingerprint == fo).unwrap();
        assert_eq!(o.rule, FROZEN_RULE);
        assert_eq!(o.line, 2);
        assert!(found.iter().all(|f| d.is_frozen(f)));
        // Without a frozen set only the rule finding remains.
        let plain = Detector::new(&engine, None).scan(hay.as_bytes());
        assert!(plain.iter().all(|f| f.fingerprint != fo));
    }
}
