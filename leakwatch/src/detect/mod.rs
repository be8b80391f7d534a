//! Credential detection: bytes in, findings out. Pure library (no I/O, no clock), shared by
//! the daemon (argv, env, payloads) and `leakwatch scan`; `Detector` adds frozen credentials
//! to the rule findings, `StreamScanner` reassembles a stream of writes.
//!
//! One keyword prefilter pass (SIMD on x86-64, see `keywords`) finds every rule keyword; each rule's regex runs only in a window
//! around its keyword hits; candidates then pass entropy, validator and allowlist checks.
//! Encoded data is decoded and scanned too: percent-encoding, base64 text (`b64`) and gzip
//! members (`gz`).
mod b64;
mod bigrams;
pub mod decode;
pub mod detector;
mod engine;
pub mod frozen;
mod gz;
mod keywords;
pub mod redact;
pub mod rules;
pub mod samples;
mod samples_saas;
pub mod stream;
mod teddy;
mod validate;

pub use detector::Detector;
pub use engine::{Engine, Finding};
pub use redact::{fingerprint, redact};
pub use rules::{RuleSet, RuleSpec};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_b64;
#[cfg(test)]
mod tests_calls;
#[cfg(test)]
mod tests_gz;
#[cfg(test)]
mod tests_shapes;
#[cfg(test)]
mod tests_syntax;
