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
    stdout: bool,
    buf: Vec<u8>,
}

impl JsonLines {
    pub fn new(path: Option<&Path>, stdout: bool) -> Result<JsonLines> {
        Ok(JsonLines {
            path: path.map(Path::to_path_buf),
            file: path.map(open).transpose()?,
            stdout,
            buf: Vec::new(),
        })
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
            Ok(f) => self.file = Some(f),
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
            if let Err(e) = f.write_all(&self.buf) {
                log::error!("writing the alert file failed: {e}; alerts still go to stdout");
            }
        }
    }
}
