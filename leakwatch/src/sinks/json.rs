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
    file: Option<File>,
    stdout: bool,
    buf: Vec<u8>,
}

impl JsonLines {
    pub fn new(path: Option<&Path>, stdout: bool) -> Result<JsonLines> {
        let file = match path {
            Some(p) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).with_context(|| {
                        format!("creating the directory of the alert file {}", p.display())
                    })?;
                }
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(p)
                    .with_context(|| {
                        format!(
                            "opening the alert file {}; check the path and permissions",
                            p.display()
                        )
                    })?;
                Some(f)
            }
            None => None,
        };
        Ok(JsonLines {
            file,
            stdout,
            buf: Vec::new(),
        })
    }
}

impl Sink for JsonLines {
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
