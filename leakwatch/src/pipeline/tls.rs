//! TLS plaintext records (`SSL_write`): scanned as the socket's own stream, apart from its
//! ciphertext, with `tls: true`. The kernel names the socket when the library wrote the
//! ciphertext during the call (python, curl) or, for Go, from the `Conn` the call was
//! given. With a memory BIO (node) it cannot: such a
//! record waits (at most `WAIT`) for its thread's next socket write — the ciphertext going
//! out — and takes that socket; one still unpaired then is reported without a remote.
//! HTTP/2 header blocks are decoded (`h2`) and scanned with the raw bytes.
use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use super::{write::scan, Pipeline};
use crate::{classify::Target, events::WriteEvent, source::Source};

/// How long a record with no socket waits for its thread's ciphertext write.
const WAIT: Duration = Duration::from_millis(200);
/// Records waiting per thread and in all; beyond, a record is reported at once.
const PER_THREAD: usize = 64;
const TOTAL: usize = 4096;
/// Plaintext streams are keyed by fd + this (fds are below 2^30).
const STREAM_FD: i32 = 1 << 30;

/// Records waiting for their socket, by thread id.
#[derive(Default)]
pub struct Waiting {
    by_tid: HashMap<u32, VecDeque<(Instant, WriteEvent)>>,
    count: usize,
}

/// The stream key of a socket's plaintext.
pub(super) fn stream_fd(fd: i32) -> i32 {
    STREAM_FD | (fd & (STREAM_FD - 1))
}

pub(super) fn on_tls(p: &mut Pipeline, w: WriteEvent) {
    if p.is_leakwatch(&w.task) {
        return;
    }
    if w.fd >= 0 {
        count(p, &w, "named");
        let (target, _) = p.fds.classify(&w);
        return process(p, w, target);
    }
    let full = p.tls_wait.count >= TOTAL
        || p.tls_wait
            .by_tid
            .get(&w.task.pid)
            .is_some_and(|q| q.len() >= PER_THREAD);
    if full {
        count(p, &w, "none");
        return process(p, w, Target::Socket(None));
    }
    p.tls_wait.count += 1;
    p.tls_wait
        .by_tid
        .entry(w.task.pid)
        .or_default()
        .push_back((Instant::now(), w));
}

/// A (ciphertext) socket write by `w`'s thread: the plaintext waiting for a socket went
/// out on this one.
pub(super) fn on_socket_write(p: &mut Pipeline, w: &WriteEvent, target: &Target) {
    if p.tls_wait.count == 0 {
        return;
    }
    let Some(q) = p.tls_wait.by_tid.remove(&w.task.pid) else {
        return;
    };
    p.tls_wait.count -= q.len();
    for (_, mut t) in q {
        count(p, &t, "paired");
        t.fd = w.fd;
        process(p, t, target.clone());
    }
}

/// `leakwatch_tls_records_total`: how a record's socket was known.
fn count(p: &Pipeline, w: &WriteEvent, socket: &str) {
    let probe = leakwatch_common::PROBE_NAMES
        .get(w.task.probe as usize)
        .copied()
        .unwrap_or("unknown");
    p.metrics
        .tls_records
        .with_label_values(&[probe, socket])
        .inc();
}

/// Reports records that waited `WAIT` without a socket write (`all`: every waiting one,
/// at stop).
pub(super) fn tick(p: &mut Pipeline, all: bool) {
    let now = Instant::now();
    let stale: Vec<u32> = p
        .tls_wait
        .by_tid
        .iter()
        .filter(|(_, q)| {
            all || q
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) >= WAIT)
        })
        .map(|(k, _)| *k)
        .collect();
    for tid in stale {
        if let Some(q) = p.tls_wait.by_tid.remove(&tid) {
            p.tls_wait.count -= q.len();
            for (_, t) in q {
                count(p, &t, "none");
                process(p, t, Target::Socket(None));
            }
        }
    }
}

fn process(p: &mut Pipeline, mut w: WriteEvent, target: Target) {
    let source = target.source().unwrap_or(Source::Socket);
    if w.fd >= 0 {
        p.fds.learn_host(w.task.tgid, w.fd, &w.data);
    }
    // HTTP/2: header values are HPACK-coded; scan them decoded too.
    let decoded = p.h2.feed((w.task.tgid, w.fd), &w.data);
    if !decoded.is_empty() {
        crate::wipe::extend(&mut w.data, b"\n");
        crate::wipe::extend(&mut w.data, &decoded);
        let mut decoded = decoded;
        crate::wipe::vec(&mut decoded);
    }
    scan(p, w, target, source, true);
}
