//! Fuzzes the ring-buffer record decoder: arbitrary bytes (a malformed or hostile record)
//! must never panic, and whatever decodes stays inside the record.
#![no_main]

use leakwatch::events::{decode, Event};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ev) = decode(data) {
        match &ev {
            Event::Exec(e) => {
                let carried: usize = e.argv().chain(e.env()).map(|s| s.len()).sum();
                assert!(carried + e.filename.len() <= data.len() * 3);
            }
            Event::Write(w) => {
                assert!(w.data.len() <= data.len());
                let _ = w.kind();
            }
            Event::Connect(c) => {
                let _ = leakwatch::events::format_peer(&c.peer);
            }
            Event::Enforce(_) | Event::Core(_) | Event::Copy(_) => {}
        }
        assert!(ev.task().probe < leakwatch::events::PROBE_COUNT);
    }
});
