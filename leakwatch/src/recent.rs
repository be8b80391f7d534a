//! A bounded memo of recent answers keyed by path: an answer counts for `SECS` seconds
//! (so a file replaced at the same path is seen again after at most that), at most 4,096
//! are kept. For per-exec work whose answer rarely changes (a realpath, a TLS check).
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

const MAX: usize = 4096;

pub struct Recent<V, const SECS: u64> {
    map: HashMap<String, (V, Instant)>,
}

impl<V, const SECS: u64> Default for Recent<V, SECS> {
    fn default() -> Self {
        Recent {
            map: HashMap::new(),
        }
    }
}

impl<V: Clone, const SECS: u64> Clone for Recent<V, SECS> {
    fn clone(&self) -> Self {
        Recent {
            map: self.map.clone(),
        }
    }
}

impl<V, const SECS: u64> Recent<V, SECS> {
    const FOR: Duration = Duration::from_secs(SECS);

    /// The answer for `key`, if it is recent enough.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.map
            .get(key)
            .filter(|(_, at)| at.elapsed() < Self::FOR)
            .map(|(v, _)| v)
    }

    /// Remembers `value` for `key` from now; when full, the stale answers go first, and
    /// everything if none is stale.
    pub fn insert(&mut self, key: &str, value: V) {
        let now = Instant::now();
        if self.map.len() >= MAX {
            self.map
                .retain(|_, (_, at)| now.duration_since(*at) < Self::FOR);
            if self.map.len() >= MAX {
                self.map.clear();
            }
        }
        self.map.insert(key.to_string(), (value, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_expire_and_the_memo_stays_bounded() {
        let mut r: Recent<u32, 0> = Recent::default();
        r.insert("/a", 1);
        assert_eq!(r.get("/a"), None, "a 0 s memo keeps nothing fresh");
        let mut r: Recent<u32, 60> = Recent::default();
        r.insert("/a", 1);
        assert_eq!(r.get("/a"), Some(&1));
        assert_eq!(r.get("/b"), None);
        for i in 0..MAX + 10 {
            r.insert(&format!("/f{i}"), 2);
        }
        assert!(r.map.len() <= MAX, "bounded: {}", r.map.len());
    }
}
