//! `leakwatch install` / `uninstall`: puts the running binary, the systemd unit, the example
//! config and the Prometheus rules where a host keeps them, under an optional `--root` (a
//! staging tree, an image). Idempotent: files already as they should be are left alone and
//! said so; the operator's config is never overwritten; uninstall keeps config and state.
//! `--core-handler` also makes leakwatch the core_pattern pipe handler (`core_handler::install`).
use std::{
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

const UNIT: &str = include_str!("../../deploy/leakwatch.service");
const CONFIG: &str = include_str!("../../deploy/leakwatch.toml");
const RULES: &str = include_str!("../../deploy/leakwatch.rules.yml");

pub const BIN: &str = "usr/local/bin/leakwatch";
pub const UNIT_PATH: &str = "etc/systemd/system/leakwatch.service";
pub const CONFIG_PATH: &str = "etc/leakwatch/leakwatch.toml";
/// Always installed here; also into Prometheus' rule directory when it exists.
pub const RULES_SHARE: &str = "usr/local/share/leakwatch/leakwatch.rules.yml";
pub const RULES_PROM: &str = "etc/prometheus/rules.d/leakwatch.rules.yml";

/// What happened to one file.
pub(crate) enum Done {
    Installed,
    Unchanged,
    Kept,
}

fn under(root: &Path, rel: &str) -> PathBuf {
    root.join(rel)
}

/// Writes `bytes` to `path` (mode `mode`) unless it already holds them: via a temporary
/// file and a rename, so a running binary or a half-written unit is never seen.
pub(crate) fn put(path: &Path, bytes: &[u8], mode: u32) -> Result<Done> {
    if fs::read(path).is_ok_and(|old| old == bytes) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
        return Ok(Done::Unchanged);
    }
    let dir = path.parent().context("a file path has a directory")?;
    fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create {}; run as root or pass --root",
            dir.display()
        )
    })?;
    let tmp = dir.join(format!(
        ".{}.new",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}; run as root or pass --root", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(Done::Installed)
}

pub(crate) fn say(what: &str, path: &Path, d: Done) {
    let verb = match d {
        Done::Installed => "installed",
        Done::Unchanged => "unchanged",
        Done::Kept => "kept (already there; not overwritten)",
    };
    println!("{verb}: {what} {}", path.display());
}

/// Installs under `root` (`/` for the host); with `core_handler`, also as the
/// `core_pattern` pipe handler (`core_handler::install`).
pub fn install(root: &Path, core_handler: bool) -> Result<()> {
    let exe = fs::read("/proc/self/exe").context("reading this program's own binary")?;
    let bin = under(root, BIN);
    say("binary", &bin, put(&bin, &exe, 0o755)?);
    let unit = under(root, UNIT_PATH);
    say("systemd unit", &unit, put(&unit, UNIT.as_bytes(), 0o644)?);
    let cfg = under(root, CONFIG_PATH);
    let done = if cfg.exists() {
        Done::Kept
    } else {
        put(&cfg, CONFIG.as_bytes(), 0o600)?
    };
    say("config", &cfg, done);
    let share = under(root, RULES_SHARE);
    say(
        "Prometheus rules",
        &share,
        put(&share, RULES.as_bytes(), 0o644)?,
    );
    if under(root, "etc/prometheus").is_dir() {
        let prom = under(root, RULES_PROM);
        say(
            "Prometheus rules",
            &prom,
            put(&prom, RULES.as_bytes(), 0o644)?,
        );
    } else {
        println!(
            "note: no {} here; add {} to rule_files in your Prometheus config",
            under(root, "etc/prometheus").display(),
            Path::new("/").join(RULES_SHARE).display()
        );
    }
    if core_handler {
        crate::core_handler::install::install(root, &Path::new("/").join(BIN))?;
    }
    if root == Path::new("/") && Path::new("/run/systemd/system").is_dir() {
        let ok = std::process::Command::new("systemctl")
            .arg("daemon-reload")
            .status()
            .is_ok_and(|s| s.success());
        println!(
            "{}",
            if ok {
                "systemctl daemon-reload: done; start with `systemctl enable --now leakwatch`"
            } else {
                "systemctl daemon-reload failed: run it, then `systemctl enable --now leakwatch`"
            }
        );
    } else {
        println!("next: systemctl daemon-reload && systemctl enable --now leakwatch");
    }
    Ok(())
}

/// Removes what `install` put under `root`, except the config (and the state dir, which
/// holds the frozen set): a frozen credential must outlive a reinstall. The core_pattern
/// goes back first, while the binary it runs is still there.
pub fn uninstall(root: &Path) -> Result<()> {
    crate::core_handler::install::uninstall(root)?;
    for (what, rel) in [
        ("binary", BIN),
        ("systemd unit", UNIT_PATH),
        ("Prometheus rules", RULES_SHARE),
        ("Prometheus rules", RULES_PROM),
    ] {
        let p = under(root, rel);
        match fs::remove_file(&p) {
            Ok(()) => println!("removed: {what} {}", p.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                println!("absent: {what} {}", p.display())
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot remove {}; run as root or pass --root", p.display())
                })
            }
        }
    }
    println!(
        "kept: config {} and state /var/lib/leakwatch (the frozen set); remove them by hand",
        under(root, CONFIG_PATH).display()
    );
    let pins = Path::new(crate::probes::pins::ROOT);
    if root == Path::new("/") && fs::read_dir(pins).is_ok_and(|mut d| d.next().is_some()) {
        println!(
            "kept: the exec kill pinned in {} (frozen credentials stay blocked until reboot); `rm -r {}` removes it",
            pins.display(),
            pins.display()
        );
    }
    Ok(())
}
