//! Is a host name where the bytes went? A socket names its host itself (SNI, `Host:`), so a
//! process can name a provider while it sends to any address. Before a send is trusted by
//! its name, the peer address is checked against what the name resolves to, through the
//! system resolver (`/etc/hosts`, DNS) on threads of their own, never on the pipeline's.
//! Every address ever seen for a name is kept (CDNs rotate), and a name is looked up again,
//! at most every `RECHECK`, before a peer outside that set is called a mismatch.
use std::{
    collections::HashMap,
    net::{IpAddr, ToSocketAddrs},
    sync::{
        mpsc::{self, Receiver, SyncSender},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// A name is looked up again this long after its last answer, when a peer is not in its set.
pub const RECHECK: Duration = Duration::from_secs(10);
/// Names remembered (least recently used go first).
const MAX_NAMES: usize = 4096;
/// Addresses remembered per name.
const MAX_ADDRS: usize = 64;
/// Lookups waiting for a thread; past this a check answers `Unresolved` at once.
const QUEUE: usize = 1024;
const THREADS: usize = 2;

/// What a name says about a peer address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The name resolves to this address.
    Match,
    /// The name resolves, never to this address (the addresses it gave, at most 8).
    Mismatch(Vec<IpAddr>),
    /// The name did not resolve (why).
    Unresolved(String),
    /// A lookup is under way: ask again later.
    Waiting,
}

#[derive(Default)]
struct Entry {
    addrs: Vec<IpAddr>,
    error: Option<String>,
    answered: Option<Instant>,
    asking: bool,
    used: Option<Instant>,
}

/// The names' answers so far; pure (time passed in), so it is tested without a resolver.
#[derive(Default)]
pub struct Cache {
    names: HashMap<String, Entry>,
}

impl Cache {
    /// The answer for `ip` under `name` at `now`; `true` with it when a lookup must be asked.
    pub fn check(&mut self, name: &str, ip: IpAddr, now: Instant) -> (Answer, bool) {
        let ip = ip.to_canonical();
        if !self.names.contains_key(name) && self.names.len() >= MAX_NAMES {
            self.evict();
        }
        let e = self.names.entry(name.to_string()).or_default();
        e.used = Some(now);
        if e.addrs.contains(&ip) {
            return (Answer::Match, false);
        }
        if e.asking {
            return (Answer::Waiting, false);
        }
        if e.answered.is_none_or(|t| now.duration_since(t) >= RECHECK) {
            e.asking = true;
            return (Answer::Waiting, true);
        }
        let a = if e.addrs.is_empty() {
            Answer::Unresolved(e.error.clone().unwrap_or_else(|| "no address".into()))
        } else {
            Answer::Mismatch(e.addrs.iter().take(8).copied().collect())
        };
        (a, false)
    }

    /// A lookup of `name` answered: its addresses join the ones seen before.
    pub fn answer(&mut self, name: &str, got: Result<Vec<IpAddr>, String>, now: Instant) {
        let Some(e) = self.names.get_mut(name) else {
            return;
        };
        e.asking = false;
        e.answered = Some(now);
        match got {
            Ok(addrs) => {
                e.error = None;
                for a in addrs.into_iter().map(|a| a.to_canonical()) {
                    if !e.addrs.contains(&a) {
                        if e.addrs.len() >= MAX_ADDRS {
                            e.addrs.remove(0);
                        }
                        e.addrs.push(a);
                    }
                }
            }
            Err(why) => e.error = Some(why),
        }
    }

    /// Drops the least recently used half of the names not being looked up.
    fn evict(&mut self) {
        let mut used: Vec<Instant> = self.names.values().filter_map(|e| e.used).collect();
        used.sort_unstable();
        if let Some(&cut) = used.get(used.len() / 2) {
            self.names
                .retain(|_, e| e.asking || e.used.is_some_and(|t| t > cut));
        }
    }
}

/// The cache and the lookup threads feeding it.
#[derive(Clone)]
pub struct Resolver {
    cache: Arc<Mutex<Cache>>,
    ask: SyncSender<String>,
}

impl Resolver {
    /// Starts the lookup threads (they end with the last clone of this).
    pub fn start() -> Resolver {
        let cache = Arc::new(Mutex::new(Cache::default()));
        let (ask, rx) = mpsc::sync_channel::<String>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..THREADS {
            let (cache, rx) = (Arc::downgrade(&cache), rx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("lw-resolve-{i}"))
                .spawn(move || lookups(&rx, &cache));
            if let Err(e) = spawned {
                log::warn!("starting a name lookup thread failed: {e}");
            }
        }
        Resolver { cache, ask }
    }

    /// What `name` says about `ip` now; `Waiting` while it is looked up.
    pub fn check(&self, name: &str, ip: IpAddr) -> Answer {
        // A thread that panicked holding the lock leaves at worst one half-updated name: a
        // cache may drop or redo it, but a poisoned lock would answer nothing ever again.
        let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (a, ask) = c.check(name, ip, now);
        if ask && self.ask.try_send(name.to_string()).is_err() {
            let why = "too many names waiting for a lookup".to_string();
            c.answer(name, Err(why.clone()), now);
            return Answer::Unresolved(why);
        }
        a
    }
}

fn lookups(rx: &Mutex<Receiver<String>>, cache: &std::sync::Weak<Mutex<Cache>>) {
    loop {
        // Poison is ignored here too (see `Resolver::check`).
        let name = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(n) => n,
            Err(_) => return,
        };
        let got = lookup(&name);
        let Some(cache) = cache.upgrade() else { return };
        cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .answer(&name, got, Instant::now());
    }
}

/// The system resolver's addresses for `name` (getaddrinfo: `/etc/hosts`, then DNS).
fn lookup(name: &str) -> Result<Vec<IpAddr>, String> {
    match (name, 0u16).to_socket_addrs() {
        Ok(it) => {
            let v: Vec<IpAddr> = it.map(|a| a.ip()).collect();
            if v.is_empty() {
                Err("no address".into())
            } else {
                Ok(v)
            }
        }
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_peer_is_checked_against_every_address_seen_and_a_miss_is_looked_up_again() {
        let mut c = Cache::default();
        let t0 = Instant::now();
        let (a, ask) = c.check("api.x", ip("1.1.1.1"), t0);
        assert_eq!((a, ask), (Answer::Waiting, true));
        // Asked once, not per check.
        assert!(!c.check("api.x", ip("1.1.1.1"), t0).1);
        c.answer("api.x", Ok(vec![ip("1.1.1.1")]), t0);
        assert_eq!(c.check("api.x", ip("1.1.1.1"), t0).0, Answer::Match);
        // v4-mapped v6 peers (dual-stack sockets) are the same address.
        assert_eq!(c.check("api.x", ip("::ffff:1.1.1.1"), t0).0, Answer::Match);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            c.check("api.x", ip("6.6.6.6"), t1).0,
            Answer::Mismatch(vec![ip("1.1.1.1")])
        );
        // Past RECHECK a miss waits for a fresh lookup, whose addresses join the old ones.
        let t2 = t0 + RECHECK;
        assert_eq!(c.check("api.x", ip("2.2.2.2"), t2), (Answer::Waiting, true));
        c.answer("api.x", Ok(vec![ip("2.2.2.2")]), t2);
        assert_eq!(c.check("api.x", ip("2.2.2.2"), t2).0, Answer::Match);
        assert_eq!(c.check("api.x", ip("1.1.1.1"), t2).0, Answer::Match);
    }

    /// A thread that panicked holding the cache's lock does not leave every later check
    /// unanswered.
    #[test]
    fn a_poisoned_cache_still_answers() {
        let r = Resolver::start();
        {
            let cache = r.cache.clone();
            let t = std::thread::spawn(move || {
                let _held = cache.lock().unwrap();
                panic!("a bug while holding the cache");
            });
            assert!(t.join().is_err());
        }
        assert!(r.cache.is_poisoned());
        // `.invalid` never resolves: the lookup thread's answer, before or after the one
        // given here, is an error, which keeps the address.
        let name = "lw-test.invalid";
        assert_eq!(r.check(name, ip("1.1.1.1")), Answer::Waiting);
        r.cache.lock().unwrap_or_else(|e| e.into_inner()).answer(
            name,
            Ok(vec![ip("1.1.1.1")]),
            Instant::now(),
        );
        assert_eq!(r.check(name, ip("1.1.1.1")), Answer::Match);
        assert_eq!(
            r.check(name, ip("6.6.6.6")),
            Answer::Mismatch(vec![ip("1.1.1.1")])
        );
    }

    #[test]
    fn a_name_that_does_not_resolve_says_why() {
        let mut c = Cache::default();
        let t0 = Instant::now();
        c.check("nx.example", ip("1.1.1.1"), t0);
        c.answer("nx.example", Err("failed to lookup".into()), t0);
        assert_eq!(
            c.check("nx.example", ip("1.1.1.1"), t0).0,
            Answer::Unresolved("failed to lookup".into())
        );
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_names_being_looked_up() {
        let mut c = Cache::default();
        let t0 = Instant::now();
        for i in 0..MAX_NAMES + 10 {
            let t = t0 + Duration::from_millis(i as u64);
            c.check(&format!("n{i}"), ip("1.1.1.1"), t);
            if i > 0 {
                c.answer(&format!("n{i}"), Ok(vec![]), t);
            }
        }
        assert!(c.names.len() <= MAX_NAMES, "{}", c.names.len());
        assert!(
            c.names.contains_key("n0"),
            "a name being looked up was dropped"
        );
    }

    #[test]
    fn localhost_resolves_through_the_system_resolver() {
        let r = Resolver::start();
        let mut got = Answer::Waiting;
        for _ in 0..500 {
            got = r.check("localhost", ip("127.0.0.1"));
            if got != Answer::Waiting {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(got, Answer::Match);
        assert!(matches!(
            r.check("localhost", ip("127.0.0.2")),
            Answer::Mismatch(_)
        ));
    }
}
