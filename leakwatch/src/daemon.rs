//! `leakwatch daemon`: checks the host, loads the probes, and runs the tasks — ring-buffer
//! reader (exec pipeline), kernel-counter poller (loss alerts), metrics endpoint and control
//! socket — until SIGINT or SIGTERM.
use std::{
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind, sync::watch};

use crate::{
    alerts::{Alert, AlertSink},
    config::Config,
    detect::Engine,
    events::{decode, Event},
    metrics::{self, Metrics},
    monitor::Monitor,
    probes::{self, KernelStats, Probes},
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
    let seed = hash_seed(&cfg.state_dir)?;

    let sink = Arc::new(AlertSink::new(cfg.alerts.as_deref(), cfg.alerts_stdout)?);
    let metrics = Arc::new(Metrics::new());
    let listener = if cfg.metrics_addr.is_empty() {
        None
    } else {
        Some(metrics::bind(&cfg.metrics_addr).await?)
    };

    let mut probes = Probes::load(seed)?;
    metrics.probes_attached.set(probes.attached.len() as i64);
    let events = probes.take_events()?;
    let mut kernel_log = aya_log::EbpfLogger::init(probes.ebpf_mut()).ok();
    let probes = Arc::new(Mutex::new(probes));

    let monitor = Monitor::new(engine, sink.clone(), metrics.clone(), cfg.dedupe_seconds);
    let ctx = crate::respond::Context::new(
        &cfg,
        seed,
        probes.clone(),
        sink.clone(),
        metrics.clone(),
        &monitor,
    )?;
    let ctx = Arc::new(ctx);
    ctx.restore().await;

    let metrics_at = match &listener {
        Some(l) => format!("http://{}/metrics", l.local_addr()?),
        None => "off".into(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(l) = listener {
        tokio::spawn(metrics::serve(l, metrics.clone()));
    }
    let control = crate::control::serve(&cfg.socket, ctx.clone(), stop_rx.clone()).await?;
    let stop_reader = Arc::new(AtomicBool::new(false));
    let reader = {
        let (ctx, metrics, stop) = (ctx.clone(), metrics.clone(), stop_reader.clone());
        std::thread::Builder::new()
            .name("lw-events".into())
            .spawn(move || read_events(events, monitor, ctx, metrics, stop))
            .context("starting the event reader thread")?
    };
    let poller = tokio::spawn(poll_stats(
        probes.clone(),
        sink.clone(),
        metrics.clone(),
        stop_rx.clone(),
    ));
    let saver = {
        let (ctx, mut stop) = (ctx.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = tick.tick() => ctx.save_kill_counts(),
                    _ = stop.changed() => break,
                }
            }
        })
    };
    if let Some(l) = kernel_log.take() {
        tokio::spawn(forward_kernel_log(l, stop_rx.clone()));
    }
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

    let mut term = tokio::signal::unix::signal(SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())
        .context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM received, stopping"),
        _ = int.recv() => log::info!("SIGINT received, stopping"),
    }
    let _ = stop_tx.send(true);
    stop_reader.store(true, Ordering::Relaxed);
    let _ = reader.join();
    let _ = poller.await;
    let _ = saver.await;
    ctx.save_kill_counts();
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

/// The event reader runs on its own OS thread: a burst of execs must never delay the
/// control socket (a freeze at 3 a.m. during an exec storm) or the metrics endpoint.
fn read_events(
    mut ring: aya::maps::RingBuf<aya::maps::MapData>,
    mut monitor: Monitor,
    ctx: Arc<crate::respond::Context>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) {
    use std::os::fd::AsRawFd;
    let fd = ring.as_raw_fd();
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; the ring (and its fd) outlives this call.
        let n = unsafe { libc::poll(&mut pfd, 1, 200) };
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            log::error!(
                "polling the event ring buffer failed: {}; no more events will be read",
                std::io::Error::last_os_error()
            );
            return;
        }
        while let Some(item) = ring.next() {
            match decode(&item) {
                Ok(Event::Exec(ev)) => {
                    // Frozen credentials first: the kill must not wait for the rule scan.
                    let frozen = monitor.frozen_hits(&ev);
                    if let Some(h) = frozen.first() {
                        ctx.kill_exec(&ev, h.fingerprint.clone());
                    }
                    monitor.on_exec(ev, frozen);
                }
                Ok(Event::Enforce(n)) => ctx.on_enforce(n, &mut monitor),
                Err(e) => {
                    metrics.decode_errors.inc();
                    log::warn!("dropped a malformed kernel record: {e}");
                }
            }
        }
    }
}

/// Every second: turn increases of the kernel's loss counters into `lost` alerts.
async fn poll_stats(
    probes: Arc<Mutex<Probes>>,
    sink: Arc<AlertSink>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last = KernelStats::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let Ok(now) = probes
            .lock()
            .map_err(|_| ())
            .and_then(|p| p.stats().map_err(|_| ()))
        else {
            continue;
        };
        for (probe, before, after) in [
            ("sys_enter_execve", last.lost_execve, now.lost_execve),
            ("sys_enter_execveat", last.lost_execveat, now.lost_execveat),
            ("enforce", last.enforce_lost, now.enforce_lost),
        ] {
            if after > before {
                let n = after - before;
                metrics.lost.with_label_values(&[probe]).inc_by(n);
                metrics.alerts.with_label_values(&["lost"]).inc();
                sink.emit(
                    &Alert::new("lost")
                        .with("probe", probe)
                        .with("count", n)
                        .with("reason", "ring_buffer_full"),
                );
            }
        }
        last = now;
    }
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
