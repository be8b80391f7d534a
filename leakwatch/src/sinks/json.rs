//! The JSON-lines sink: each alert as one line on stdout (the journal, under systemd) and,
//! if configured, appended to an alert file created with mode 0600.
use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

use anyhow::{Context, Result};

use super::Sink;
use crate::alerts::Alert;

pub struct JsonLines {
    path: Option<std::path::PathBuf>,
    file: Option<File>,
    /// Rotate when the file reaches this many bytes (0: never), keeping this many old ones.
    max_bytes: u64,
    keep: u32,
    size: u64,
    stdout: bool,
    buf: Vec<u8>,
}

impl JsonLines {
    pub fn new(path: Option<&Path>, stdout: bool) -> Result<JsonLines> {
        let file = path.map(open).transpose()?;
        let size = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        Ok(JsonLines {
            path: path.map(Path::to_path_buf),
            file,
            max_bytes: 0,
            keep: 0,
            size,
            stdout,
            buf: Vec::new(),
        })
    }

    /// Rotates the file at `max_bytes` (0: never): `alerts.jsonl` -> `alerts.jsonl.1` ->
    /// ... -> `alerts.jsonl.KEEP`, the oldest deleted.
    pub fn rotate_at(mut self, max_bytes: u64, keep: u32) -> JsonLines {
        self.max_bytes = max_bytes;
        self.keep = keep;
        self
    }

    fn rotate(&mut self) {
        let Some(p) = self.path.clone() else { return };
        let name = |i: u32| {
            let mut s = p.clone().into_os_string();
            s.push(format!(".{i}"));
            std::path::PathBuf::from(s)
        };
        if self.keep == 0 {
            let _ = std::fs::remove_file(&p);
        } else {
            let _ = std::fs::remove_file(name(self.keep));
            for i in (1..self.keep).rev() {
                let _ = std::fs::rename(name(i), name(i + 1));
            }
            if let Err(e) = std::fs::rename(&p, name(1)) {
                log::error!("rotating the alert file {} failed: {e}", p.display());
                return;
            }
        }
        self.reopen();
    }
}

/// Opens (creating, mode 0600) the alert file for appending.
fn open(p: &Path) -> Result<File> {
    if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the directory of the alert file {}", p.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(p)
        .with_context(|| {
            format!(
                "opening the alert file {}; check the path and permissions",
                p.display()
            )
        })
}

impl Sink for JsonLines {
    fn reopen(&mut self) {
        let Some(p) = &self.path else { return };
        match open(p) {
            Ok(f) => {
                self.size = f.metadata().map_or(0, |m| m.len());
                self.file = Some(f);
            }
            Err(e) => log::error!("{e:#}; alerts go on to the file opened before"),
        }
    }

    fn write(&mut self, batch: &[Alert]) {
        self.buf.clear();
        for a in batch {
            if serde_json::to_writer(&mut self.buf, a).is_ok() {
                self.buf.push(b'\n');
            }
        }
        if self.stdout {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&self.buf);
            let _ = out.flush();
        }
        if let Some(f) = &mut self.file {
            match f.write_all(&self.buf) {
                Ok(()) => self.size += self.buf.len() as u64,
                Err(e) => {
                    log::error!("writing the alert file failed: {e}; alerts still go to stdout")
                }
            }
        }
        if self.max_bytes > 0 && self.size >= self.max_bytes {
            self.rotate();
        }
    }
}
