//! Process details for alerts: exe, parent, uid, cgroup path and systemd unit, read from
//! /proc while the process lives, or rebuilt from what the kernel event carried (cgroup id
//! resolved by walking the cgroup2 tree) when it is already gone.
use std::{
    collections::{HashMap, HashSet},
    fs,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::Arc,
};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    pub exe: String,
    /// What the kernel runs `exe` with when `exe` is a script (`#!`): the image /proc
    /// names.
    pub interpreter: Option<String>,
    pub cgroup: Option<String>,
    pub unit: Option<String>,
}

pub struct Procs {
    cgroup_root: Option<PathBuf>,
    by_id: HashMap<u64, String>,
    /// Cgroup ids not found by the last walk, and when: not walked again for a while (the
    /// walk reads the whole cgroup tree; a cgroup removed already is never found).
    missed: HashMap<u64, std::time::Instant>,
    /// The images each process was seen exec'ing, for processes gone (or exec'd again)
    /// before their writes are reported.
    execs: ExecImages,
    /// Absolute exec filenames resolved through symlinks lately: an exec loop costs a
    /// lookup, not a realpath (an lstat per path component) per exec; a symlink re-pointed
    /// is seen after at most 10 s.
    canonical: crate::recent::Recent<String, 10>,
}

/// tgid -> the last images it was seen exec'ing (comm, exe), newest last. Two generations
/// of at most `GEN` processes: when the newer fills it becomes the older and the oldest is
/// dropped, so memory stays bounded (about 3 MB) and the latest processes are always kept.
/// Names are shared: an exec loop keeps one "true" and one "/usr/bin/true".
#[derive(Default)]
struct ExecImages {
    new: HashMap<u32, Images>,
    old: HashMap<u32, Images>,
    names: HashSet<Arc<str>>,
}

type Images = Vec<(Arc<str>, Arc<str>)>;

/// Processes per generation. An exec storm used to fill a 65,536-process map that was
/// cleared only when full: about 10 MB held after a few seconds of storm.
const GEN: usize = 16_384;
/// Distinct names shared at most (random exe paths must not grow it without bound).
const NAMES_MAX: usize = 8_192;
/// Images kept per process (a shell that exec'd a tool that exec'd another).
const IMAGES_PER_PROC: usize = 4;

impl ExecImages {
    fn name(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.names.get(s) {
            return a.clone();
        }
        if self.names.len() >= NAMES_MAX {
            // Names in use stay alive in their entries; only the sharing restarts.
            self.names.clear();
        }
        let a: Arc<str> = Arc::from(s);
        self.names.insert(a.clone());
        a
    }

    fn remember(&mut self, tgid: u32, comm: &str, exe: &str) {
        let image = (self.name(comm), self.name(exe));
        let mut seen = match self.new.remove(&tgid) {
            Some(v) => v,
            None => self
                .old
                .remove(&tgid)
                .unwrap_or_else(|| Vec::with_capacity(1)),
        };
        if seen.len() >= IMAGES_PER_PROC {
            seen.remove(0);
        }
        seen.push(image);
        if self.new.len() >= GEN {
            self.old = std::mem::take(&mut self.new);
        }
        self.new.insert(tgid, seen);
    }

    fn get(&self, tgid: u32, comm: &str) -> Option<String> {
        self.shared(tgid, comm).map(|e| e.to_string())
    }

    /// `get` without a copy of the name.
    fn shared(&self, tgid: u32, comm: &str) -> Option<Arc<str>> {
        self.new
            .get(&tgid)
            .or_else(|| self.old.get(&tgid))?
            .iter()
            .rev()
            .find(|(c, _)| &**c == comm)
            .map(|(_, e)| e.clone())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.new.len() + self.old.len()
    }
}

/// An exec filename naming an open fd of the exec'ing process rather than a path: what the
/// kernel reports for `fexecve` and `execveat` with `AT_EMPTY_PATH` (`/dev/fd/N`), or a
/// caller's own `/proc/self/fd/N`.
pub fn by_fd(filename: &str) -> bool {
    ["/dev/fd/", "/proc/self/fd/", "/proc/thread-self/fd/"]
        .iter()
        .any(|p| filename.starts_with(p))
}

impl Default for Procs {
    fn default() -> Self {
        Self::new()
    }
}

impl Procs {
    pub fn new() -> Procs {
        Procs {
            cgroup_root: cgroup2_mount(),
            by_id: HashMap::new(),
            missed: HashMap::new(),
            execs: ExecImages::default(),
            canonical: Default::default(),
        }
    }

    /// Remembers the image `tgid` exec'd (absolute filenames resolved through symlinks) and
    /// the comm the kernel gives it.
    pub fn saw_exec(&mut self, tgid: u32, filename: &str, comm: &str) {
        let exe = if by_fd(filename) {
            // `fexecve`/`execveat(fd, "", AT_EMPTY_PATH)`: the kernel names the image
            // `/dev/fd/N`, which means the caller's fd, not the daemon's (and a memfd has
            // no path at all). The process runs that image now: /proc says what it is.
            fs::read_link(format!("/proc/{tgid}/exe"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| filename.to_string())
        } else if filename.starts_with('/') {
            self.canonical(filename)
        } else {
            relative(tgid, filename)
        };
        self.remember(tgid, comm, exe);
    }

    /// `filename` resolved through symlinks, cached: never a name that means another
    /// process's fd (`by_fd`).
    fn canonical(&mut self, filename: &str) -> String {
        if let Some(exe) = self.canonical.get(filename) {
            return exe.clone();
        }
        let exe = fs::canonicalize(filename)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| filename.to_string());
        self.canonical.insert(filename, exe.clone());
        exe
    }

    fn remember(&mut self, tgid: u32, comm: &str, exe: String) {
        self.execs.remember(tgid, comm, &exe);
    }

    /// The latest image `tgid` was seen exec'ing that the kernel named `comm`.
    /// Who made a call, from the event and what is cached (images seen at exec, cgroup
    /// paths; a readlink for a process started before the daemon): for records made on
    /// every connect or fd, where `describe`'s /proc reads would cost too much.
    pub fn quick(&mut self, t: &crate::events::Task) -> ProcInfo {
        let cgroup = self.cgroup_path(t.cgroup_id);
        ProcInfo {
            interpreter: None,
            pid: t.tgid,
            ppid: t.ppid,
            uid: t.uid,
            comm: t.comm.to_string(),
            exe: self.exe(t),
            unit: cgroup.as_deref().and_then(unit_of),
            cgroup,
        }
    }

    /// `quick`'s image alone ("" when unknown): for a caller that needs nothing else.
    pub fn exe(&mut self, t: &crate::events::Task) -> String {
        self.exe_shared(t).to_string()
    }

    /// `exe`, shared rather than copied (every connect on the host asks; empty: unknown).
    pub fn exe_shared(&mut self, t: &crate::events::Task) -> Arc<str> {
        if let Some(e) = self.execs.shared(t.tgid, &t.comm) {
            return e;
        }
        // Started before the daemon: one readlink, remembered like an exec.
        let Ok(e) = fs::read_link(format!("/proc/{}/exe", t.tgid)) else {
            return Arc::from("");
        };
        self.remember(t.tgid, &t.comm, e.to_string_lossy().into_owned());
        self.execs
            .shared(t.tgid, &t.comm)
            .unwrap_or_else(|| Arc::from(e.to_string_lossy()))
    }

    pub fn exe_seen(&self, tgid: u32, comm: &str) -> Option<String> {
        self.execs.get(tgid, comm)
    }

    /// Reads /proc/PID. None when the process is gone.
    pub fn live(&self, pid: u32) -> Option<ProcInfo> {
        read(pid)
    }

    /// Path of the cgroup with this id (the inode of its cgroup2 directory), cached.
    pub fn cgroup_path(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.by_id.get(&id) {
            return Some(p.clone());
        }
        if self
            .missed
            .get(&id)
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(10))
        {
            return None;
        }
        if self.missed.len() >= 4096 {
            self.missed.clear();
        }
        self.missed.insert(id, std::time::Instant::now());
        let root = self.cgroup_root.clone()?;
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(md) = fs::metadata(&dir) else { continue };
            if md.ino() == id {
                let rel = dir.strip_prefix(&root).ok()?.to_string_lossy();
                let path = format!("/{rel}");
                self.missed.remove(&id);
                self.by_id.insert(id, path.clone());
                return Some(path);
            }
            if let Ok(rd) = fs::read_dir(&dir) {
                stack.extend(
                    rd.flatten()
                        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                        .map(|e| e.path()),
                );
            }
        }
        None
    }
}

/// The `0::/path` line of /proc/PID/cgroup.
pub fn parse_cgroup_v2(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// The systemd unit owning a cgroup path: its deepest `.service`/`.scope`/… component.
pub fn unit_of(path: &str) -> Option<String> {
    const KINDS: [&str; 6] = [".service", ".scope", ".socket", ".mount", ".swap", ".timer"];
    path.split('/')
        .rev()
        .find(|c| KINDS.iter().any(|k| c.ends_with(k)))
        .map(str::to_string)
}

/// Where cgroup2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(pre.split_whitespace().nth(4)?))
    })
}

/// Reads /proc/PID (no cache, no lock: callers may run it on many threads). None when the
/// process is gone.
pub fn read(pid: u32) -> Option<ProcInfo> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let ppid = field("PPid:")?.parse().ok()?;
    let uid = field("Uid:")?.split_whitespace().next()?.parse().ok()?;
    let comm = field("Name:").unwrap_or_default();
    Some(describe(pid, ppid, uid, comm))
}

/// `image` (the process's /proc exe) when it is not `exe` because `exe` is a script: the
/// file starts with `#!`. Read only for an alert.
pub fn interpreter(exe: &str, image: &str) -> Option<String> {
    use std::io::Read;
    if image.is_empty() || exe == image || !exe.starts_with('/') {
        return None;
    }
    let mut f = open_regular(exe)?;
    let mut head = [0u8; 2];
    let script = f.read_exact(&mut head).is_ok() && &head == b"#!";
    script.then(|| image.to_string())
}

/// A regular file at a path a watched process controls, opened for reading without
/// following a symlink and without blocking: a FIFO or device put in its place must not
/// stall the pipeline thread. None for anything else.
pub fn open_regular(path: &str) -> Option<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    f.metadata().ok()?.is_file().then_some(f)
}

/// A relative exec filename (`./tool`, a script run from its own directory) made absolute
/// against the process's working directory, which exec does not change, and resolved
/// through symlinks; as given when the process is gone or the path no longer resolves.
fn relative(tgid: u32, filename: &str) -> String {
    fs::read_link(format!("/proc/{tgid}/cwd"))
        .ok()
        .and_then(|cwd| fs::canonicalize(cwd.join(filename)).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| filename.to_string())
}

/// A process whose parent, real uid and name are known already: its exe and cgroup.
pub fn describe(pid: u32, ppid: u32, uid: u32, comm: String) -> ProcInfo {
    let exe = fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|c| parse_cgroup_v2(&c));
    let unit = cgroup.as_deref().and_then(unit_of);
    ProcInfo {
        interpreter: None,
        pid,
        ppid,
        uid,
        comm,
        exe,
        cgroup,
        unit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exec_by_fd_is_told_from_a_path() {
        assert!(by_fd("/dev/fd/3"));
        assert!(by_fd("/proc/self/fd/7"));
        assert!(!by_fd("/usr/bin/cat"));
        assert!(!by_fd("/dev/fdisk"));
    }

    #[test]
    fn a_relative_exec_filename_resolves_against_the_cwd() {
        let cwd = std::env::current_dir().unwrap();
        let want = fs::canonicalize(cwd.join("Cargo.toml")).unwrap();
        let got = relative(std::process::id(), "./Cargo.toml");
        assert_eq!(got, want.to_string_lossy());
        // Gone or unresolvable: as given.
        assert_eq!(relative(std::process::id(), "./no-such"), "./no-such");
    }

    #[test]
    fn only_a_script_has_an_interpreter() {
        let dir = std::env::temp_dir().join(format!("lw-interp-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (script, elf) = (dir.join("s.sh"), dir.join("bin"));
        fs::write(&script, "#!/bin/sh\n").unwrap();
        fs::write(&elf, b"\x7fELF").unwrap();
        let s = script.to_str().unwrap();
        assert_eq!(
            interpreter(s, "/usr/bin/sh").as_deref(),
            Some("/usr/bin/sh")
        );
        assert_eq!(interpreter(s, s), None);
        assert_eq!(interpreter(s, ""), None);
        // A binary whose /proc name differs (replaced on disk: "… (deleted)") is no script.
        let e = elf.to_str().unwrap();
        assert_eq!(interpreter(e, "/usr/bin/x (deleted)"), None);
        assert_eq!(interpreter("./s.sh", "/usr/bin/sh"), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn units_from_cgroup_paths() {
        assert_eq!(
            unit_of("/system.slice/agent.service").as_deref(),
            Some("agent.service")
        );
        assert_eq!(
            unit_of("/user.slice/user-1000.slice/user@1000.service/app.slice/worker.service")
                .as_deref(),
            Some("worker.service")
        );
        assert_eq!(
            unit_of("/system.slice/agent.service/sub").as_deref(),
            Some("agent.service")
        );
        assert_eq!(
            unit_of("/user.slice/user-0.slice/session-3.scope").as_deref(),
            Some("session-3.scope")
        );
        assert_eq!(unit_of("/"), None);
        assert_eq!(unit_of("/leakwatch-test"), None);
    }

    #[test]
    fn cgroup_line() {
        assert_eq!(
            parse_cgroup_v2("0::/system.slice/x.service\n").as_deref(),
            Some("/system.slice/x.service")
        );
        assert_eq!(parse_cgroup_v2("1:name=systemd:/\n"), None);
    }

    #[test]
    fn remembers_each_image_a_process_ran_by_its_comm() {
        let mut p = Procs::new();
        p.saw_exec(7, "/bin/sh", "sh");
        p.saw_exec(7, "relative/curl", "curl");
        // The shell wrote before it exec'd curl: its write is still the shell's.
        assert_eq!(
            p.exe_seen(7, "sh"),
            std::fs::canonicalize("/bin/sh")
                .ok()
                .map(|x| x.to_string_lossy().into_owned())
        );
        assert_eq!(p.exe_seen(7, "curl").as_deref(), Some("relative/curl"));
        assert_eq!(p.exe_seen(7, "python3"), None);
        assert_eq!(p.exe_seen(8, "sh"), None);
        // The shared form names the same image, and nothing for an unknown process
        // (a pid far above any real one: the /proc fallback finds nothing either).
        let task = |tgid: u32, comm: &str| crate::events::Task {
            tgid,
            comm: comm.into(),
            ..Default::default()
        };
        assert_eq!(&*p.exe_shared(&task(7, "curl")), "relative/curl");
        assert_eq!(&*p.exe_shared(&task(4_000_000_001, "curl")), "");
    }

    #[test]
    fn exec_images_stay_bounded_and_keep_the_latest() {
        let mut e = ExecImages::default();
        for pid in 0..(GEN as u32 * 3 + 7) {
            e.remember(pid, "true", "/usr/bin/true");
        }
        assert!(e.len() <= 2 * GEN, "{} processes remembered", e.len());
        let last = GEN as u32 * 3 + 6;
        for pid in last - GEN as u32 + 1..=last {
            assert_eq!(
                e.get(pid, "true").as_deref(),
                Some("/usr/bin/true"),
                "pid {pid}"
            );
        }
        assert_eq!(e.get(0, "true"), None);
        // One copy of each name, however many processes ran it.
        let (a, b) = (&e.new[&last][0], &e.new[&(last - 1)][0]);
        assert!(Arc::ptr_eq(&a.0, &b.0) && Arc::ptr_eq(&a.1, &b.1));
        // A process found in the older generation keeps its history when it execs again.
        let older = *e.old.keys().next().unwrap();
        e.remember(older, "sh", "/bin/sh");
        assert_eq!(e.get(older, "true").as_deref(), Some("/usr/bin/true"));
        assert_eq!(e.get(older, "sh").as_deref(), Some("/bin/sh"));
        for i in 0..6 {
            e.remember(older, &format!("c{i}"), "/x");
        }
        assert_eq!(
            e.get(older, "true"),
            None,
            "more than 4 images per process kept"
        );
    }

    #[test]
    fn reads_own_process() {
        let p = Procs::new()
            .live(std::process::id())
            .expect("own /proc entry");
        assert!(!p.exe.is_empty());
        assert!(p.ppid > 0);
    }
}
