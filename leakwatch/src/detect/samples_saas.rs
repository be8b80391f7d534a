//! Sample secrets for the rules in `rules_saas.toml` (see `samples`): generated from a seed,
//! never a real credential.
use super::samples::Rng;

/// A sample secret for `rule` and the text to embed, as `samples::sample`.
pub fn sample(rule: &str, rng: &mut Rng) -> Option<(String, String)> {
    let _ = (rule, rng);
    None
}
