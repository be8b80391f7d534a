//! Fuzzes the control-socket request parser: any line a client sends must parse or fail,
//! never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = leakwatch::control::parse_request(data) {
        let _ = serde_json::to_string(&req);
    }
});
