//! Prometheus metrics and the `/metrics` HTTP endpoint. Labels never carry secrets: rule
//! ids, sources and probe names only. The endpoint is a minimal HTTP/1.1 responder (one
//! path, no keep-alive) so the daemon does not need a web framework.
use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

pub struct Metrics {
    pub registry: Registry,
    pub events: IntCounterVec,
    pub findings: IntCounterVec,
    pub suppressed: IntCounter,
    pub lost: IntCounterVec,
    pub exec_truncated: IntCounter,
    pub exec_strings_dropped: IntCounter,
    pub exec_bytes_dropped: IntCounter,
    pub decode_errors: IntCounter,
    pub internal_errors: IntCounterVec,
    pub alerts: IntCounterVec,
    pub kills: IntCounterVec,
    pub severed: IntCounter,
    pub frozen: IntGauge,
    pub probes_attached: IntGauge,
    pub exec_kill_pinned: IntGauge,
    pub probes_expected: IntGauge,
    pub queue_dropped: IntCounterVec,
    pub pipeline_dropped: IntCounterVec,
    pub kernel_skipped: IntCounterVec,
    pub kernel_folded: IntCounterVec,
    pub capture_truncated: IntCounterVec,
    pub capture_bytes_dropped: IntCounterVec,
    pub captured_bytes: IntCounterVec,
    pub scanned_bytes: IntCounterVec,
    pub core_dumps: IntCounterVec,
    pub tls_files: IntCounterVec,
    pub tls_records: IntCounterVec,
    pub expected_sends: IntCounterVec,
    pub host_checks: IntCounterVec,
    pub renames: IntCounterVec,
    pub tls_blind: IntGauge,
    pub ring_fill: prometheus::GaugeVec,
    pub streams: IntGauge,
    pub streams_evicted: IntCounter,
    pub files_held: IntGauge,
    pub actions_rows: IntCounterVec,
    pub actions_pruned: IntCounter,
    pub actions_errors: IntCounter,
    pub config_reloads: IntCounter,
    pub detection_latency: HistogramVec,
    pub build_info: IntGaugeVec,
    pub config_reload_failures: IntCounter,
    pub held_bytes_unread: IntCounter,
    pub fds_unresolved: IntCounter,
    pub exec_unchecked: IntCounter,
    pub exec_recovered: IntCounter,
    pub fleet_connected: IntGauge,
    pub fleet_applied: IntCounter,
    pub fleet_refused: IntCounter,
    pub fleet_errors: IntCounter,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates every (rule, source) series of `leakwatch_findings_total` at 0. A counter
    /// that first appears already at 1 has no increase to alert on: without this, the first
    /// leak of each kind would never fire `LeakwatchCredentialLeaked`.
    pub fn init_findings<'a>(&self, rules: impl Iterator<Item = &'a str>) {
        for rule in rules.chain([crate::detect::detector::FROZEN_RULE]) {
            for src in crate::source::Source::ALL {
                let _ = self.findings.with_label_values(&[rule, src.as_str()]);
            }
        }
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics::unlabelled();
        // Every per-probe series exists from the start at 0, so a rule or a dashboard sees
        // "no loss yet" rather than no series (an absent series never fires `increase`).
        for probe in leakwatch_common::PROBE_NAMES {
            for c in [&m.lost, &m.pipeline_dropped] {
                c.with_label_values(&[probe]);
            }
        }
        for o in ["attached", "failed"] {
            m.tls_files.with_label_values(&[o]);
        }
        for probe in [
            leakwatch_common::PROBE_SSL_WRITE,
            leakwatch_common::PROBE_GO_TLS_WRITE,
        ] {
            for socket in ["named", "paired", "none"] {
                let name = leakwatch_common::PROBE_NAMES[probe as usize];
                m.tls_records.with_label_values(&[name, socket]);
            }
        }
        for o in [
            "scanned",
            "handler",
            "other_handler",
            "not_found",
            "skipped",
        ] {
            m.core_dumps.with_label_values(&[o]);
        }
        for stage in crate::panics::STAGES {
            m.internal_errors.with_label_values(&[stage]);
        }
        for q in ["events", "alerts", "actions", "dumps"] {
            m.queue_dropped.with_label_values(&[q]);
        }
        for by in ["freeze", "kernel", "userspace", "write"] {
            m.kills.with_label_values(&[by]);
        }
        m
    }

    fn unlabelled() -> Metrics {
        let r = Registry::new();
        Metrics {
            events: counter_vec(
                &r,
                "leakwatch_events_total",
                "Kernel events received, by probe.",
                &["probe"],
            ),
            findings: counter_vec(
                &r,
                "leakwatch_findings_total",
                "Credentials found, by rule and source.",
                &["rule", "source"],
            ),
            suppressed: counter(
                &r,
                "leakwatch_findings_suppressed_total",
                "Repeat findings not alerted again within the dedupe window.",
            ),
            lost: counter_vec(
                &r,
                "leakwatch_lost_events_total",
                "Events lost before userspace saw them, by probe (ring buffer full) or stage.",
                &["probe"],
            ),
            exec_truncated: counter(
                &r,
                "leakwatch_exec_truncated_total",
                "Execs whose argv/env did not fit the capture limits.",
            ),
            exec_strings_dropped: counter(
                &r,
                "leakwatch_exec_strings_dropped_total",
                "argv/env strings not captured.",
            ),
            exec_bytes_dropped: counter(
                &r,
                "leakwatch_exec_bytes_dropped_total",
                "argv/env bytes not captured.",
            ),
            decode_errors: counter(
                &r,
                "leakwatch_decode_errors_total",
                "Malformed kernel records.",
            ),
            internal_errors: counter_vec(
                &r,
                "leakwatch_internal_errors_total",
                "Records (or periodic passes, or files) dropped because leakwatch's own code \
                 panicked on them, by stage: a bug (the log names its place); the daemon goes on.",
                &["stage"],
            ),
            alerts: counter_vec(
                &r,
                "leakwatch_alerts_total",
                "Alert lines written, by kind.",
                &["kind"],
            ),
            kills: counter_vec(
                &r,
                "leakwatch_kills_total",
                "Processes killed for holding a frozen credential, by who: freeze (the sweep), kernel and userspace (at exec), write (seen writing or sending it).",
                &["by"],
            ),
            severed: counter(
                &r,
                "leakwatch_connections_severed_total",
                "TCP connections destroyed by freeze.",
            ),
            frozen: gauge(
                &r,
                "leakwatch_frozen_credentials",
                "Credentials currently frozen.",
            ),
            probes_attached: gauge(&r, "leakwatch_probes_attached", "Kernel probes attached."),
            exec_kill_pinned: gauge(
                &r,
                "leakwatch_exec_kill_pinned",
                "1 while the exec kill is pinned in bpffs (something is frozen): it stays attached if the daemon stops or dies.",
            ),
            probes_expected: gauge(
                &r,
                "leakwatch_probes_expected",
                "Kernel probes this build attaches.",
            ),
            queue_dropped: counter_vec(
                &r,
                "leakwatch_queue_dropped_total",
                "Items dropped because a pipeline queue was full, by queue (events, alerts, actions).",
                &["queue"],
            ),
            pipeline_dropped: counter_vec(
                &r,
                "leakwatch_pipeline_dropped_total",
                "Kernel records dropped by the full events queue, by probe (with \
                 leakwatch_events_total, leakwatch_kernel_folded_total and \
                 leakwatch_lost_events_total: every call the probe saw is counted once).",
                &["probe"],
            ),
            kernel_skipped: counter_vec(
                &r,
                "leakwatch_kernel_skipped_total",
                "Write-family calls the kernel did not copy because the process is out of scope.",
                &["probe"],
            ),
            kernel_folded: counter_vec(
                &r,
                "leakwatch_kernel_folded_total",
                "Calls the kernel counted instead of sending a record, by probe: a connect \
                 repeating the process's last recorded connect on that fd (same remote) within \
                 a second of it. Their number rides on a later record (with \
                 leakwatch_events_total, leakwatch_lost_events_total and \
                 leakwatch_pipeline_dropped_total: every call the probe saw is counted once).",
                &["probe"],
            ),
            capture_truncated: counter_vec(
                &r,
                "leakwatch_capture_truncated_total",
                "Write-family calls whose payload was cut (capture cap, iovec limit, unreadable page).",
                &["probe"],
            ),
            capture_bytes_dropped: counter_vec(
                &r,
                "leakwatch_capture_bytes_dropped_total",
                "Payload bytes not captured by cut calls.",
                &["probe"],
            ),
            captured_bytes: counter_vec(
                &r,
                "leakwatch_captured_bytes_total",
                "Payload bytes received from the kernel and scanned.",
                &["probe"],
            ),
            ring_fill: {
                let g = prometheus::GaugeVec::new(
                    Opts::new(
                        "leakwatch_ring_fill_ratio",
                        "How full each kernel ring buffer is (events, writes), 0 to 1, sampled every second.",
                    ),
                    &["ring"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            scanned_bytes: counter_vec(
                &r,
                "leakwatch_scanned_bytes_total",
                "Bytes handed to detection, by source (argv, env, file, socket, pipe, tty; held files read back count as file).",
                &["source"],
            ),
            core_dumps: counter_vec(
                &r,
                "leakwatch_core_dumps_total",
                "Processes that dumped core, by outcome: scanned (file core_pattern, read by the daemon), handler (leakwatch's core-handler scans it), other_handler (a pipe handler leakwatch cannot read), not_found (no file matched the pattern), skipped (scanner queue full).",
                &["outcome"],
            ),
            tls_files: counter_vec(
                &r,
                "leakwatch_tls_files_total",
                "Files found to define OpenSSL's SSL_write/SSL_write_ex (the system libssl, executables that carry OpenSSL), by outcome of attaching the TLS plaintext probes to them: attached, failed.",
                &["outcome"],
            ),
            tls_records: counter_vec(
                &r,
                "leakwatch_tls_records_total",
                "TLS plaintext records by probe and how their socket was known: named (the kernel saw it: the library's write during the call, or Go's Conn), paired (the thread's next socket write), none (reported without a remote).",
                &["probe", "socket"],
            ),
            tls_blind: gauge(
                &r,
                "leakwatch_tls_blind_programs",
                "Programs seen connecting out with a TLS stack the probes cannot read (Go, Java, GnuTLS, NSS); listed by `leakwatch status`.",
            ),
            expected_sends: counter_vec(
                &r,
                "leakwatch_expected_sends_total",
                "Credentials sent to one of their rule's expected destinations (its provider's hosts, or [[destination]]): recorded in the action log, not alerted.",
                &["rule"],
            ),
            host_checks: counter_vec(
                &r,
                "leakwatch_host_checks_total",
                "Socket findings sent to a host their rule expects, by how the destination was judged: resolved (the name resolves to the peer), proxy, address, trusted (expected); mismatch, unresolved, no_address (alerted).",
                &["result"],
            ),
            renames: counter_vec(
                &r,
                "leakwatch_findings_renamed_total",
                "File findings whose file was looked for after the finding, by result: in_place (still under its name at the last look), renamed (found under another name in its directory and alerted again there), not_found (deleted, or moved out of its directory), not_watched (too many watched at once), not_local (on FUSE, a network filesystem or another not looked in).",
                &["result"],
            ),
            streams: gauge(
                &r,
                "leakwatch_streams",
                "Write streams (process, fd) being reassembled.",
            ),
            streams_evicted: counter(
                &r,
                "leakwatch_streams_evicted_total",
                "Idle write streams dropped to bound memory (their tail is no longer joined).",
            ),
            detection_latency: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "leakwatch_detection_latency_seconds",
                        "From the kernel event (exec, write) to its finding alert written by the sinks.",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                        2.5, 5.0, 10.0,
                    ]),
                    &["source"],
                )
                .expect("valid metric");
                r.register(Box::new(h.clone())).expect("unique metric");
                h
            },
            build_info: {
                let g = IntGaugeVec::new(
                    Opts::new("leakwatch_build_info", "Always 1: the running version."),
                    &["version"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
                g
            },
            fleet_connected: gauge(
                &r,
                "leakwatch_fleet_connected",
                "1 while the fleet store (etcd) is reachable and watched; 0 while it is not (the local frozen set stays enforced), and without a [fleet] table.",
            ),
            fleet_applied: counter(
                &r,
                "leakwatch_fleet_applied_total",
                "Fleet freezes and unfreezes applied on this host.",
            ),
            fleet_refused: counter(
                &r,
                "leakwatch_fleet_refused_total",
                "Fleet entries refused as malformed (reported as fleet alerts and under PREFIX/hosts/HOST/refused/).",
            ),
            fleet_errors: counter(
                &r,
                "leakwatch_fleet_errors_total",
                "Fleet store sessions that failed (connect, read, watch, lease); each is retried with backoff.",
            ),
            config_reloads: counter(
                &r,
                "leakwatch_config_reloads_total",
                "Configs reloaded and applied on SIGHUP.",
            ),
            config_reload_failures: counter(
                &r,
                "leakwatch_config_reload_failures_total",
                "SIGHUP reloads refused (invalid config): the running config stayed in force.",
            ),
            actions_rows: counter_vec(
                &r,
                "leakwatch_actions_rows_total",
                "Rows written to the action log, by kind (exec, connect, write, finding, kill, sever, freeze).",
                &["kind"],
            ),
            actions_pruned: counter(
                &r,
                "leakwatch_actions_pruned_total",
                "Action log rows deleted by [actions] max_age or max_mb, oldest first.",
            ),
            actions_errors: counter(
                &r,
                "leakwatch_actions_errors_total",
                "Action log failures (open, write, prune); rows of a failed write are lost.",
            ),
            files_held: gauge(
                &r,
                "leakwatch_files_held",
                "Regular files the daemon holds open to read writes to them by reference.",
            ),
            held_bytes_unread: counter(
                &r,
                "leakwatch_held_bytes_unread_total",
                "Bytes written by reference that could not be read back (file truncated first, or no longer held).",
            ),
            exec_unchecked: counter(
                &r,
                "leakwatch_exec_unchecked_total",
                "Execs killed because their argument area could not be fully checked while a credential is frozen.",
            ),
            exec_recovered: counter(
                &r,
                "leakwatch_exec_recovered_total",
                "Execs whose argv/env the kernel could not copy in full, read and scanned from the new image's /proc entries instead.",
            ),
            fds_unresolved: counter(
                &r,
                "leakwatch_fds_unresolved_total",
                "Writes whose fd could not be named (no path or peer).",
            ),
            registry: r,
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Children of a one-label counter, each looked up once: the write path counts every
/// event, and `with_label_values` hashes the label each time. A child is made at its first
/// use, so the exposition is as with `with_label_values`.
pub struct Labelled {
    vec: IntCounterVec,
    names: &'static [&'static str],
    slots: Vec<std::sync::OnceLock<IntCounter>>,
}

impl Labelled {
    /// `names[i]` is the label value of slot `i`.
    pub fn new(vec: &IntCounterVec, names: &'static [&'static str]) -> Labelled {
        Labelled {
            vec: vec.clone(),
            names,
            slots: (0..=names.len()).map(|_| Default::default()).collect(),
        }
    }

    /// The child of `names[i]`; past the end, the child labelled `unknown`.
    pub fn get(&self, i: usize) -> &IntCounter {
        let i = i.min(self.names.len());
        let name = self.names.get(i).copied().unwrap_or("unknown");
        self.slots[i].get_or_init(|| self.vec.with_label_values(&[name]))
    }
}

/// Binds the metrics listener (so a bad address fails at start, not later).
pub async fn bind(addr: &str) -> Result<TcpListener> {
    let sa: SocketAddr = addr.parse().with_context(|| {
        format!("metrics address `{addr}` is not IP:PORT (e.g. 127.0.0.1:9477)")
    })?;
    TcpListener::bind(sa).await.with_context(|| {
        format!("cannot listen on {addr} for metrics; pick a free port with --metrics-addr")
    })
}

/// Serves `GET /metrics`. Connections are kept alive between requests (Prometheus reuses
/// its connection, and a scrape then costs no connect: no event of the daemon's own
/// making) until the client closes, asks to close, or is idle for `IDLE`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(answer(sock, metrics.clone()));
    }
}

/// How long a kept-alive connection may sit idle.
const IDLE: std::time::Duration = std::time::Duration::from_secs(120);
/// A request head larger than this is refused (the connection closed).
const HEAD_MAX: usize = 8192;

async fn answer(mut sock: tokio::net::TcpStream, m: Arc<Metrics>) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > HEAD_MAX {
                return;
            }
            let mut chunk = [0u8; 2048];
            match tokio::time::timeout(IDLE, sock.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        buf.drain(..end);
        let close = head.contains("\r\nconnection: close")
            || (head.contains(" http/1.0\r\n") && !head.contains("\r\nconnection: keep-alive"));
        let conn = if close { "close" } else { "keep-alive" };
        let resp = if head.starts_with("get /metrics") {
            let body = m.render();
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n{body}",
                body.len()
            )
        } else {
            format!("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: {conn}\r\n\r\n")
        };
        if sock.write_all(resp.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_children_are_the_vecs_own_and_unknown_past_the_end() {
        let m = Metrics::new();
        let l = Labelled::new(&m.scanned_bytes, &crate::source::Source::NAMES);
        l.get(crate::source::Source::Socket.index()).inc_by(5);
        l.get(99).inc();
        assert_eq!(m.scanned_bytes.with_label_values(&["socket"]).get(), 5);
        assert_eq!(m.scanned_bytes.with_label_values(&["unknown"]).get(), 1);
        assert_eq!(m.scanned_bytes.with_label_values(&["file"]).get(), 0);
    }
}
