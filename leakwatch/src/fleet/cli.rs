//! `leakwatch fleet freeze | unfreeze | status`: run from any machine that reaches etcd,
//! no local daemon needed. The credential is read as `leakwatch freeze` reads it (stdin or
//! a hidden prompt, never argv) and turned into an entry here; only the fingerprint, length
//! and a short prefix go to etcd.
use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use serde_json::{json, Value};

use super::{entry, FleetConfig};
use crate::{alerts::now_rfc3339, detect::frozen::FrozenKey};

/// Where the fleet is: `--etcd` and friends, else `[fleet]` of the config.
#[derive(Clone, Debug, Default)]
pub struct Target {
    pub config: Option<PathBuf>,
    pub etcd: Vec<String>,
    pub prefix: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
}

impl Target {
    /// The fleet settings: the config's `[fleet]` (given, or the installed one when it
    /// exists), overridden by flags.
    pub fn resolve(&self) -> Result<FleetConfig> {
        let installed = PathBuf::from("/").join(crate::install::CONFIG_PATH);
        let path = self
            .config
            .clone()
            .or_else(|| installed.exists().then_some(installed));
        let mut f = match &path {
            Some(p) => crate::config::Config::load(p)?.fleet,
            None => FleetConfig::default(),
        };
        if !self.etcd.is_empty() {
            f.etcd = self.etcd.clone();
        }
        macro_rules! over {
            ($($x:ident),*) => {$(if self.$x.is_some() { f.$x = self.$x.clone(); })*};
        }
        over!(ca, cert, key, user, password_file);
        if let Some(p) = &self.prefix {
            f.prefix = p.clone();
        }
        if f.etcd.is_empty() {
            bail!("no etcd to talk to: give --etcd URL, or a config with [fleet] etcd (--config)");
        }
        f.validate()?;
        f.check_files()?;
        Ok(f)
    }
}

/// Who publishes: `user@host`, for the record.
fn by() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "root".into());
    format!("{user}@{}", super::kernel_hostname().unwrap_or_default())
}

/// Publishes `key` as frozen across the fleet (an earlier entry for it is kept, with its
/// time); clears any unfreeze record. True when it was already listed.
pub async fn publish(c: &mut Client, f: &FleetConfig, key: &FrozenKey) -> Result<bool> {
    let fp = key.fingerprint();
    let e = entry::Entry::from_key(key, now_rfc3339(), by());
    let k = f.frozen_key(&fp);
    let txn = Txn::new()
        .when(vec![Compare::version(k.clone(), CompareOp::Equal, 0)])
        .and_then(vec![
            TxnOp::put(k.clone(), serde_json::to_vec(&e)?, None),
            TxnOp::delete(f.tombstone_key(&fp), None),
        ])
        .or_else(vec![TxnOp::delete(f.tombstone_key(&fp), None)]);
    let r = c.txn(txn).await.context("publishing the fleet entry")?;
    Ok(!r.succeeded())
}

/// `fleet freeze`: publish, then wait up to `wait` for every live host to acknowledge.
/// Exit status 1 when some live host has not.
pub async fn freeze(t: &Target, key: FrozenKey, wait: Duration, as_json: bool) -> Result<bool> {
    let f = t.resolve()?;
    let mut c = super::connect(&f).await?;
    let fp = key.fingerprint();
    let t0 = Instant::now();
    let already = publish(&mut c, &f, &key).await?;
    if !as_json {
        println!(
            "{fp} {} across the fleet ({})",
            if already {
                "was already frozen"
            } else {
                "frozen"
            },
            f.etcd.join(", ")
        );
    }
    let v = wait_for(&mut c, &f, &fp, wait, true).await?;
    let done = report(&v, &fp, t0, as_json, true);
    Ok(done)
}

/// `fleet unfreeze`: removes the entry and records the lift; waits for hosts to drop it.
pub async fn unfreeze(t: &Target, fp: &str, wait: Duration, as_json: bool) -> Result<bool> {
    let f = t.resolve()?;
    let mut c = super::connect(&f).await?;
    let t0 = Instant::now();
    let tomb = entry::Tombstone {
        fingerprint: fp.to_string(),
        unfrozen_at: now_rfc3339(),
        by: by(),
    };
    let k = f.frozen_key(fp);
    let txn = Txn::new()
        .when(vec![Compare::version(k.clone(), CompareOp::Greater, 0)])
        .and_then(vec![
            TxnOp::delete(k, None),
            TxnOp::put(f.tombstone_key(fp), serde_json::to_vec(&tomb)?, None),
        ]);
    let r = c.txn(txn).await.context("removing the fleet entry")?;
    if !r.succeeded() {
        bail!("{fp} is not frozen across the fleet; `leakwatch fleet status` lists what is");
    }
    if !as_json {
        println!("{fp} unfrozen across the fleet; waiting for hosts to lift it");
    }
    let v = wait_for(&mut c, &f, fp, wait, false).await?;
    Ok(report(&v, fp, t0, as_json, false))
}

/// Waits until every live host has (`applied`) or no longer has an acknowledgement of
/// `fp`, or `wait` passed; returns the status read then. Two full reads and a watch on
/// `hosts/` in between, not a read per poll: the store may hold thousands of hosts.
async fn wait_for(
    c: &mut Client,
    f: &FleetConfig,
    fp: &str,
    wait: Duration,
    applied: bool,
) -> Result<Value> {
    let end = Instant::now() + wait;
    let v = read_status(c, f).await?;
    let (acked, pending) = progress(&v, fp);
    let mut waiting: HashSet<String> = if applied { pending } else { acked }.into_iter().collect();
    if waiting.is_empty() || wait.is_zero() {
        return Ok(v);
    }
    let rev = v["revision"].as_i64().unwrap_or(0);
    let hosts_dir = format!("{}hosts/", f.prefix);
    let mut ws = c
        .watch(
            hosts_dir.clone(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(rev + 1),
            ),
        )
        .await
        .context("watching the acknowledgements")?;
    let ack = format!("/applied/{fp}");
    while !waiting.is_empty() {
        let left = end.saturating_duration_since(Instant::now());
        let Ok(m) = tokio::time::timeout(left, ws.message()).await else {
            break;
        };
        let Some(r) = m.context("watching the acknowledgements")? else {
            break;
        };
        for ev in r.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key());
            let Some(host) = key
                .strip_prefix(&hosts_dir)
                .and_then(|k| k.split('/').next())
            else {
                continue;
            };
            let put = ev.event_type() == EventType::Put;
            // Its acknowledgement came (or went), or it left: the final read says which.
            if (key.ends_with(&ack) && put == applied) || (key.ends_with("/alive") && !put) {
                waiting.remove(host);
            }
        }
    }
    read_status(c, f).await
}

/// (hosts that acknowledged `fp`, live hosts that have not).
fn progress(v: &Value, fp: &str) -> (Vec<String>, Vec<String>) {
    let e = v["frozen"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["fingerprint"] == fp));
    let acked: Vec<String> = match e {
        Some(e) => e["applied"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["host"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        // Unlisted (after an unfreeze): acknowledgements still standing.
        None => v["stale_acks"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|x| x["fingerprint"] == fp)
                    .filter_map(|x| x["host"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
    };
    let pending = e
        .and_then(|e| e["pending"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    (acked, pending)
}

/// Prints the outcome for `fp`; true when no live host is left behind.
fn report(v: &Value, fp: &str, t0: Instant, as_json: bool, applied: bool) -> bool {
    let (acked, pending) = progress(v, fp);
    let offline: Vec<String> = v["offline"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|h| h["host"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    // Applied: live hosts not yet acknowledging; lifted: hosts still acknowledging.
    let waiting = if applied { &pending } else { &acked };
    let ok = offline.is_empty() && waiting.is_empty();
    let hosts = v["hosts"].as_array().map_or(0, Vec::len);
    if as_json {
        let e = v["frozen"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["fingerprint"] == fp))
            .cloned();
        println!(
            "{}",
            json!({
                "fingerprint": fp,
                "hosts_alive": hosts,
                "entry": e,
                "waiting_on": waiting,
                "offline": offline,
                "complete": ok,
                "elapsed_ms": t0.elapsed().as_secs_f64() * 1000.0,
            })
        );
        return ok;
    }
    let ms = t0.elapsed().as_millis();
    if applied {
        println!(
            "{}/{} live host(s) applied it in {ms} ms",
            acked.len(),
            hosts
        );
        if let Some(e) = v["frozen"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["fingerprint"] == fp))
        {
            print_applied(e);
        }
        if !pending.is_empty() {
            println!(
                "NOT YET APPLIED on {}: they apply it when they next reach etcd; rerun `leakwatch fleet status` to follow",
                pending.join(", ")
            );
        }
    } else if acked.is_empty() {
        println!("every live host lifted it in {ms} ms");
    } else {
        println!(
            "still applied on {} (they lift it when they next reach etcd)",
            acked.join(", ")
        );
    }
    if !offline.is_empty() {
        println!(
            "OFFLINE (known to the fleet, not connected now; they catch up when they reconnect): {}; `leakwatch fleet forget HOST` removes a host that is gone for good",
            offline.join(", ")
        );
    }
    ok
}

fn print_applied(e: &Value) {
    for a in e["applied"].as_array().into_iter().flatten() {
        let errs = a["errors"].as_array().map_or(0, Vec::len);
        println!(
            "  {}: applied {}, {} killed, {} severed{}{}",
            a["host"].as_str().unwrap_or("?"),
            a["applied_at"].as_str().unwrap_or("?"),
            a["kills"],
            a["severs"],
            if a["kernel_enforced"] == true {
                ", kernel-enforced"
            } else {
                ""
            },
            if errs > 0 {
                format!(", {errs} error(s): {}", a["errors"])
            } else {
                String::new()
            }
        );
    }
}

/// `fleet status`.
pub async fn status(t: &Target, as_json: bool) -> Result<()> {
    let f = t.resolve()?;
    let mut c = super::connect(&f).await?;
    let v = read_status(&mut c, &f).await?;
    if as_json {
        println!("{v}");
        return Ok(());
    }
    let hosts = v["hosts"].as_array().cloned().unwrap_or_default();
    println!(
        "fleet {} at {}: {} live host(s), revision {}",
        f.prefix,
        f.etcd.join(", "),
        hosts.len(),
        v["revision"]
    );
    for h in &hosts {
        println!(
            "  {} (up since {}, version {}, {} frozen)",
            h["host"].as_str().unwrap_or("?"),
            h["since"].as_str().unwrap_or("?"),
            h["version"].as_str().unwrap_or("?"),
            h["frozen"]
        );
    }
    for h in v["offline"].as_array().into_iter().flatten() {
        println!(
            "  {} OFFLINE (last connected {})",
            h["host"].as_str().unwrap_or("?"),
            h["connected_at"].as_str().unwrap_or("?")
        );
    }
    let frozen = v["frozen"].as_array().cloned().unwrap_or_default();
    if frozen.is_empty() {
        println!("nothing frozen across the fleet");
    }
    for e in &frozen {
        println!(
            "{} frozen {} by {}",
            e["fingerprint"].as_str().unwrap_or("?"),
            e["frozen_at"].as_str().unwrap_or("?"),
            e["by"].as_str().unwrap_or("?")
        );
        print_applied(e);
        let pending: Vec<&str> = e["pending"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if !pending.is_empty() {
            println!("  NOT YET APPLIED on: {}", pending.join(", "));
        }
    }
    for r in v["refused"].as_array().into_iter().flatten() {
        println!(
            "refused by {}: {} ({})",
            r["host"].as_str().unwrap_or("?"),
            r["key"].as_str().unwrap_or("?"),
            r["reason"].as_str().unwrap_or("?")
        );
    }
    for r in v["invalid"].as_array().into_iter().flatten() {
        println!("invalid entry: {}", r["reason"].as_str().unwrap_or("?"));
    }
    Ok(())
}

/// `fleet forget HOST`: removes every record of a host that is gone for good.
pub async fn forget(t: &Target, host: &str) -> Result<()> {
    if !super::valid_host(host) {
        bail!("`{host}` is not a host name; `leakwatch fleet status` lists the hosts");
    }
    let f = t.resolve()?;
    let mut c = super::connect(&f).await?;
    let r = c
        .delete(
            f.host_key(host, ""),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .context("removing the host's records")?;
    if r.deleted() == 0 {
        bail!("no host `{host}` in the fleet store; `leakwatch fleet status` lists the hosts");
    }
    println!("forgot {host} ({} records)", r.deleted());
    Ok(())
}

/// The whole fleet view, from one revision of the store.
pub async fn read_status(c: &mut Client, f: &FleetConfig) -> Result<Value> {
    let r = c
        .get(f.prefix.clone(), Some(GetOptions::new().with_prefix()))
        .await
        .context("reading the fleet store")?;
    let rev = r.header().map(|h| h.revision()).unwrap_or(0);
    let frozen_dir = f.frozen_key("");
    let hosts_dir = format!("{}hosts/", f.prefix);
    let mut entries: BTreeMap<String, entry::Entry> = BTreeMap::new();
    let mut invalid = Vec::new();
    let mut alive: BTreeMap<String, entry::Alive> = BTreeMap::new();
    let mut seen: BTreeMap<String, Value> = BTreeMap::new();
    let mut acks: Vec<(String, entry::Ack)> = Vec::new();
    let mut refused = Vec::new();
    for kv in r.kvs() {
        let key = kv.key();
        if key.starts_with(frozen_dir.as_bytes()) {
            match entry::parse_entry(key, kv.value(), &frozen_dir) {
                Ok((e, _)) => {
                    entries.insert(e.fingerprint.clone(), e);
                }
                Err(why) => invalid.push(json!({ "reason": why })),
            }
            continue;
        }
        let Some(rest) = std::str::from_utf8(key)
            .ok()
            .and_then(|k| k.strip_prefix(&hosts_dir))
        else {
            continue;
        };
        let mut parts = rest.splitn(3, '/');
        let (Some(host), Some(what)) = (parts.next(), parts.next()) else {
            continue;
        };
        match what {
            "alive" => {
                if let Ok(a) = serde_json::from_slice::<entry::Alive>(kv.value()) {
                    alive.insert(host.to_string(), a);
                }
            }
            "seen" => {
                if let Ok(v) = serde_json::from_slice::<Value>(kv.value()) {
                    seen.insert(host.to_string(), v);
                }
            }
            "applied" => {
                if let Ok(a) = serde_json::from_slice::<entry::Ack>(kv.value()) {
                    acks.push((host.to_string(), a));
                }
            }
            "refused" => {
                if let Ok(mut v) = serde_json::from_slice::<Value>(kv.value()) {
                    v["host"] = json!(host);
                    refused.push(v);
                }
            }
            _ => {}
        }
    }
    let frozen: Vec<Value> = entries
        .values()
        .map(|e| {
            let applied: Vec<Value> = acks
                .iter()
                .filter(|(_, a)| a.fingerprint == e.fingerprint)
                .map(|(h, a)| {
                    let mut v = serde_json::to_value(a).unwrap_or_default();
                    v["host"] = json!(h);
                    v
                })
                .collect();
            let pending: Vec<&String> = alive
                .keys()
                .filter(|h| {
                    !acks
                        .iter()
                        .any(|(x, a)| x == *h && a.fingerprint == e.fingerprint)
                })
                .collect();
            json!({
                "fingerprint": e.fingerprint,
                "len": e.len,
                "frozen_at": e.frozen_at,
                "by": e.by,
                "applied": applied,
                "pending": pending,
            })
        })
        .collect();
    let stale: Vec<Value> = acks
        .iter()
        .filter(|(_, a)| !entries.contains_key(&a.fingerprint))
        .map(|(h, a)| json!({"host": h, "fingerprint": a.fingerprint}))
        .collect();
    // Known hosts whose lease is gone: they apply nothing until they reconnect.
    let offline: Vec<&Value> = seen
        .iter()
        .filter(|(h, _)| !alive.contains_key(*h))
        .map(|(_, v)| v)
        .collect();
    Ok(json!({
        "revision": rev,
        "hosts": alive.values().collect::<Vec<_>>(),
        "offline": offline,
        "frozen": frozen,
        "stale_acks": stale,
        "refused": refused,
        "invalid": invalid,
    }))
}
