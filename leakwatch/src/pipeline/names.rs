//! The names stage: a socket finding expected only by the host name its own bytes carried
//! (`dest::Expect::Named`) waits here until that name's addresses say whether the peer is
//! that host (`resolve`). If it is, the send is recorded as expected; if not, it alerts and
//! says why (`host_check`: `mismatch` with `host_addresses`, `unresolved` with
//! `host_error`, `no_address`). Nothing waits longer than `WAIT` or is dropped: at stop,
//! every waiting finding is reported with what is known.
use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use super::{Hit, Pipeline};
use crate::{dest::Expect, procs::ProcInfo, resolve::Answer};

/// A finding waits this long for its name's lookup, then alerts as unresolved.
const WAIT: Duration = Duration::from_secs(15);
/// Findings waiting at once; past this a new one is settled with no lookup.
const MAX_WAITING: usize = 4096;

struct Parked {
    info: ProcInfo,
    hit: Hit,
    ktime_ns: u64,
    name: String,
    ip: IpAddr,
    since: Instant,
}

#[derive(Default)]
pub struct Waiting {
    parked: Vec<Parked>,
    resolver: Option<crate::resolve::Resolver>,
}

impl Waiting {
    /// Started at the first name to check: a host that never sends a provider's key to a
    /// provider's name runs no lookup thread.
    fn check(&mut self, name: &str, ip: IpAddr) -> Answer {
        self.resolver
            .get_or_insert_with(crate::resolve::Resolver::start)
            .check(name, ip)
    }
}

/// Reports `hits`, each with where it was expected: now, or once its name is checked.
pub fn report(p: &mut Pipeline, info: &ProcInfo, hits: Vec<(Hit, Expect)>, ktime_ns: u64) {
    let mut ready = Vec::with_capacity(hits.len());
    for (h, e) in hits {
        let h = match e {
            Expect::No => h,
            Expect::Yes(how) => settled(p, h, true, how),
            Expect::Named { ip: None, .. } => settled(p, h, false, "no_address"),
            Expect::Named { name, ip: Some(ip) } => match p.names.check(&name, ip) {
                Answer::Waiting if p.names.parked.len() < MAX_WAITING => {
                    p.names.parked.push(Parked {
                        info: info.clone(),
                        hit: h,
                        ktime_ns,
                        name,
                        ip,
                        since: Instant::now(),
                    });
                    continue;
                }
                a => answered(p, h, a),
            },
        };
        ready.push(h);
    }
    if !ready.is_empty() {
        p.report.report_at(info, ready, ktime_ns);
    }
}

/// Reports the waiting findings whose names have answered (all of them at `stop`).
pub fn tick(p: &mut Pipeline, stop: bool) {
    if p.names.parked.is_empty() {
        return;
    }
    let parked = std::mem::take(&mut p.names.parked);
    for w in parked {
        let a = p.names.check(&w.name, w.ip);
        if a == Answer::Waiting && !stop && w.since.elapsed() < WAIT {
            p.names.parked.push(w);
            continue;
        }
        let h = answered(p, w.hit, a);
        p.report.report_at(&w.info, vec![h], w.ktime_ns);
    }
}

fn answered(p: &Pipeline, h: Hit, a: Answer) -> Hit {
    match a {
        Answer::Match => settled(p, h, true, "resolved"),
        Answer::Mismatch(addrs) => {
            let addrs: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
            settled(p, h, false, "mismatch").with("host_addresses", addrs)
        }
        Answer::Unresolved(why) => settled(p, h, false, "unresolved").with("host_error", why),
        Answer::Waiting => settled(p, h, false, "unresolved").with(
            "host_error",
            format!("no answer from the resolver in {} s", WAIT.as_secs()),
        ),
    }
}

fn settled(p: &Pipeline, mut h: Hit, expected: bool, how: &'static str) -> Hit {
    p.metrics.host_checks.with_label_values(&[how]).inc();
    h.expected = expected;
    h.with("host_check", how)
}
