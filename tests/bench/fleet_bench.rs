//! Fleet freeze: time from `leakwatch fleet freeze` to a real daemon's acknowledgement in
//! etcd, with 0 and more simulated hosts watching the same etcd. A simulated host does what
//! a daemon does on the wire (its own connection, a 15 s lease kept alive, `alive` put, a
//! watch on `frozen/`, an acknowledgement put under its lease per entry), minus the local
//! freeze, so the figures show what etcd and the watch path cost as the fleet grows on this
//! 2-core machine, where etcd, the simulated hosts and the daemon share the cores.
use std::{
    fmt::Write as _,
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use etcd_client::{EventType, GetOptions, PutOptions, WatchOptions};
use leakwatch::fleet::{self, FleetConfig};
use leakwatch_tests::{etcd::Etcd, *};

pub const TITLE: &str = "Fleet freeze";
const HOST: &str = "bench-real";

pub fn run() -> String {
    let rounds: usize = std::env::var("LW_BENCH_FLEET_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let etcd = Etcd::start("bench");
    let cfg = FleetConfig {
        etcd: vec![etcd.url()],
        host: Some(HOST.into()),
        ..Default::default()
    };
    let mut d = Daemon::start_with_config(
        "bench-fleet",
        &format!("[fleet]\netcd = [\"{}\"]\nhost = \"{HOST}\"\n", etcd.url()),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    let mut sims: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    for target in [0usize, 100, 500] {
        while sims.len() < target {
            let (c, n) = (cfg.clone(), sims.len());
            sims.push(rt.spawn(async move { simulated_host(c, format!("sim-{n}")).await }));
        }
        rt.block_on(wait_alive(&cfg, target + 1));
        let mut real = Vec::new();
        let mut all = Vec::new();
        let mut secrets = Vec::new();
        for _ in 0..rounds {
            let (secret, _) = secret("github-pat");
            let fp = fingerprint(&secret);
            let (t_real, t_all) = rt.block_on(time_freeze(&cfg, &etcd, &secret, &fp, target + 1));
            real.push(t_real);
            all.push(t_all);
            secrets.push(secret);
            eprintln!("fleet bench: {target} simulated hosts: {t_real:.1} ms / {t_all:.1} ms");
        }
        rows.push((target, real, all, etcd_rss_mib(&etcd)));
        let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
        etcd.assert_no_plaintext(&refs);
    }
    for s in sims {
        s.abort();
    }
    d.stop();
    report(&rows, rounds)
}

/// Spawns the command, times the real host's acknowledgement (and everyone's) from a watch
/// opened before it starts; returns milliseconds.
async fn time_freeze(
    cfg: &FleetConfig,
    etcd: &Etcd,
    secret: &str,
    fp: &str,
    hosts: usize,
) -> (f64, f64) {
    let mut c = fleet::connect(cfg).await.unwrap();
    let mut ws = c
        .watch(
            format!("{}hosts/", cfg.prefix),
            Some(WatchOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let want = format!("/applied/{fp}");
    let t0 = Instant::now();
    let mut cmd = Command::new(bin())
        .args([
            "fleet",
            "freeze",
            "--json",
            "--wait",
            "0",
            "--etcd",
            &etcd.url(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    cmd.stdin
        .as_mut()
        .unwrap()
        .write_all(secret.as_bytes())
        .unwrap();
    drop(cmd.stdin.take());
    let (mut real, mut acks) = (None, 0usize);
    let deadline = Instant::now() + Duration::from_secs(60);
    while acks < hosts && Instant::now() < deadline {
        let Ok(Ok(Some(r))) = tokio::time::timeout(Duration::from_secs(5), ws.message()).await
        else {
            continue;
        };
        for ev in r.events() {
            let Some(kv) = ev.kv() else { continue };
            let k = String::from_utf8_lossy(kv.key());
            if ev.event_type() == EventType::Put && k.ends_with(&want) {
                acks += 1;
                if k.contains(&format!("/{HOST}/")) {
                    real = Some(t0.elapsed());
                }
            }
        }
    }
    let _ = cmd.wait();
    assert_eq!(acks, hosts, "not every host acknowledged {fp} within 60 s");
    (
        real.expect("the real daemon acknowledged").as_secs_f64() * 1000.0,
        t0.elapsed().as_secs_f64() * 1000.0,
    )
}

/// What a daemon does on the wire, without the local freeze.
async fn simulated_host(cfg: FleetConfig, host: String) {
    let Ok(mut c) = fleet::connect(&cfg).await else {
        return;
    };
    let Ok(lease) = c.lease_grant(fleet::LEASE_TTL, None).await else {
        return;
    };
    let lease = lease.id();
    let Ok((mut keeper, _kept)) = c.lease_keep_alive(lease).await else {
        return;
    };
    let with_lease = || Some(PutOptions::new().with_lease(lease));
    let _ = c
        .put(
            cfg.host_key(&host, "alive"),
            format!("{{\"host\":\"{host}\",\"since\":\"x\",\"version\":\"sim\",\"frozen\":0}}"),
            with_lease(),
        )
        .await;
    let dir = cfg.frozen_key("");
    let Ok(mut ws) = c
        .watch(dir.clone(), Some(WatchOptions::new().with_prefix()))
        .await
    else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            m = ws.message() => {
                let Ok(Some(r)) = m else { return };
                for ev in r.events() {
                    let Some(kv) = ev.kv() else { continue };
                    if ev.event_type() != EventType::Put { continue }
                    let fp = String::from_utf8_lossy(&kv.key()[dir.len()..]).into_owned();
                    let ack = format!("{{\"fingerprint\":\"{fp}\",\"applied_at\":\"x\",\"kills\":0,\"severs\":0,\"errors\":[],\"already_frozen\":false,\"kernel_enforced\":false}}");
                    let _ = c.put(cfg.host_key(&host, &format!("applied/{fp}")), ack, with_lease()).await;
                }
            }
            _ = tick.tick() => { let _ = keeper.keep_alive().await; }
        }
    }
}

async fn wait_alive(cfg: &FleetConfig, n: usize) {
    let mut c = fleet::connect(cfg).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = c
            .get(
                format!("{}hosts/", cfg.prefix),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .unwrap();
        let alive = r
            .kvs()
            .iter()
            .filter(|kv| kv.key().ends_with(b"/alive"))
            .count();
        if alive >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {alive} of {n} hosts alive after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn etcd_rss_mib(etcd: &Etcd) -> f64 {
    etcd.pid()
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn report(rows: &[(usize, Vec<f64>, Vec<f64>, f64)], rounds: usize) -> String {
    let mut md = String::new();
    writeln!(md, "## {TITLE}\n").unwrap();
    writeln!(md, "`cargo xtask bench --only fleet`: Debian's etcd {} on loopback, one real daemon (host `{HOST}`, its probes loaded) and 0, 100 or 500 simulated hosts, each on its own etcd connection doing what a daemon does on the wire (a {} s lease kept alive, its `alive` key, a watch on `frozen/`, an acknowledgement under its lease per entry) without the local freeze. Each round runs `leakwatch fleet freeze --wait 0` with a fresh key on stdin (process start included) and times, from a watch opened before the command starts, the real daemon's acknowledgement (it has swept every process on the host, frozen the key in the kernel and written `hosts/{HOST}/applied/FP`) and the last host's. {rounds} rounds per row; median (min–max). Everything shares this machine's 2 cores.\n", etcd_version(), fleet::LEASE_TTL).unwrap();
    writeln!(md, "| simulated hosts | freeze → real daemon's acknowledgement | freeze → every host's | etcd RSS |").unwrap();
    writeln!(md, "|---|---|---|---|").unwrap();
    let fmt = |v: &[f64]| {
        format!(
            "{:.0} ms ({:.0}–{:.0})",
            median(v),
            v.iter().cloned().fold(f64::INFINITY, f64::min),
            v.iter().cloned().fold(0.0, f64::max)
        )
    };
    for (n, real, all, rss) in rows {
        writeln!(md, "| {n} | {} | {} | {rss:.0} MiB |", fmt(real), fmt(all)).unwrap();
    }
    writeln!(md).unwrap();
    md
}

fn etcd_version() -> String {
    let bin = std::env::var("LEAKWATCH_ETCD").unwrap_or_default();
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().last().map(String::from))
        })
        .unwrap_or_else(|| "?".into())
}
