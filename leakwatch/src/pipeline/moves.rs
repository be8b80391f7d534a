//! The moves stage: a secret found in a file that is then renamed (an atomic write: a temp
//! file renamed over the target; `sed -i`; git's `.lock` files) is alerted again under the
//! name it ends up with, `renamed_from` the name it was written under. The kernel names a
//! file at its first write, and the rename comes after, often before the daemon has read
//! the write. The file is looked for by device and inode in its own directory, at the
//! ticks after the finding; no rename probe is needed, and a file renamed into another
//! directory is not followed.
use std::{
    collections::HashMap,
    fs,
    os::unix::fs::{DirEntryExt, MetadataExt},
    path::Path,
    time::{Duration, Instant},
};

use super::{Hit, Pipeline};
use crate::procs::ProcInfo;

/// When the file is looked for after its finding: soon (an atomic write renames at once),
/// and once more (a tool that renames when it is done, like `sed -i` on a long file).
const CHECKS: [Duration; 2] = [Duration::from_millis(200), Duration::from_secs(3)];
/// Files watched at once; past this a finding is not watched (counted).
const MAX_WATCHED: usize = 1024;
/// Credentials kept per watched file.
const MAX_HITS: usize = 64;
/// Directory entries read per look: a huge directory is not walked whole.
const MAX_ENTRIES: usize = 20_000;
/// Directory entries read per tick, over all looks: the rest wait for the next tick.
const TICK_ENTRIES: usize = 50_000;
/// Bytes of a renamed-to file read to confirm the credentials are in it.
const CONFIRM_BYTES: u64 = 1 << 20;

struct Watched {
    info: ProcInfo,
    hits: Vec<Hit>,
    ktime_ns: u64,
    path: String,
    /// `st_dev` (userspace encoding) and inode number of the file.
    dev: u64,
    ino: u64,
    since: Instant,
    checks: usize,
}

#[derive(Default)]
pub struct Moves {
    watched: Vec<Watched>,
    /// Whether each mounted device (`st_dev` encoding) is a local disk-like filesystem,
    /// from /proc/self/mountinfo: a directory on FUSE or a network filesystem is never
    /// listed (a hung mount would stall the pipeline thread).
    local: HashMap<u64, bool>,
    /// When mountinfo was last read (a device not in it is looked up again at most once a
    /// second).
    mounts_read: Option<Instant>,
}

impl Moves {
    /// Is the device `dev` (`st_dev` encoding) a local disk-like filesystem?
    fn local(&mut self, dev: u64) -> bool {
        if let Some(&l) = self.local.get(&dev) {
            return l;
        }
        if self
            .mounts_read
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return false;
        }
        self.mounts_read = Some(Instant::now());
        if let Ok(text) = fs::read_to_string("/proc/self/mountinfo") {
            self.local = mount_kinds(&text);
        }
        self.local.get(&dev).copied().unwrap_or(false)
    }
}

/// Device (`st_dev` encoding) -> local disk-like, from mountinfo lines
/// (`ID PARENT MAJOR:MINOR ROOT POINT OPTIONS [TAGS] - TYPE SOURCE OPTIONS`).
fn mount_kinds(text: &str) -> HashMap<u64, bool> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let Some((head, tail)) = line.split_once(" - ") else {
            continue;
        };
        let (Some(dev), Some(kind)) = (head.split(' ').nth(2), tail.split(' ').next()) else {
            continue;
        };
        let Some((major, minor)) = dev.split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (major.parse::<u32>(), minor.parse::<u32>()) else {
            continue;
        };
        let local = super::held::LOCAL_FS.iter().any(|&(n, _)| n == kind);
        out.insert(libc::makedev(major, minor), local);
    }
    out
}

/// Watches the file at `path` (`dev` in `stat`'s encoding; `ino`) that
/// `hits` were found in, to report them again if it is renamed.
pub fn watch(
    p: &mut Pipeline,
    info: &ProcInfo,
    hits: &[Hit],
    ktime_ns: u64,
    path: &str,
    (dev, ino): (u64, u64),
) {
    if hits.is_empty() || ino == 0 || !path.starts_with('/') {
        return;
    }
    if !p.moves.local(dev) {
        p.metrics.renames.with_label_values(&["not_local"]).inc();
        return;
    }
    // A file written again (a log repeating a key) is watched once; a new credential in it
    // joins the watch.
    if let Some(w) = p
        .moves
        .watched
        .iter_mut()
        .find(|w| w.ino == ino && w.dev == dev && w.path == path && w.info.pid == info.pid)
    {
        for h in hits {
            if w.hits.len() < MAX_HITS && !w.hits.iter().any(|g| g.fingerprint == h.fingerprint) {
                w.hits.push(h.clone());
            }
        }
        return;
    }
    if p.moves.watched.len() >= MAX_WATCHED {
        p.metrics.renames.with_label_values(&["not_watched"]).inc();
        return;
    }
    p.moves.watched.push(Watched {
        info: info.clone(),
        hits: hits.iter().take(MAX_HITS).cloned().collect(),
        ktime_ns,
        path: path.to_string(),
        dev,
        ino,
        since: Instant::now(),
        checks: 0,
    });
}

/// Looks for the watched files that are due, within a budget of directory entries.
pub fn tick(p: &mut Pipeline) {
    if p.moves.watched.is_empty() {
        return;
    }
    let now = Instant::now();
    let mut budget = TICK_ENTRIES;
    for mut w in std::mem::take(&mut p.moves.watched) {
        if budget == 0 || now.duration_since(w.since) < CHECKS[w.checks] {
            p.moves.watched.push(w);
            continue;
        }
        w.checks += 1;
        match look(&w.path, w.dev, w.ino, &mut budget) {
            Look::Later => {
                w.checks -= 1;
                p.moves.watched.push(w);
            }
            Look::InPlace if w.checks < CHECKS.len() => p.moves.watched.push(w),
            Look::InPlace => {
                p.metrics.renames.with_label_values(&["in_place"]).inc();
            }
            Look::Gone => {
                p.metrics.renames.with_label_values(&["not_found"]).inc();
            }
            Look::Renamed(to) => {
                // An inode number freed by the old file can go to a new one in the same
                // directory at once: report only the credentials the file really holds.
                let held = confirm(p, &to, &w.hits);
                if held.is_empty() {
                    p.metrics.renames.with_label_values(&["not_found"]).inc();
                    continue;
                }
                p.metrics.renames.with_label_values(&["renamed"]).inc();
                let hits = held
                    .into_iter()
                    .map(|mut h| {
                        h.path = Some(to.clone());
                        h.with("renamed_from", w.path.as_str())
                    })
                    .collect();
                p.report.report_at(&w.info, hits, w.ktime_ns);
            }
        }
    }
}

/// The `hits` whose credentials the file at `path` holds (its first `CONFIRM_BYTES`).
fn confirm(p: &Pipeline, path: &str, hits: &[Hit]) -> Vec<Hit> {
    use std::io::Read;
    let Some(f) = crate::procs::open_regular(path) else {
        return Vec::new();
    };
    let mut buf = Vec::with_capacity(CONFIRM_BYTES as usize);
    if f.take(CONFIRM_BYTES).read_to_end(&mut buf).is_err() {
        crate::wipe::vec(&mut buf);
        return Vec::new();
    }
    let fz = Some(crate::detect::frozen::FrozenSet::read(&p.shared.frozen));
    let found = crate::detect::Detector::new(&p.engine, fz.as_deref()).scan(&buf);
    crate::wipe::vec(&mut buf);
    hits.iter()
        .filter(|h| found.iter().any(|f| f.fingerprint == h.fingerprint))
        .cloned()
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
enum Look {
    InPlace,
    Renamed(String),
    Gone,
    /// The tick's entry budget ran out first: look again at the next tick.
    Later,
}

fn same(m: &fs::Metadata, dev: u64, ino: u64) -> bool {
    m.ino() == ino && m.dev() == dev && m.is_file()
}

/// Where the file (`dev`, `ino`) written as `path` is now: still there, under another
/// name in the same directory, or neither.
fn look(path: &str, dev: u64, ino: u64, budget: &mut usize) -> Look {
    let p = Path::new(path);
    if fs::symlink_metadata(p).is_ok_and(|m| same(&m, dev, ino)) {
        return Look::InPlace;
    }
    let Some(dir) = p.parent() else {
        return Look::Gone;
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return Look::Gone;
    };
    for e in entries.take(MAX_ENTRIES.min(*budget)).flatten() {
        *budget = budget.saturating_sub(1);
        // The entry's inode number comes with the directory listing: stat only a match.
        if e.ino() != ino {
            continue;
        }
        if e.metadata().is_ok_and(|m| same(&m, dev, ino)) {
            return Look::Renamed(e.path().to_string_lossy().into_owned());
        }
    }
    if *budget == 0 {
        Look::Later
    } else {
        Look::Gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_file_renamed_in_its_directory_by_inode() {
        let dir = std::env::temp_dir().join(format!("lw-moves-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (tmp, dst) = (dir.join(".env.tmp123"), dir.join(".env"));
        fs::write(&tmp, "x").unwrap();
        fs::write(dir.join("other"), "y").unwrap();
        let m = fs::metadata(&tmp).unwrap();
        let (dev, ino) = (m.dev(), m.ino());
        let t = tmp.to_str().unwrap();
        let mut b = usize::MAX;
        assert_eq!(look(t, dev, ino, &mut b), Look::InPlace);
        fs::rename(&tmp, &dst).unwrap();
        assert_eq!(
            look(t, dev, ino, &mut b),
            Look::Renamed(dst.to_str().unwrap().to_string())
        );
        // The same inode number on another device is another file.
        assert_eq!(look(t, dev ^ 1, ino, &mut b), Look::Gone);
        let mut none = 0;
        assert_eq!(look(t, dev, ino, &mut none), Look::Later);
        fs::remove_file(&dst).unwrap();
        assert_eq!(look(t, dev, ino, &mut b), Look::Gone);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mountinfo_says_which_devices_are_local() {
        let text = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    30 22 0:45 / /mnt/nfs rw - nfs4 srv:/x rw,vers=4.2\n\
                    31 22 0:46 / /home/u/fuse rw,nosuid - fuse.sshfs u@h: rw\n\
                    32 22 0:27 / /tmp rw shared:5 master:2 - tmpfs tmpfs rw\n";
        let k = mount_kinds(text);
        assert_eq!(k.get(&libc::makedev(8, 1)), Some(&true));
        assert_eq!(k.get(&libc::makedev(0, 45)), Some(&false));
        assert_eq!(k.get(&libc::makedev(0, 46)), Some(&false));
        assert_eq!(k.get(&libc::makedev(0, 27)), Some(&true));
    }
}
