//! Fuzzes the detection engine: arbitrary bytes must never panic, the SIMD keyword filter
//! must agree with the portable one, findings must lie inside the input with fingerprints
//! of exactly those bytes, the streaming scanner must agree with the whole-buffer scan
//! whatever the chunking, and frozen matching must find planted keys.
#![no_main]

use leakwatch::detect::{
    fingerprint,
    frozen::{FrozenKey, FrozenSet},
    stream::StreamScanner,
    Detector, Engine,
};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static ENGINE: OnceLock<Engine> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let engine = ENGINE.get_or_init(Engine::builtin);
    // The SIMD keyword filter must miss nothing the portable automaton finds.
    let [simd, portable] = engine.keyword_paths(data);
    assert_eq!(simd, portable);
    let found = engine.scan(data);
    for f in &found {
        assert!(f.start < f.end && f.end <= data.len());
        assert_eq!(f.fingerprint, fingerprint(&data[f.start..f.end]));
    }
    // Chunk size from the first byte: the stream must report each whole-buffer finding.
    let chunk = 1 + data.first().copied().unwrap_or(0) as usize * 7;
    let d = Detector::new(engine, None);
    let mut s = StreamScanner::new(engine);
    let mut streamed = Vec::new();
    for c in data.chunks(chunk) {
        streamed.extend(s.feed(&d, c));
    }
    streamed.extend(s.finish(&d));
    for f in &found {
        assert!(
            streamed
                .iter()
                .any(|x| x.finding.fingerprint == f.fingerprint && x.offset == f.start as u64),
            "stream missed {} at {}",
            f.rule,
            f.start
        );
    }
    // A key planted in the input is found by the frozen matcher.
    if data.len() >= 16 {
        let key = &data[data.len() / 4..data.len() / 4 + 8];
        let set = FrozenSet::new(vec![FrozenKey::from_secret(key)]);
        let hits = set.find(data);
        assert!(hits.iter().any(|h| h.start == data.len() / 4));
    }
});
