//! The daemon's side of the fleet: keeps a session with etcd, applies every fleet entry as a
//! local freeze and acknowledges it under the host's lease. Each session starts with a full
//! read (resync) and then watches from that revision, so nothing put while the host was
//! away is missed. While etcd cannot be reached, the local frozen set (persisted in the
//! state dir, loaded in the kernel) stays enforced; the watcher retries with backoff and
//! says so in `status`, the metrics and a `fleet` alert.
use std::{sync::Arc, time::Duration};

use anyhow::{bail, Context as _, Result};
use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions};
use serde_json::json;
use tokio::sync::watch;

use super::{entry, FleetConfig, LEASE_TTL};
use crate::{
    alerts::{now_rfc3339, Alert},
    metrics::Metrics,
    respond::{Context, FreezeRequest, Lift},
    sinks::Alerts,
};

/// Refused entries reported one by one per session (alert, `refused/` key); past this a
/// flood of garbage is only counted, with one alert saying so.
const REFUSED_REPORTED: u64 = 100;

/// Longest wait between two connection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

pub struct Watcher {
    cfg: FleetConfig,
    host: String,
    ctx: Arc<Context>,
    alerts: Alerts,
    metrics: Arc<Metrics>,
    since: String,
    /// Session state shown by `status`.
    connected: bool,
    last_error: Option<String>,
    revision: i64,
    refused: u64,
    /// Refused in this session (bounds what is reported, see `REFUSED_REPORTED`).
    refused_now: u64,
}

impl Watcher {
    pub fn start(
        cfg: FleetConfig,
        ctx: Arc<Context>,
        alerts: Alerts,
        metrics: Arc<Metrics>,
        stop: watch::Receiver<bool>,
    ) -> Result<tokio::task::JoinHandle<()>> {
        // Its files were checked by the daemon before it loaded anything.
        let host = cfg.host_name()?;
        let mut w = Watcher {
            cfg,
            host,
            ctx,
            alerts,
            metrics,
            since: now_rfc3339(),
            connected: false,
            last_error: None,
            revision: 0,
            refused: 0,
            refused_now: 0,
        };
        w.publish_status();
        Ok(tokio::spawn(async move { w.run(stop).await }))
    }

    async fn run(&mut self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let r = self.session(&mut stop, &mut backoff).await;
            let was = self.connected;
            self.connected = false;
            self.metrics.fleet_connected.set(0);
            match r {
                Ok(()) => return,
                Err(e) => {
                    let msg = format!("{e:#}");
                    self.metrics.fleet_errors.inc();
                    // Alert on losing the store and on the first failure, not on every retry.
                    if was || self.last_error.is_none() {
                        log::warn!(
                            "fleet store: {msg}; the local frozen set stays enforced, retrying"
                        );
                        self.alerts.emit(
                            Alert::new("fleet")
                                .with("state", "disconnected")
                                .with("error", msg.clone())
                                .with("endpoints", self.cfg.etcd.join(",")),
                        );
                    }
                    self.last_error = Some(msg);
                    self.publish_status();
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection: lease, resync, then watch until an error or stop.
    async fn session(
        &mut self,
        stop: &mut watch::Receiver<bool>,
        backoff: &mut Duration,
    ) -> Result<()> {
        let mut c = super::connect(&self.cfg).await?;
        self.refused_now = 0;
        let lease = c
            .lease_grant(LEASE_TTL, None)
            .await
            .context("granting the host's lease")?
            .id();
        let (mut keeper, mut kept) = c
            .lease_keep_alive(lease)
            .await
            .context("keeping the host's lease alive")?;
        let rev = self.resync(&mut c, lease).await?;
        self.revision = rev;
        self.connected = true;
        *backoff = Duration::from_secs(1);
        self.metrics.fleet_connected.set(1);
        if self.last_error.take().is_some() {
            log::info!("fleet store reachable again at revision {rev}");
            self.alerts.emit(
                Alert::new("fleet")
                    .with("state", "connected")
                    .with("revision", rev),
            );
        }
        self.publish_status();

        let frozen_dir = self.cfg.frozen_key("");
        let tomb_dir = self.cfg.tombstone_key("");
        let from = WatchOptions::new()
            .with_prefix()
            .with_start_revision(rev + 1);
        let mut ws = c
            .watch(frozen_dir.clone(), Some(from.clone()))
            .await
            .context("watching the frozen list")?;
        ws.watch(tomb_dir.clone(), Some(from))
            .await
            .context("watching the unfreeze list")?;
        let mut tick = tokio::time::interval(Duration::from_secs(LEASE_TTL as u64 / 3));
        tick.tick().await;
        loop {
            tokio::select! {
                m = ws.message() => {
                    let Some(resp) = m.context("watching the fleet store")? else {
                        bail!("etcd closed the watch");
                    };
                    if resp.canceled() {
                        bail!("etcd cancelled the watch ({}; compacted at revision {}): resyncing", resp.cancel_reason(), resp.compact_revision());
                    }
                    // An unfreeze deletes the entry and puts its tombstone in one transaction.
                    let lifted: Vec<&[u8]> = resp
                        .events()
                        .iter()
                        .filter_map(|e| e.kv())
                        .filter(|kv| kv.key().starts_with(tomb_dir.as_bytes()))
                        .map(|kv| &kv.key()[tomb_dir.len()..])
                        .collect();
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        self.revision = self.revision.max(kv.mod_revision());
                        match (ev.event_type(), kv.key().starts_with(frozen_dir.as_bytes())) {
                            (EventType::Put, true) => { self.freeze_one(&mut c, lease, kv.key(), kv.value()).await?; }
                            (EventType::Put, false) => self.unfreeze(&mut c, kv.key(), kv.value()).await?,
                            (EventType::Delete, true) if !lifted.contains(&&kv.key()[frozen_dir.len()..]) => log::warn!(
                                "fleet entry {} was deleted without an unfreeze record: it stays frozen here",
                                shown_key(kv.key(), &frozen_dir)
                            ),
                            (EventType::Delete, true) => {}
                            (EventType::Delete, false) => {}
                        }
                    }
                    if !resp.events().is_empty() {
                        // The frozen count it shows changed.
                        self.put_alive(&mut c, lease).await?;
                    }
                    self.publish_status();
                }
                _ = tick.tick() => {
                    keeper.keep_alive().await.context("renewing the host's lease")?;
                    self.put_alive(&mut c, lease).await?;
                }
                k = kept.message() => match k.context("renewing the host's lease")? {
                    Some(r) if r.ttl() > 0 => {}
                    _ => bail!("the host's lease expired"),
                },
                _ = stop.changed() => {
                    // Not enforcing any more: vanish from the fleet's view now, not in 15 s.
                    let _ = c.lease_revoke(lease).await;
                    return Ok(());
                }
            }
        }
    }

    /// Full read: applies every entry and tombstone, acknowledges, and returns the revision
    /// the watch continues from.
    async fn resync(&mut self, c: &mut Client, lease: i64) -> Result<i64> {
        let frozen_dir = self.cfg.frozen_key("");
        let tomb_dir = self.cfg.tombstone_key("");
        let r = c
            .get(frozen_dir.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .context("reading the frozen list")?;
        let rev = r.header().map(|h| h.revision()).unwrap_or(0);
        let t = c
            .get(
                tomb_dir.clone(),
                Some(GetOptions::new().with_prefix().with_revision(rev)),
            )
            .await
            .context("reading the unfreeze list")?;
        // A fresh session: acknowledgements of the last lease are gone with it.
        self.put_alive(c, lease).await?;
        // Not leased: a host that stops reaching etcd stays listed (offline), not forgotten.
        let seen = json!({"host": self.host, "connected_at": now_rfc3339(), "version": env!("CARGO_PKG_VERSION")});
        c.put(
            self.cfg.host_key(&self.host, "seen"),
            serde_json::to_vec(&seen)?,
            None,
        )
        .await
        .context("recording the host")?;
        let mut listed = Vec::new();
        for kv in r.kvs() {
            if let Some(fp) = self.freeze_one(c, lease, kv.key(), kv.value()).await? {
                listed.push(fp);
            }
        }
        for kv in t.kvs() {
            if let Ok(ts) = entry::parse_tombstone(kv.key(), kv.value(), &tomb_dir) {
                if !listed.contains(&ts.fingerprint) {
                    self.lift(c, &ts.fingerprint).await?;
                }
            }
        }
        let (mine, _) = self.ctx.fleet_fingerprints();
        let kept: Vec<_> = mine.iter().filter(|fp| !listed.contains(fp)).collect();
        if !kept.is_empty() {
            log::warn!(
                "{} fleet-frozen credential(s) are no longer listed in etcd and have no unfreeze record; they stay frozen here: {}",
                kept.len(),
                kept.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
        Ok(rev)
    }

    /// Applies one `frozen/` entry and acknowledges it; a refused entry is reported. Err
    /// only when etcd fails; returns the fingerprint applied.
    async fn freeze_one(
        &mut self,
        c: &mut Client,
        lease: i64,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<String>> {
        let (e, k) = match entry::parse_entry(key, value, &self.cfg.frozen_key("")) {
            Ok(x) => x,
            Err(why) => {
                self.refuse(c, lease, key, &why).await?;
                return Ok(None);
            }
        };
        let fp = e.fingerprint.clone();
        let ack = match self.ctx.frozen_entry(&fp) {
            // Applied before (an earlier session, or frozen here by hand): acknowledge again.
            Some((_, kernel, kills)) => entry::Ack {
                fingerprint: fp.clone(),
                applied_at: now_rfc3339(),
                kills: kills as usize,
                severs: 0,
                errors: Vec::new(),
                already_frozen: true,
                kernel_enforced: kernel,
            },
            None => {
                let req = FreezeRequest {
                    secret: None,
                    fingerprint: None,
                    deep: false,
                    client_pid: None,
                    fleet: Some(k),
                };
                match self.ctx.freeze(req).await {
                    Ok(r) => {
                        self.metrics.fleet_applied.inc();
                        log::info!(
                            "fleet freeze of {fp} applied: {} killed, {} severed",
                            r.killed.len(),
                            r.severed.len()
                        );
                        entry::Ack {
                            fingerprint: fp.clone(),
                            applied_at: now_rfc3339(),
                            kills: r.killed.len(),
                            severs: r.severed.len(),
                            errors: r.errors,
                            already_frozen: r.already_frozen,
                            kernel_enforced: r.kernel_enforced,
                        }
                    }
                    Err(err) => entry::Ack {
                        fingerprint: fp.clone(),
                        applied_at: now_rfc3339(),
                        errors: vec![format!("{err:#}")],
                        ..Default::default()
                    },
                }
            }
        };
        let k = self.cfg.host_key(&self.host, &format!("applied/{fp}"));
        c.put(
            k,
            serde_json::to_vec(&ack)?,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .context("writing the acknowledgement")?;
        Ok(Some(fp))
    }

    async fn unfreeze(&mut self, c: &mut Client, key: &[u8], value: &[u8]) -> Result<()> {
        let dir = self.cfg.tombstone_key("");
        match entry::parse_tombstone(key, value, &dir) {
            Ok(t) => self.lift(c, &t.fingerprint).await,
            Err(why) => {
                if self.count_refused() {
                    self.report_refused(&shown_key(key, &dir), &why);
                }
                Ok(())
            }
        }
    }

    async fn lift(&mut self, c: &mut Client, fp: &str) -> Result<()> {
        match self.ctx.unfreeze_fleet(fp)? {
            Lift::Lifted => {
                self.metrics.fleet_applied.inc();
                log::info!("fleet unfreeze of {fp} applied");
            }
            Lift::Local => {
                log::info!("fleet unfreeze of {fp}: frozen here by a local freeze, kept")
            }
            Lift::Absent => {}
        }
        c.delete(
            self.cfg.host_key(&self.host, &format!("applied/{fp}")),
            None,
        )
        .await
        .context("removing the acknowledgement")?;
        Ok(())
    }

    /// Counts a refused entry; true while it should also be reported one by one.
    fn count_refused(&mut self) -> bool {
        self.refused += 1;
        self.refused_now += 1;
        self.metrics.fleet_refused.inc();
        if self.refused_now == REFUSED_REPORTED + 1 {
            let msg = format!("more than {REFUSED_REPORTED} malformed fleet entries in this session: the rest are only counted (leakwatch_fleet_refused_total); someone may be writing garbage under {}", self.cfg.prefix);
            log::error!("{msg}");
            self.alerts.emit(
                Alert::new("fleet")
                    .with("state", "refused")
                    .with("problem", msg),
            );
        }
        self.refused_now <= REFUSED_REPORTED
    }

    async fn refuse(&mut self, c: &mut Client, lease: i64, key: &[u8], why: &str) -> Result<()> {
        if !self.count_refused() {
            return Ok(());
        }
        let shown = shown_key(key, &self.cfg.frozen_key(""));
        self.report_refused(&shown, why);
        // Named by a digest of the key: the key itself may be anything.
        let id = crate::detect::redact::fingerprint(key);
        let v = json!({"key": shown, "reason": why, "at": now_rfc3339()});
        c.put(
            self.cfg.host_key(&self.host, &format!("refused/{id}")),
            serde_json::to_vec(&v)?,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .context("reporting a refused entry")?;
        Ok(())
    }

    fn report_refused(&self, shown: &str, why: &str) {
        let msg = format!("fleet entry {shown} refused: {why}");
        log::warn!("{msg}");
        self.alerts.emit(
            Alert::new("fleet")
                .with("state", "refused")
                .with("problem", msg),
        );
    }

    async fn put_alive(&self, c: &mut Client, lease: i64) -> Result<()> {
        let (_, frozen) = self.ctx.fleet_fingerprints();
        let v = entry::Alive {
            host: self.host.clone(),
            since: self.since.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            frozen,
        };
        c.put(
            self.cfg.host_key(&self.host, "alive"),
            serde_json::to_vec(&v)?,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .context("announcing the host")?;
        Ok(())
    }

    fn publish_status(&self) {
        self.ctx.set_fleet_status(json!({
            "endpoints": self.cfg.etcd,
            "prefix": self.cfg.prefix,
            "host": self.host,
            "connected": self.connected,
            "revision": self.revision,
            "last_error": self.last_error,
            "refused": self.refused,
        }));
    }
}

/// A key from the store as shown in messages and alerts. It may be anything, even a
/// credential pasted as a key, so past the watched directory at most 10 characters show.
fn shown_key(key: &[u8], dir: &str) -> String {
    let s = String::from_utf8_lossy(key);
    let rest = s.strip_prefix(dir).unwrap_or(&s);
    if crate::detect::frozen::FrozenKey::from_fingerprint(rest).is_some() {
        return s.into_owned();
    }
    let n = rest.chars().count();
    let head: String = rest
        .chars()
        .take(10)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if n > 10 {
        format!("{dir}{head}… ({n} characters)")
    } else {
        format!("{dir}{head}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_in_a_message_shows_at_most_ten_characters_past_its_directory() {
        let dir = "/leakwatch/frozen/";
        let (secret, _) = crate::detect::samples::sample(
            "github-pat",
            &mut crate::detect::samples::Rng::seeded(3),
        )
        .unwrap();
        let shown = shown_key(format!("{dir}{secret}").as_bytes(), dir);
        assert!(!shown.contains(&secret), "{shown}");
        assert!(
            shown.starts_with(dir) && shown.contains("characters)"),
            "{shown}"
        );
        let fp = crate::detect::frozen::FrozenKey::from_secret(secret.as_bytes()).fingerprint();
        assert_eq!(
            shown_key(format!("{dir}{fp}").as_bytes(), dir),
            format!("{dir}{fp}")
        );
        assert_eq!(
            shown_key(b"/leakwatch/frozen/a\x01b", dir),
            "/leakwatch/frozen/a?b"
        );
    }
}
