//! `leakwatch install --core-handler` and its undoing in `uninstall`: remembers the
//! `core_pattern` in effect (in `STATE_DIR/core-handler.toml`, with the daemon's socket
//! and config from the installed config), then points `core_pattern` at
//! `leakwatch core-handler`, now and at boot (`/etc/sysctl.d`). Installing again keeps the first remembered pattern (never
//! leakwatch's own); uninstalling puts it back exactly, unless someone has changed
//! `core_pattern` since (then it is left alone). Under `--root DIR` the pattern is the
//! file `DIR/proc/sys/kernel/core_pattern` (the kernel's default `core` when absent).
use std::{
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use super::{
    pattern,
    settings::{Settings, FORWARD_TIMEOUT},
};
use crate::config::Config;

pub const CORE_PATTERN: &str = "proc/sys/kernel/core_pattern";

/// Applied at boot by systemd-sysctl after `50-coredump.conf`, so leakwatch stays in the
/// chain across reboots.
pub const SYSCTL: &str = "etc/sysctl.d/60-leakwatch-core-handler.conf";

/// The kernel's pattern when nothing set one.
const KERNEL_DEFAULT: &str = "core";

/// The installed config under `root` (defaults when there is none).
fn config(root: &Path) -> Result<(Config, Option<PathBuf>)> {
    let rel = crate::install::CONFIG_PATH;
    let p = root.join(rel);
    if p.exists() {
        Ok((Config::load(&p)?, Some(Path::new("/").join(rel))))
    } else {
        Ok((Config::default(), None))
    }
}

fn in_root(root: &Path, abs: &Path) -> PathBuf {
    root.join(abs.strip_prefix("/").unwrap_or(abs))
}

fn read_pattern(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim_end_matches('\n').to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the pattern in place (a /proc file cannot be replaced by rename) and checks it
/// took.
fn write_pattern(path: &Path, pattern: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| {
            format!(
                "cannot write {}; run as root or pass --root",
                path.display()
            )
        })?;
    f.write_all(format!("{pattern}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    drop(f);
    let now = read_pattern(path)?.unwrap_or_default();
    if now != pattern {
        bail!(
            "{} reads {now:?} after leakwatch wrote {pattern:?}",
            path.display()
        );
    }
    Ok(())
}

/// Points core_pattern under `root` at `bin` (its path on the host) `core-handler`.
pub fn install(root: &Path, bin: &Path) -> Result<()> {
    let (cfg, cfg_path) = config(root)?;
    let state = in_root(root, &cfg.state_dir);
    let path = root.join(CORE_PATTERN);
    let current = read_pattern(&path)?;
    let old = Settings::load(&state)?;
    let previous = match (&current, &old) {
        (Some(c), Some(s)) if pattern::is_ours(c) => s.previous.clone(),
        (Some(c), None) if pattern::is_ours(c) => {
            println!(
                "note: core_pattern is already leakwatch's and {} is gone: the pattern to pass cores on to is taken to be the kernel's default `{KERNEL_DEFAULT}`",
                Settings::path(&state).display()
            );
            KERNEL_DEFAULT.to_string()
        }
        (Some(c), _) => c.clone(),
        (None, _) => KERNEL_DEFAULT.to_string(),
    };
    let state_arg = (cfg.state_dir != Config::default().state_dir)
        .then(|| cfg.state_dir.to_string_lossy().into_owned());
    let ours =
        pattern::ours(&bin.to_string_lossy(), state_arg.as_deref()).map_err(anyhow::Error::msg)?;
    let unknown = pattern::unknown(&previous);
    if !unknown.is_empty() {
        println!(
            "note: the previous core_pattern uses {}, which core(5) does not define; the kernel drops them, and so will leakwatch",
            unknown.join(" ")
        );
    }
    let s = Settings {
        previous: previous.clone(),
        socket: cfg.socket.clone(),
        config: cfg_path,
        alerts: None,
        forward_timeout: old
            .as_ref()
            .map_or(FORWARD_TIMEOUT.to_string(), |o| o.forward_timeout.clone()),
    };
    let file = Settings::path(&state);
    std::fs::create_dir_all(&state)
        .with_context(|| format!("cannot create the state directory {}", state.display()))?;
    let done = crate::install::put(&file, s.to_text()?.as_bytes(), 0o600)?;
    crate::install::say("core handler settings", &file, done);
    if current.as_deref() == Some(ours.as_str()) {
        println!("unchanged: core_pattern {} = {ours}", path.display());
    } else {
        write_pattern(&path, &ours)?;
        println!("installed: core_pattern {} = {ours}", path.display());
    }
    // Only once the pattern took: a boot must not install what the kernel refused now.
    let sysctl = root.join(SYSCTL);
    let text = format!(
        "# Written by `leakwatch install --core-handler`: every core is scanned by leakwatch,\n\
         # then passed on to the pattern it replaced ({}).\n\
         # `leakwatch uninstall` removes this file and restores that pattern.\n\
         kernel.core_pattern = {ours}\n",
        cfg.state_dir.join(super::settings::FILE).display()
    );
    let done = crate::install::put(&sysctl, text.as_bytes(), 0o644)?;
    crate::install::say("sysctl (core_pattern at boot)", &sysctl, done);
    println!(
        "cores go on to `{previous}` as before; `leakwatch uninstall` puts it back{}",
        if previous.starts_with('|') {
            ""
        } else {
            " (RLIMIT_CORE and core_uses_pid are obeyed as the kernel obeys them)"
        }
    );
    Ok(())
}

/// Puts back the pattern `install` remembered, if core_pattern is still leakwatch's.
pub fn uninstall(root: &Path) -> Result<()> {
    let (cfg, _) = config(root)?;
    let state = in_root(root, &cfg.state_dir);
    let path = root.join(CORE_PATTERN);
    let file = Settings::path(&state);
    let current = read_pattern(&path)?;
    let old = Settings::load(&state)?;
    match (&current, &old) {
        (Some(c), Some(s)) if pattern::is_ours(c) => {
            write_pattern(&path, &s.previous)?;
            println!("restored: core_pattern {} = {}", path.display(), s.previous);
        }
        (Some(c), None) if pattern::is_ours(c) => {
            write_pattern(&path, KERNEL_DEFAULT)?;
            println!(
                "restored: core_pattern {} = {KERNEL_DEFAULT} (the kernel's default: {} was gone)",
                path.display(),
                file.display()
            );
        }
        (Some(c), Some(_)) => println!(
            "left alone: core_pattern {} = {c} is not leakwatch's (changed since install)",
            path.display()
        ),
        _ => {}
    }
    for (what, f) in [
        ("sysctl (core_pattern at boot)", root.join(SYSCTL)),
        ("core handler settings", file),
    ] {
        match std::fs::remove_file(&f) {
            Ok(()) => println!("removed: {what} {}", f.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", f.display())),
        }
    }
    Ok(())
}
