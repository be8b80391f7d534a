//! Strings already scanned and found clean. A program exec'd in a loop hands the daemon
//! the same environment thousands of times; each of its strings is scanned once, then
//! recognised. Exact, not probabilistic: a string is skipped only if it equals, byte for
//! byte, one scanned clean under the same rules and the same frozen set, and a change to
//! either empties the cache. Strings with findings are never kept, so they are scanned
//! (and reported) every time. A whole environment area (every variable of an exec, as
//! the kernel laid them out) is kept the same way when none of its strings had a finding,
//! so an unchanged environment costs one lookup per exec.
use std::sync::Arc;

use crate::{detect::Engine, fastmap::FastSet};

/// Bytes of clean strings kept at most; past it the cache starts over.
const MAX_BYTES: usize = 2 << 20;
/// Longer strings are scanned every time (rare in argv and environments, and costly to keep).
const MAX_STRING: usize = 4096;
/// Longer environment areas are looked up string by string.
const MAX_AREA: usize = 256 << 10;

#[derive(Default)]
pub struct Clean {
    set: FastSet<Box<[u8]>>,
    /// Whole environment areas, apart from strings: an area of one variable is not the
    /// same thing as an argument of the same bytes.
    areas: FastSet<Box<[u8]>>,
    bytes: usize,
    /// The engine and frozen-set generation the strings were found clean under.
    under: (u64, u64),
}

impl Clean {
    /// Empties the cache unless it was filled under this engine and frozen set.
    pub fn under(&mut self, engine: &Arc<Engine>, frozen: u64) {
        // By compile, not address: a reload's engine can be given a freed one's address.
        let now = (engine.id(), frozen);
        if self.under != now {
            self.clear();
            self.under = now;
        }
    }

    pub fn contains(&self, s: &[u8]) -> bool {
        s.len() <= MAX_STRING && self.set.contains(s)
    }

    /// `s` was scanned and nothing was found in it.
    pub fn insert(&mut self, s: &[u8]) {
        if s.len() <= MAX_STRING {
            self.keep(s, false);
        }
    }

    /// Was this whole environment area found clean before?
    pub fn contains_area(&self, area: &[u8]) -> bool {
        !area.is_empty() && area.len() <= MAX_AREA && self.areas.contains(area)
    }

    /// Every string of this environment area was scanned and nothing was found in any.
    pub fn insert_area(&mut self, area: &[u8]) {
        if !area.is_empty() && area.len() <= MAX_AREA {
            self.keep(area, true);
        }
    }

    fn keep(&mut self, s: &[u8], area: bool) {
        if self.bytes + s.len() > MAX_BYTES {
            self.clear();
        }
        let set = if area { &mut self.areas } else { &mut self.set };
        if set.insert(s.into()) {
            self.bytes += s.len();
        }
    }

    fn clear(&mut self) {
        self.set = Default::default();
        self.areas = Default::default();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_of_rules_or_frozen_set_forgets_every_clean_string() {
        let (a, b) = (Arc::new(Engine::builtin()), Arc::new(Engine::builtin()));
        let mut c = Clean::default();
        c.under(&a, 1);
        c.insert(b"PATH=/usr/bin");
        assert!(c.contains(b"PATH=/usr/bin"));
        assert!(!c.contains(b"PATH=/usr/bin:/bin"), "only the same bytes");
        c.under(&a, 1);
        assert!(c.contains(b"PATH=/usr/bin"), "same engine and set: kept");
        c.under(&a, 2);
        assert!(!c.contains(b"PATH=/usr/bin"), "a new frozen set empties it");
        c.insert(b"PATH=/usr/bin");
        c.under(&b, 2);
        assert!(!c.contains(b"PATH=/usr/bin"), "new rules empty it");
        c.insert_area(b"A=1\0B=2\0");
        assert!(c.contains_area(b"A=1\0B=2\0"));
        assert!(!c.contains(b"A=1\0B=2\0"), "an area is not a string");
        c.insert(b"A=1");
        assert!(!c.contains_area(b"A=1"), "a string is not an area");
        c.under(&b, 3);
        assert!(
            !c.contains_area(b"A=1\0B=2\0"),
            "a new frozen set empties areas too"
        );
        c.insert(&vec![b'x'; MAX_STRING + 1]);
        assert!(
            !c.contains(&vec![b'x'; MAX_STRING + 1]),
            "long strings are not kept"
        );
        for i in 0..(MAX_BYTES / 1000 + 10) {
            c.insert(format!("{i:01000}").as_bytes());
        }
        assert!(c.bytes <= MAX_BYTES, "bounded: {}", c.bytes);
    }

    /// A reload's engine may be given the address of the engine it replaced, once that
    /// is freed: the cache still empties (it is keyed by compile, not address).
    #[test]
    fn an_engine_at_a_freed_engines_address_still_empties_it() {
        let mut c = Clean::default();
        let mut reused = 0;
        for _ in 0..20 {
            let a = Arc::new(
                Engine::new(&crate::detect::rules::RuleSet { rules: Vec::new() }).unwrap(),
            );
            let at = Arc::as_ptr(&a);
            c.under(&a, 1);
            c.insert(b"PATH=/usr/bin");
            drop(a);
            let b = Arc::new(
                Engine::new(&crate::detect::rules::RuleSet { rules: Vec::new() }).unwrap(),
            );
            reused += usize::from(Arc::as_ptr(&b) == at);
            c.under(&b, 1);
            assert!(!c.contains(b"PATH=/usr/bin"), "new rules empty it");
        }
        // The case this is about happened (glibc hands a freed block of the size back).
        assert!(reused > 0, "no engine was given a freed one's address");
    }
}
