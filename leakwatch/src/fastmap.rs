//! Hash maps for the per-event paths: keys there are kernel-assigned numbers (pids, fds,
//! inodes) and short strings, and std's SipHash showed in the daemon's profile. foldhash
//! is seeded per process, which keeps crafted-key collisions impractical.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
