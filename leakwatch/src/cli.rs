//! Client side of the operator commands: `freeze`, `unfreeze`, `status`. Reads the
//! credential without it ever touching argv, sends it over the control socket and prints
//! the daemon's report.
use std::{
    io::{IsTerminal, Read, Write},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde_json::Value;
use zeroize::{Zeroize, Zeroizing};

use crate::{
    control::{call, Request},
    detect::frozen::FrozenKey,
};

/// Longest credential accepted (a PEM key or service-account JSON fits easily).
const MAX_SECRET: usize = 64 * 1024;

pub struct FreezeArgs {
    pub socket: PathBuf,
    pub fingerprint: Option<String>,
    pub from_file: Option<PathBuf>,
    pub deep: bool,
    pub json: bool,
    /// Also publish to the fleet (`freeze --fleet`).
    pub fleet: Option<crate::fleet::cli::Target>,
    /// Anything given as a positional argument: refused.
    pub stray: Vec<String>,
}

fn refuse_argv(stray: &mut [String]) -> Result<()> {
    if stray.is_empty() {
        return Ok(());
    }
    for s in stray.iter_mut() {
        s.zeroize();
    }
    bail!("refusing a credential on the command line: argv is itself a leak path (readable in /proc by every user); pipe it on stdin, type it at the prompt, or use --from-file");
}

pub fn freeze(mut a: FreezeArgs) -> Result<()> {
    refuse_argv(&mut a.stray)?;
    let mut req = Request::new("freeze");
    req.deep = a.deep;
    let key = if let Some(fp) = a.fingerprint.take() {
        let fp = checked_fingerprint(fp)?;
        req.fingerprint = Some(fp.clone());
        FrozenKey::from_fingerprint(&fp)
    } else {
        let secret = read_secret(a.from_file.as_deref())?;
        req.secret_b64 = Some(base64::engine::general_purpose::STANDARD.encode(&secret[..]));
        Some(FrozenKey::from_secret(&secret))
    };
    // Checked before anything is frozen: a bad [fleet] must not leave a half-done freeze.
    let fleet = a.fleet.as_ref().map(|t| t.resolve()).transpose()?;
    let v = call(&a.socket, &req)?;
    if a.json {
        println!("{v}");
    } else {
        print_report(&v);
    }
    if let (Some(f), Some(key)) = (fleet, key) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let already = rt.block_on(async {
            let mut c = crate::fleet::connect(&f).await?;
            crate::fleet::cli::publish(&mut c, &f, &key).await
        })?;
        eprintln!(
            "{} {} across the fleet ({}); `leakwatch fleet status` shows which hosts applied it",
            key.fingerprint(),
            if already {
                "was already frozen"
            } else {
                "published"
            },
            f.etcd.join(", ")
        );
    }
    Ok(())
}

/// The key `fleet freeze` publishes: from the credential (stdin, prompt or file; never
/// argv) or a fingerprint. The plaintext is dropped (zeroized) here.
pub fn fleet_key(
    fingerprint: Option<String>,
    from_file: Option<PathBuf>,
    mut stray: Vec<String>,
) -> Result<FrozenKey> {
    refuse_argv(&mut stray)?;
    if let Some(fp) = fingerprint {
        let fp = checked_fingerprint(fp)?;
        return FrozenKey::from_fingerprint(&fp)
            .ok_or_else(|| anyhow::anyhow!("not a fingerprint"));
    }
    let secret = read_secret(from_file.as_deref())?;
    if let Some(why) = crate::detect::frozen::too_short(secret.len()) {
        bail!(why);
    }
    Ok(FrozenKey::from_secret(&secret))
}

fn trim_newline(v: &mut Zeroizing<Vec<u8>>) {
    while matches!(v.last(), Some(b'\n') | Some(b'\r')) {
        v.pop();
    }
}

pub(crate) fn read_secret(from_file: Option<&Path>) -> Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::new());
    if let Some(p) = from_file {
        let mut f = std::fs::File::open(p).with_context(|| {
            format!(
                "cannot open {}; check the path given to --from-file",
                p.display()
            )
        })?;
        Read::by_ref(&mut f)
            .take(MAX_SECRET as u64 + 1)
            .read_to_end(&mut buf)?;
    } else if std::io::stdin().is_terminal() {
        eprint!("Credential to freeze (input hidden): ");
        let _ = std::io::stderr().flush();
        let _echo = EchoOff::new();
        let mut line = Zeroizing::new(String::new());
        std::io::stdin().read_line(&mut line)?;
        eprintln!();
        buf.extend_from_slice(line.as_bytes());
    } else {
        std::io::stdin()
            .take(MAX_SECRET as u64 + 1)
            .read_to_end(&mut buf)?;
    }
    trim_newline(&mut buf);
    if buf.is_empty() {
        bail!("no credential given: pipe it on stdin (e.g. `leakwatch freeze < keyfile`), type it at the prompt, or use --from-file or --fingerprint");
    }
    if buf.len() > MAX_SECRET {
        bail!("the credential is longer than {MAX_SECRET} bytes; give the secret itself, not a whole file of them");
    }
    Ok(buf)
}

/// Turns terminal echo off for its lifetime.
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> EchoOff {
        // SAFETY: termios is plain data; tcgetattr fills it for fd 0.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return EchoOff(None);
            }
            let old = t;
            t.c_lflag &= !libc::ECHO;
            libc::tcsetattr(0, libc::TCSANOW, &t);
            EchoOff(Some(old))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restores the attributes read in new().
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

fn endpoints(fleet: &Value) -> String {
    arr(fleet, "endpoints")
        .iter()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn arr(v: &Value, k: &str) -> Vec<Value> {
    v.get(k)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn str_of(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(o) => o.to_string(),
    }
}

pub fn print_report(v: &Value) {
    println!(
        "froze {}{}",
        str_of(v, "fingerprint"),
        if v["already_frozen"] == true {
            " (was already frozen)"
        } else {
            ""
        }
    );
    if v["kernel_enforced"] == true {
        println!("new execs carrying it are killed in the kernel before they run");
    } else {
        println!("frozen by fingerprint only: new execs carrying it are killed by the daemon right after they start");
    }
    let killed = arr(v, "killed");
    println!("killed {} process(es):", killed.len());
    for k in &killed {
        println!(
            "  pid {:<7} {:<16} {:<30} unit {:<24} ({}){}",
            str_of(k, "pid"),
            str_of(k, "comm"),
            str_of(k, "exe"),
            str_of(k, "unit"),
            str_of(k, "reason"),
            if k["confirmed"] == true {
                ""
            } else {
                "  NOT CONFIRMED GONE"
            }
        );
    }
    let severed = arr(v, "severed");
    println!("severed {} TCP connection(s):", severed.len());
    for s in &severed {
        println!(
            "  pid {:<7} {} -> {}{}",
            str_of(s, "pid"),
            str_of(s, "local"),
            str_of(s, "remote"),
            match s.get("error") {
                Some(Value::String(e)) => format!("  FAILED: {e}"),
                _ => String::new(),
            }
        );
    }
    for p in arr(v, "protected") {
        println!(
            "  protected, NOT killed: pid {} {} ({})",
            str_of(&p, "pid"),
            str_of(&p, "comm"),
            str_of(&p, "exe")
        );
    }
    let units = arr(v, "units");
    if !units.is_empty() {
        println!(
            "units that need the new credential before restart: {}",
            units
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for e in arr(v, "errors") {
        println!("error: {}", e.as_str().unwrap_or(""));
    }
    let p = &v["phases_ms"];
    let phases: Vec<String> = crate::respond::Phases::NAMES
        .iter()
        .map(|&k| {
            let name = if k == "kill" { "kill and confirm" } else { k };
            format!("{name} {:.1}", p[k].as_f64().unwrap_or(0.0))
        })
        .collect();
    println!(
        "done in {:.1} ms ({})",
        v["elapsed_ms"].as_f64().unwrap_or(0.0),
        phases.join(", ")
    );
}

/// A fingerprint argument, refused without being echoed (or sent anywhere) when it is not
/// one: people paste the secret where the fingerprint goes.
pub fn checked_fingerprint(mut fp: String) -> Result<String> {
    if crate::detect::frozen::FrozenKey::from_fingerprint(&fp).is_some() {
        return Ok(fp);
    }
    fp.zeroize();
    bail!("that is not a fingerprint (not shown: it may be the secret itself); give sha256: followed by 64 hex digits, as alerts and `leakwatch status` print them, or freeze the credential itself on stdin")
}

pub fn unfreeze(socket: &Path, fingerprint: String) -> Result<()> {
    let fingerprint = checked_fingerprint(fingerprint)?;
    let mut req = Request::new("unfreeze");
    req.fingerprint = Some(fingerprint.clone());
    let v = call(socket, &req)?;
    if v["removed"] == true {
        println!("unfroze {fingerprint}");
        Ok(())
    } else {
        bail!("{fingerprint} is not frozen; `leakwatch status` lists what is")
    }
}

pub fn status(socket: &Path, json: bool) -> Result<()> {
    let v = call(socket, &Request::new("status"))?;
    if json {
        println!("{v}");
        return Ok(());
    }
    println!(
        "probes: {}",
        arr(&v, "probes")
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "kernel, per probe (events, lost, out of scope, cut calls, bytes not captured, kills):"
    );
    if let Some(k) = v["kernel"].as_object() {
        for (probe, c) in k {
            println!(
                "  {probe:<20} {} {} {} {} {} {}",
                c["events"],
                c["lost"],
                c["skipped"],
                c["truncated"],
                c["bytes_dropped"],
                c["kills"]
            );
        }
    }
    let u = &v["userspace"];
    println!(
        "daemon: {} truncated exec captures, {} malformed records, {} repeat findings suppressed, {} events and {} alerts dropped by full queues, {} write streams ({} evicted), {} files held ({} bytes unread)",
        u["exec_truncated"],
        u["decode_errors"],
        u["findings_suppressed"],
        u["events_queue_dropped"],
        u["alerts_queue_dropped"],
        u["streams"],
        u["streams_evicted"],
        u["files_held"],
        u["held_bytes_unread"]
    );
    let seen = arr(&v, "tls_visible");
    println!(
        "TLS plaintext read in {} files (OpenSSL's SSL_write, Go's crypto/tls){}{}",
        seen.len(),
        if seen.is_empty() { "" } else { ": " },
        seen.iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let blind = arr(&v, "tls_blind");
    if !blind.is_empty() {
        println!(
            "TLS not visible (these programs connect out; what they send over TLS is not scanned):"
        );
        for b in blind {
            println!(
                "  {}  ({}; pid {}, last to {})",
                str_of(&b, "exe"),
                str_of(&b, "reason"),
                str_of(&b, "pid"),
                str_of(&b, "remote")
            );
        }
    }
    let fl = &v["fleet"];
    if fl.is_object() {
        if fl["connected"] == true {
            println!(
                "fleet: watching {} under {} as host {} (revision {}, {} entries refused)",
                endpoints(fl),
                str_of(fl, "prefix"),
                str_of(fl, "host"),
                fl["revision"],
                fl["refused"]
            );
        } else {
            println!(
                "fleet: NOT CONNECTED to {} ({}); the local frozen set stays enforced, retrying",
                endpoints(fl),
                fl["last_error"].as_str().unwrap_or("connecting")
            );
        }
    }
    let frozen = arr(&v, "frozen");
    let in_kernel = frozen.iter().any(|f| f["kernel_enforced"] == true);
    match (in_kernel, v["exec_kill_pinned"] == true) {
        (false, _) => println!("frozen: {}", frozen.len()),
        (true, true) => println!(
            "frozen: {} (exec kill pinned: it stays in force if the daemon stops)",
            frozen.len()
        ),
        (true, false) => println!(
            "frozen: {} (exec kill NOT pinned: a frozen key can run while the daemon is down; see the log)",
            frozen.len()
        ),
    }
    for f in frozen {
        println!(
            "  {}  since {}  kills {}{}{}",
            str_of(&f, "fingerprint"),
            str_of(&f, "frozen_at"),
            str_of(&f, "kills"),
            if f["fleet"] == true { "  (fleet)" } else { "" },
            if f["kernel_enforced"] != true {
                "  (fingerprint only: userspace enforcement)"
            } else if f["kernel_hash_verified"] != true {
                "  (kernel hash from the state file, not yet seen to work)"
            } else {
                ""
            }
        );
    }
    Ok(())
}
