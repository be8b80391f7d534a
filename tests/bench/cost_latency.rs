//! Detection latency for the cost part: kernel event time to the alert written
//! (`leakwatch_detection_latency_seconds`), for the three ways a key leaks here: an exec's
//! environment, a line in a log file, an HTTP request body. Measured at idle, with both
//! cores busy, and under the agent workload of the macro part.
use std::{fmt::Write as _, fs, path::Path, process::Command, time::Duration};

use leakwatch_tests::{metric, Daemon};

/// Latency quantiles of one source: (quantile, bucket upper bound in ms) for p50, p99 and
/// the largest sample's bucket, then (samples, 0).
pub type Quantiles = Vec<(f64, f64)>;

/// One condition's latencies, by source.
pub struct Lat {
    pub env: Quantiles,
    pub file: Quantiles,
    pub socket: Quantiles,
}

impl Lat {
    /// The largest p99 of the three sources, ms.
    pub fn worst_p99(&self) -> f64 {
        [&self.env, &self.file, &self.socket]
            .iter()
            .map(|q| q[1].1)
            .fold(0.0, f64::max)
    }
}

/// Quantiles of the latency histogram's increase between two scrapes.
pub fn latency(before: &str, after: &str, source: &str) -> Quantiles {
    let bucket = |t: &str, le: &str| {
        metric(
            t,
            "leakwatch_detection_latency_seconds_bucket",
            &[("source", source), ("le", le)],
        )
    };
    let les = [
        "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
        "2.5", "5", "10", "+Inf",
    ];
    let counts: Vec<f64> = les
        .iter()
        .map(|le| bucket(after, le) - bucket(before, le))
        .collect();
    let total = *counts.last().unwrap();
    let ms = |i: usize| les[i].parse::<f64>().map_or(f64::INFINITY, |s| s * 1000.0);
    let mut out = Vec::new();
    for q in [0.5, 0.99, 1.0] {
        let i = counts
            .iter()
            .position(|&c| c >= q * total - 1e-9)
            .unwrap_or(les.len() - 1);
        out.push((q, ms(i)));
    }
    out.push((total, 0.0));
    out
}

/// One long-lived python process leaking `n` fresh keys at 20/s each way: a line appended
/// to its log file (flushed at once, as loggers do) and a JSON POST to a local server.
const LEAK_PY: &str = r#"
import http.client, http.server, sys, threading, time
keys = open(sys.argv[1]).read().split()
# Opened for writing, not appending (as Go's os.Create or Java's FileOutputStream do), so
# the daemon cannot read on to the end of the file: each line is read where it landed.
log = open(sys.argv[2], 'w')
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers['Content-Length']))
        self.send_response(200)
        self.send_header('Content-Length', '0')
        self.end_headers()
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
port = srv.server_address[1]
for i in range(len(keys) // 2):
    # A burst of three lines, the key in the last.
    for line in ('%.3f INFO calling the model\n' % time.time(), 'DEBUG model=m retries=0\n',
                 'DEBUG api_key=%s\n' % keys[2 * i]):
        log.write(line)
        log.flush()
    c = http.client.HTTPConnection('127.0.0.1', port)
    body = '{"model": "m", "api_key": "%s", "messages": []}' % keys[2 * i + 1]
    c.request('POST', '/v1/messages', body=body, headers={'Content-Type': 'application/json'})
    c.getresponse().read()
    c.close()
    time.sleep(0.05)
"#;

/// Runs `LEAK_PY` with `n` pairs of fresh keys (written to a file in `dir`, the bench's
/// own, removed after); returns the (file, socket) quantiles.
pub fn leaking(d: &Daemon, n: usize, dir: &Path) -> (Quantiles, Quantiles) {
    let mut rng = leakwatch::detect::samples::Rng::from_time();
    let keys: Vec<String> = (0..2 * n)
        .map(|_| {
            leakwatch::detect::samples::sample("anthropic-api-key", &mut rng)
                .unwrap()
                .0
        })
        .collect();
    let (script, keyfile, log) = (dir.join("leak.py"), dir.join("keys"), dir.join("leak.log"));
    fs::write(&script, LEAK_PY).unwrap();
    // The bench writes the keys (in scope too): their findings go before the first scrape.
    fs::write(&keyfile, keys.join("\n")).unwrap();
    crate::cost_bench::quiet(d, 10);
    std::thread::sleep(Duration::from_millis(300));
    let before = d.scrape();
    let st = Command::new("python3")
        .arg(&script)
        .arg(&keyfile)
        .arg(&log)
        .status()
        .expect("running python3");
    assert!(st.success(), "the leaking python process failed");
    crate::cost_bench::quiet(d, 10);
    // The last alerts reach the sinks once the daemon is idle; the scrape after that
    // holds every sample.
    std::thread::sleep(Duration::from_millis(300));
    let after = d.scrape();
    for f in [&script, &keyfile, &log] {
        let _ = fs::remove_file(f);
    }
    (
        latency(&before, &after, "file"),
        latency(&before, &after, "socket"),
    )
}

/// Latency rows of the footprint table: one per condition and source.
pub fn report(md: &mut String, conditions: &[(&str, &Lat)]) {
    let lat = |l: &Quantiles| {
        format!(
            "p50 <= {} ms, p99 <= {} ms, max <= {} ms ({} alerts)",
            l[0].1, l[1].1, l[2].1, l[3].0 as u64
        )
    };
    for (what, l) in conditions {
        for (source, q) in [
            ("exec environment", &l.env),
            ("log burst", &l.file),
            ("HTTP request body", &l.socket),
        ] {
            writeln!(
                md,
                "| latency, kernel event to alert written, {source}, {what} | {} |",
                lat(q)
            )
            .unwrap();
        }
    }
}
