//! `leakwatch daemon`: checks the host, loads the probes, and runs the tasks — the event
//! pipeline (reader and worker threads), the sink thread, the kernel-counter poller (loss
//! alerts), the scope refresher, the metrics endpoint and the control socket — until SIGINT
//! or SIGTERM.
use std::{
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind, sync::watch};

use crate::{
    alerts::Alert,
    config::Config,
    detect::Engine,
    events::probe_name,
    metrics::{self, Metrics},
    pipeline::{Pipeline, Reporter, Shared},
    probes::{self, KernelStats, LoadOptions, Probes},
    sinks::{Alerts, JsonLines},
};

/// Command-line overrides of the config file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub alerts: Option<PathBuf>,
    pub metrics_addr: Option<String>,
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
}

pub fn effective_config(o: &Overrides) -> Result<Config> {
    let mut c = match &o.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(a) = &o.alerts {
        c.alerts = Some(a.clone());
    }
    if let Some(m) = &o.metrics_addr {
        c.metrics_addr = m.clone();
    }
    if let Some(s) = &o.socket {
        c.socket = s.clone();
    }
    if let Some(s) = &o.state_dir {
        c.state_dir = s.clone();
    }
    Ok(c)
}

pub async fn run(o: Overrides) -> Result<()> {
    let cfg = effective_config(&o)?;
    let engine = Engine::new(&cfg.rules()?)?;
    let dests = cfg.destinations()?;
    if cfg.fleet.enabled() {
        // Before anything is loaded: a broken [fleet] stops the start with one error.
        cfg.fleet.check_files()?;
        cfg.fleet.host_name()?;
    }
    probes::preflight()?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.state_dir)
        .with_context(|| {
            format!(
                "cannot create the state directory {}; pass a writable one with --state-dir",
                cfg.state_dir.display()
            )
        })?;
    // Before anything is loaded: a second daemon on this state dir stops here.
    let _state_lock = crate::respond::store::lock(&cfg.state_dir)?;
    let seed = hash_seed(&cfg.state_dir)?;

    let metrics = Arc::new(Metrics::new());
    metrics.init_findings(engine.rules().map(|(id, _)| id));
    let json = JsonLines::new(cfg.alerts.as_deref(), cfg.alerts_stdout)?
        .rotate_at((cfg.alerts_max_mb * 1e6) as u64, cfg.alerts_keep);
    let shared = Shared::default();
    let actions = if cfg.actions.enabled {
        let path = cfg.state_dir.join("actions.db");
        let (frozen, responding) = (shared.frozen.clone(), shared.responding.clone());
        crate::actions::ActionLog::start(
            path,
            cfg.actions.clone(),
            metrics.clone(),
            frozen,
            responding,
        )?
        .0
    } else {
        crate::actions::ActionLog::disabled(metrics.clone())
    };
    let mut sinks: Vec<Box<dyn crate::sinks::Sink>> = vec![Box::new(json)];
    if actions.enabled() {
        sinks.push(Box::new(crate::actions::AlertRows(actions.clone())));
    }
    let (alerts, sink_thread) = Alerts::start(sinks, metrics.clone())?;
    let listener = if cfg.metrics_addr.is_empty() {
        None
    } else {
        Some(metrics::bind(&cfg.metrics_addr).await?)
    };

    let store = crate::respond::store::Store::open(&cfg.state_dir)?;
    let mut probes = Probes::load(&LoadOptions {
        hash_seed: seed,
        own_tgid: std::process::id(),
        scope: crate::scope::resolve(&cfg.scope, cfg.capture.max_bytes),
        frozen: store.kernel_entries(),
        rings: cfg.capture.ring_bytes(),
        pin_dir: Some(probes::pins::dir_for(&cfg.state_dir)),
    })?;
    metrics.probes_attached.set(probes.attached.len() as i64);
    metrics.probes_expected.set(probes::TRACEPOINT_COUNT as i64);
    let events = probes.take_events()?;
    let left = probes.take_left();
    report_left(&left, &cfg.state_dir, &alerts, &metrics);
    let writes = probes.take_writes()?;
    let asleep = probes.take_reader_asleep()?;
    let connect_folds = probes.take_connect_folds()?;
    let held = match cfg.capture.by_reference {
        true => Some(probes.take_held()?),
        false => None,
    };
    let mut kernel_log = aya_log::EbpfLogger::init(probes.ebpf_mut()).ok();
    let probes = Arc::new(Mutex::new(probes));

    let shared_reload = shared.reload.clone();
    let ctx = crate::respond::Context::new(
        &cfg,
        seed,
        probes.clone(),
        alerts.clone(),
        metrics.clone(),
        &shared,
        store,
    )?;
    let ctx = Arc::new(ctx);
    // The sweeps' thread pool, started now rather than by the first freeze (its threads
    // and the CPU count it reads from cgroups cost ~1 ms there).
    if let Err(e) = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("lw-sweep-{i}"))
        .build_global()
    {
        log::debug!("sweep thread pool: {e}");
    }
    ctx.restore().await;
    let report = Reporter::new(alerts.clone(), metrics.clone(), cfg.dedupe_seconds);
    let mut pipeline = Pipeline::new(engine, shared, report, ctx.clone(), metrics.clone());
    if let Some((held, runs)) = held {
        pipeline.hold_files(held, runs);
    }
    pipeline.log_actions(actions.clone());
    pipeline.drain_folds_at_stop(connect_folds);
    pipeline.set_destinations(dests);
    pipeline.watch_tls(crate::probes::tls::TlsWatch::start(
        probes.clone(),
        metrics.clone(),
    ));

    let metrics_at = match &listener {
        Some(l) => format!("http://{}/metrics", l.local_addr()?),
        None => "off".into(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(l) = listener {
        tokio::spawn(metrics::serve(l, metrics.clone()));
    }
    let control = crate::control::serve(&cfg.socket, ctx.clone(), stop_rx.clone()).await?;
    let stop_reader = crate::pipeline::StopReader::new()?;
    let fills = {
        use crate::probes::ring_fill::RingFill;
        use std::os::fd::AsRawFd;
        let (e, w) = cfg.capture.ring_bytes();
        [
            ("events", events.as_raw_fd(), e),
            ("writes", writes.as_raw_fd(), w),
        ]
        .into_iter()
        .filter_map(
            |(name, fd, size)| match RingFill::new(name, fd, size as u64) {
                Ok(f) => Some(f),
                Err(e) => {
                    log::warn!("{e}; leakwatch_ring_fill_ratio{{ring=\"{name}\"}} is not kept");
                    None
                }
            },
        )
        .collect::<Vec<_>>()
    };
    let (reader, worker) = crate::pipeline::start(
        events,
        writes,
        (left.events, left.attached),
        asleep,
        pipeline,
        stop_reader.clone(),
    )?;
    let poller = tokio::spawn(poll_stats(
        probes.clone(),
        alerts.clone(),
        metrics.clone(),
        fills,
        cfg.state_dir.clone(),
        stop_rx.clone(),
    ));
    let (scope_tx, scope_rx) = watch::channel((cfg.scope.clone(), cfg.capture.max_bytes));
    tokio::spawn(refresh_scope(probes.clone(), scope_rx, stop_rx.clone()));
    let saver = {
        let (ctx, mut stop) = (ctx.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    // Not while a sweep runs: the fsync holds the store's lock.
                    _ = tick.tick() => if !ctx.sweeping() { ctx.save_kill_counts() },
                    _ = stop.changed() => break,
                }
            }
        })
    };
    if let Some(l) = kernel_log.take() {
        tokio::spawn(forward_kernel_log(l, stop_rx.clone()));
    }
    let fleet = match cfg.fleet.enabled() {
        true => Some(crate::fleet::watch::Watcher::start(
            cfg.fleet.clone(),
            ctx.clone(),
            alerts.clone(),
            metrics.clone(),
            stop_rx.clone(),
        )?),
        false => None,
    };
    // Before anyone can read `ready`: a SIGHUP (a reload right after start) or SIGTERM
    // sent once it is out must meet a handler, not the default action, which kills.
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())
        .context("installing the SIGINT handler")?;
    let mut hup = tokio::signal::unix::signal(SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    log::info!(
        "ready: {} probes attached ({}), alerts to {}{}, metrics {}, control socket {}",
        metrics.probes_attached.get(),
        probes
            .lock()
            .map(|p| p.attached.join(", "))
            .unwrap_or_default(),
        if cfg.alerts_stdout { "stdout" } else { "" },
        cfg.alerts
            .as_ref()
            .map(|p| format!(" and {}", p.display()))
            .unwrap_or_default(),
        metrics_at,
        cfg.socket.display()
    );

    release_free_memory();
    crate::notify::send(&format!(
        "READY=1\nSTATUS=watching: {} probes attached\nMAINPID={}",
        metrics.probes_attached.get(),
        std::process::id()
    ));
    let mut running = cfg.clone();
    loop {
        tokio::select! {
            _ = term.recv() => { log::info!("SIGTERM received, stopping"); break }
            _ = int.recv() => { log::info!("SIGINT received, stopping"); break }
            _ = hup.recv() => {
                crate::notify::send(&format!(
                    "RELOADING=1\nMONOTONIC_USEC={}",
                    crate::events::monotonic_ns() / 1000
                ));
                alerts.reopen();
                match reload(&o, &metrics, &running, &shared_reload, &ctx, &scope_tx) {
                    Ok(c) => {
                        // Done means in force: the worker takes the new rules between two
                        // batches, so an exec started after `systemctl reload` returns meets
                        // them (and its argv is redacted by them in the action log).
                        let taken = || shared_reload.lock().map(|s| s.is_none()).unwrap_or(true);
                        let until = tokio::time::Instant::now() + Duration::from_secs(2);
                        while !taken() && tokio::time::Instant::now() < until {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        if !taken() {
                            log::warn!("SIGHUP: the pipeline has not taken the new config within 2 s; it applies once the worker catches up");
                        }
                        metrics.config_reloads.inc();
                        running = c;
                    }
                    Err(e) => {
                        metrics.config_reload_failures.inc();
                        log::error!("SIGHUP: {e:#}; the running config stays in force");
                    }
                }
                crate::notify::send("READY=1");
            }
        }
    }
    crate::notify::send("STOPPING=1");
    let t = std::time::Instant::now();
    // The probes go first, while the reader and the worker still run, so no record the
    // programs made is left unread (each is off its hook within milliseconds; the kernel's
    // teardown then takes ~1.5 s). Off the runtime: the control socket and the metrics
    // endpoint still answer meanwhile.
    let detach = {
        let probes = probes.clone();
        tokio::task::spawn_blocking(move || {
            if let Ok(mut p) = probes.lock() {
                p.detach_all();
            }
        })
    };
    let _ = detach.await;
    log::debug!("stop: detach {:?}", t.elapsed());
    // No record can come now: the reader reads the rings dry and ends; with its end of the
    // queue gone, the worker handles what is queued, reports what it held back, and stops.
    stop_reader.stop();
    let _ = reader.join();
    log::debug!("stop: reader {:?}", t.elapsed());
    let _ = worker.join();
    log::debug!("stop: worker {:?}", t.elapsed());
    // The loss poller's last look counts what the kernel lost while stopping.
    let _ = stop_tx.send(true);
    let _ = poller.await;
    let _ = saver.await;
    log::debug!("stop: tasks {:?}", t.elapsed());
    if let Some(f) = fleet {
        // Revokes the host's lease: the fleet sees it gone at once.
        let _ = tokio::time::timeout(Duration::from_secs(3), f).await;
    }
    // A kill thread or a freeze still finishing counts its kills first.
    ctx.wait_sweeps(Duration::from_secs(5));
    ctx.save_kill_counts();
    alerts.flush();
    actions.flush();
    log::debug!("stop: flush {:?}", t.elapsed());
    drop(alerts);
    drop(ctx);
    let _ = sink_thread;
    drop(control);
    let _ = std::fs::remove_file(&cfg.socket);
    log::info!("stopped");
    Ok(())
}

/// Per-host seed of the kernel's candidate hash, created once (mode 0600) in the state dir.
fn hash_seed(dir: &Path) -> Result<u64> {
    let path = dir.join("hash.seed");
    if let Ok(b) = std::fs::read(&path) {
        if let Ok(arr) = <[u8; 8]>::try_from(b.as_slice()) {
            return Ok(u64::from_le_bytes(arr));
        }
    }
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .context("reading /dev/urandom")?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut f, &b)?;
    f.sync_all()?;
    Ok(u64::from_le_bytes(b))
}

/// Fixes glibc's mmap threshold at 512 KiB for the daemon's life. Left dynamic, it rises to
/// the largest block freed so far (start-up's BTF parse frees blocks of megabytes), and later
/// large blocks then come from the heap and fragment it: freed but never given back. Fixed, a
/// block that big is its own mapping, returned whole when freed. Measured by hand (fresh
/// daemon, then exec storms): RSS 60.6 -> 56.6 MB at idle, 69.2 -> 63.7 MB after the storms.
/// Nothing on the event path allocates that much per event.
///
/// Fixing it also fixes the trim threshold at glibc's 128 KiB, and the event path then
/// churned: the reader thread's arena grew for a batch of payloads, the pipeline freed them,
/// the arena's top was handed back, and the next batch faulted it in again (a tenth of the
/// daemon's CPU under a TLS write loop). Up to 8 MiB of free top stays; the periodic trim
/// (`release_free_memory`) still hands it back.
pub fn tune_malloc() {
    // SAFETY: mallopt only sets allocator parameters; callable at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 512 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
    }
}

/// Hands freed heap back to the kernel. Start-up parses the kernel's BTF twice and
/// compiles every rule, peaking near 60 MB of heap that is then free but still resident;
/// a burst does the same later (trimmed once it is over, see `heap::Trim`). Trimmed, idle
/// RSS is what is in use.
fn release_free_memory() {
    // SAFETY: glibc's malloc_trim only releases free memory; callable from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What an earlier daemon's pinned exec kill could not record while no daemon ran: its
/// ring's losses and the execs it killed unchecked, beyond what that daemon reported
/// itself (`Reported`). Its records themselves are read by the reader ahead of the live
/// rings.
fn report_left(
    left: &crate::probes::pins::Left,
    state_dir: &Path,
    alerts: &Alerts,
    metrics: &Metrics,
) {
    if left.foreign {
        log::warn!("retired an exec kill pinned by another leakwatch build: execs it killed while leakwatch was down are not reported (its records are in another format)");
        alerts.emit(
            Alert::new("lost")
                .with("probe", "pinned_exec_kill")
                .with("reason", "pinned_by_another_build"),
        );
    }
    if left.lingering {
        alerts.emit(
            Alert::new("lost")
                .with("probe", "pinned_exec_kill")
                .with("reason", "retired_program_lingering"),
        );
    }
    let reported = Reported::load(state_dir);
    for (id, st) in &left.stats {
        // Its own reports, when they were of this very map (else the whole totals count).
        let base = reported.as_ref().filter(|r| r.stats_map == *id);
        report_left_stats(st, base, alerts, metrics);
    }
}

fn report_left_stats(
    st: &KernelStats,
    base: Option<&Reported>,
    alerts: &Alerts,
    metrics: &Metrics,
) {
    for (i, s) in st.per.iter().enumerate() {
        let probe = probe_name(i as u32);
        let was = |v: Option<&Vec<u64>>| v.and_then(|v| v.get(i).copied()).unwrap_or(0);
        let lost = s.lost.saturating_sub(was(base.map(|b| &b.lost)));
        if lost > 0 {
            ring_loss(metrics, alerts, probe, lost, "ring_buffer_full_while_down");
        }
        let unchecked = s.unchecked.saturating_sub(was(base.map(|b| &b.unchecked)));
        if unchecked > 0 {
            metrics.exec_unchecked.inc_by(unchecked);
        }
    }
}

/// `n` records `probe` could not put in its ring: counted and alerted.
fn ring_loss(metrics: &Metrics, alerts: &Alerts, probe: &str, n: u64, reason: &str) {
    metrics.lost.with_label_values(&[probe]).inc_by(n);
    alerts.emit(
        Alert::new("lost")
            .with("probe", probe)
            .with("count", n)
            .with("reason", reason),
    );
}

/// What the loss poller has reported of the kernel's `lost` and `unchecked` counters (per
/// probe, totals since load) and from which map: the next daemon, retiring this one's
/// pinned exec kill, reports only what came after. Saved when they grow and at stop.
#[derive(serde::Serialize, serde::Deserialize, Default, PartialEq)]
struct Reported {
    stats_map: u32,
    lost: Vec<u64>,
    unchecked: Vec<u64>,
}

impl Reported {
    const FILE: &'static str = "kernel-reported.json";

    fn of(stats_map: u32, st: &KernelStats) -> Reported {
        Reported {
            stats_map,
            lost: st.per.iter().map(|p| p.lost).collect(),
            unchecked: st.per.iter().map(|p| p.unchecked).collect(),
        }
    }

    fn load(state_dir: &Path) -> Option<Reported> {
        let text = std::fs::read_to_string(state_dir.join(Self::FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn save(&self, state_dir: &Path) -> Result<()> {
        let tmp = state_dir.join(format!("{}.tmp", Self::FILE));
        std::fs::write(&tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(&tmp, state_dir.join(Self::FILE))?;
        Ok(())
    }
}

/// Every second: kernel counters become metrics, and ring-buffer loss (and events the
/// pipeline queue could not take) becomes `lost` alerts.
async fn poll_stats(
    probes: Arc<Mutex<Probes>>,
    alerts: Alerts,
    metrics: Arc<Metrics>,
    fills: Vec<crate::probes::ring_fill::RingFill>,
    state_dir: PathBuf,
    mut stop: watch::Receiver<bool>,
) {
    let stats_map = probes
        .lock()
        .ok()
        .and_then(|p| p.stats_map_id())
        .unwrap_or(0);
    let mut saved = Reported::default();
    let mut last = KernelStats::default();
    let mut last_queue = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks: u64 = 0;
    let mut trim = crate::heap::Trim::default();
    let mut stopping = false;
    while !stopping {
        tokio::select! {
            _ = tick.tick() => {}
            // One more look, so what was lost while stopping is counted too.
            _ = stop.changed() => stopping = true,
        }
        ticks += 1;
        // Also once the TLS library scan after start-up is done, and once a burst is over.
        let burst_over = trim.due(crate::heap::anon_rss(), crate::heap::cpu_time());
        if ticks == 10 || ticks.is_multiple_of(60) || burst_over {
            release_free_memory();
            trim.trimmed(crate::heap::anon_rss());
        }
        for f in &fills {
            metrics
                .ring_fill
                .with_label_values(&[f.name])
                .set(f.ratio());
        }
        // Busy (the detach at stop holds it for a second or more): the counters only grow,
        // so the next look counts what this one would have.
        let guard = if stopping {
            probes.lock().ok()
        } else {
            probes.try_lock().ok()
        };
        let Some(now) = guard.and_then(|p| p.stats().ok()) else {
            continue;
        };
        // Saved before the alerts go: a crash in between loses a report rather than
        // having the next start repeat it.
        let reported = Reported::of(stats_map, &now);
        if reported != saved {
            if let Err(e) = reported.save(&state_dir) {
                log::warn!("saving what was reported of the kernel counters: {e:#}");
            }
            saved = reported;
        }
        for (i, (before, after)) in last.per.iter().zip(now.per.iter()).enumerate() {
            let probe = probe_name(i as u32);
            let inc = |c: &prometheus::IntCounterVec, b: u64, a: u64| {
                if a > b {
                    c.with_label_values(&[probe]).inc_by(a - b);
                }
            };
            inc(&metrics.kernel_skipped, before.skipped, after.skipped);
            inc(&metrics.kernel_folded, before.folded, after.folded);
            if after.unchecked > before.unchecked {
                metrics
                    .exec_unchecked
                    .inc_by(after.unchecked - before.unchecked);
            }
            inc(
                &metrics.capture_truncated,
                before.truncated,
                after.truncated,
            );
            inc(
                &metrics.capture_bytes_dropped,
                before.bytes_dropped,
                after.bytes_dropped,
            );
            if after.lost > before.lost {
                let n = after.lost - before.lost;
                ring_loss(&metrics, &alerts, probe, n, "ring_buffer_full");
            }
        }
        let queue = metrics.queue_dropped.with_label_values(&["events"]).get();
        if queue > last_queue {
            alerts.emit(
                Alert::new("lost")
                    .with("probe", "pipeline")
                    .with("count", queue - last_queue)
                    .with("reason", "pipeline_queue_full"),
            );
            last_queue = queue;
        }
        last = now;
    }
}

/// Units started after the daemon get their cgroups later: resolve `[scope]` again every
/// few seconds and reload the kernel lists when they changed; a reloaded config's scope
/// (SIGHUP) is loaded at once.
async fn refresh_scope(
    probes: Arc<Mutex<Probes>>,
    mut scope: watch::Receiver<(crate::config::Scope, u32)>,
    mut stop: watch::Receiver<bool>,
) {
    let (mut current, mut capture_max) = scope.borrow().clone();
    let mut last = crate::scope::resolve(&current, capture_max).cgroup_ids;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        let changed = tokio::select! {
            _ = tick.tick() => false,
            r = scope.changed() => {
                if r.is_err() {
                    return;
                }
                (current, capture_max) = scope.borrow().clone();
                true
            }
            _ = stop.changed() => break,
        };
        if !changed && !crate::scope::needs_refresh(&current) {
            continue;
        }
        let k = crate::scope::resolve(&current, capture_max);
        if !changed && k.cgroup_ids == last {
            continue;
        }
        match probes.lock().map(|mut p| p.set_scope(&k)) {
            Ok(Ok(())) => {
                log::info!("scope: {} cgroup(s) now match [scope]", k.cgroup_ids.len());
                last = k.cgroup_ids;
            }
            Ok(Err(e)) => log::warn!("reloading the scope lists failed: {e:#}"),
            Err(_) => return,
        }
    }
}

/// SIGHUP: reads the config again and, only if all of it is valid (rules compile), applies
/// it: rules and `dedupe_seconds` to the pipeline (between two batches), `protected` to
/// freeze, `[scope]` and `[capture] max_bytes` to the kernel. What only a restart can
/// change is named in a warning and left as it runs.
fn reload(
    o: &Overrides,
    metrics: &Metrics,
    running: &Config,
    pipeline: &Arc<std::sync::Mutex<Option<crate::pipeline::Reload>>>,
    ctx: &crate::respond::Context,
    scope: &watch::Sender<(crate::config::Scope, u32)>,
) -> Result<Config> {
    let mut c = effective_config(o)?;
    let engine = Engine::new(&c.rules()?)?;
    let dests = c.destinations()?;
    // What only a restart can change: named when it differs, and the running value kept,
    // so the config returned is the one actually in force.
    let mut fixed: Vec<&str> = Vec::new();
    macro_rules! restart_only {
        ($($name:literal: $($f:ident).+;)*) => {$(
            if c.$($f).+ != running.$($f).+ {
                fixed.push($name);
                c.$($f).+ = running.$($f).+.clone();
            }
        )*};
    }
    restart_only! {
        "socket": socket;
        "state_dir": state_dir;
        "metrics_addr": metrics_addr;
        "alerts": alerts;
        "alerts_stdout": alerts_stdout;
        "alerts_max_mb": alerts_max_mb;
        "alerts_keep": alerts_keep;
        "[capture] by_reference": capture.by_reference;
        "[capture] events_ring_mb": capture.events_ring_mb;
        "[capture] writes_ring_mb": capture.writes_ring_mb;
        "[actions]": actions;
        "[fleet]": fleet;
    }
    if !fixed.is_empty() {
        log::warn!(
            "SIGHUP: {} changed; that takes a restart, so the running value stays",
            fixed.join(", ")
        );
    }
    let rules = engine.rule_count();
    metrics.init_findings(engine.rules().map(|(id, _)| id));
    if let Ok(mut slot) = pipeline.lock() {
        *slot = Some(crate::pipeline::Reload {
            engine,
            dests,
            dedupe_seconds: c.dedupe_seconds,
        });
    }
    ctx.set_protected(c.protected.clone());
    let _ = scope.send((c.scope.clone(), c.capture.max_bytes));
    log::info!(
        "SIGHUP: config reloaded ({rules} rules, dedupe {} s, {} protected, scope {})",
        c.dedupe_seconds,
        c.protected.len(),
        if c.scope.is_everyone() {
            "every process".to_string()
        } else {
            "lists".to_string()
        }
    );
    Ok(c)
}

async fn forward_kernel_log(
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
    mut stop: watch::Receiver<bool>,
) {
    // SAFETY: the logger owns its ring fd and lives inside the AsyncFd.
    let Ok(mut fd) = (unsafe { AsyncFd::register(logger) }) else {
        return;
    };
    loop {
        tokio::select! {
            r = fd.readable_mut() => {
                let Ok(mut g) = r else { break };
                g.get_inner_mut().flush();
                g.clear_ready();
            }
            _ = stop.changed() => break,
        }
    }
}
