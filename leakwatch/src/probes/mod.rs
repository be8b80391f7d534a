//! Loading and attaching the kernel programs, and access to their maps. The only module
//! that uses aya. Failures are turned into one sentence an operator can act on.
mod btf;
pub(crate) mod capped;
pub mod floor;
pub mod gotls;
pub mod pins;
pub mod ring_fill;
pub mod tls;
mod tpformat;
mod window;

pub use floor::{load_floor, Floor};

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
    Ebpf, EbpfLoader,
};
use leakwatch_common::*;

/// The kernel object built by `cargo xtask build-ebpf`, embedded at compile time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leakwatch.bpf.o"));

/// Every tracepoint `Probes::load` attaches, as `category:name`, once each (the floor
/// bench attaches its counter to the same).
pub fn all_tracepoints() -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for (_, cat, name, _) in TRACEPOINTS {
        let t = format!("{cat}:{name}");
        if !v.contains(&t) {
            v.push(t);
        }
    }
    v
}

/// The `syscalls:` tracepoints `Probes::load` attaches (the floor bench attaches the same).
pub fn syscall_tracepoints() -> Vec<&'static str> {
    TRACEPOINTS
        .iter()
        .filter(|(_, cat, _, _)| *cat == "syscalls")
        .map(|(_, _, name, _)| *name)
        .collect()
}

/// How many tracepoints `Probes::load` attaches (the `leakwatch_probes_expected` gauge).
pub const TRACEPOINT_COUNT: usize = TRACEPOINTS.len();

/// (program, tracepoint category, tracepoint name, what it is for)
const TRACEPOINTS: &[(&str, &str, &str, &str)] = &[
    ("sys_enter_execve", "syscalls", "sys_enter_execve", "execs"),
    (
        "sys_enter_execveat",
        "syscalls",
        "sys_enter_execveat",
        "execs",
    ),
    ("sys_enter_write", "syscalls", "sys_enter_write", "writes"),
    ("sys_enter_writev", "syscalls", "sys_enter_writev", "writes"),
    (
        "sys_enter_pwrite64",
        "syscalls",
        "sys_enter_pwrite64",
        "writes",
    ),
    (
        "sys_enter_pwritev",
        "syscalls",
        "sys_enter_pwritev",
        "writes",
    ),
    (
        "sys_enter_pwritev2",
        "syscalls",
        "sys_enter_pwritev2",
        "writes",
    ),
    (
        "sys_enter_sendto",
        "syscalls",
        "sys_enter_sendto",
        "socket sends",
    ),
    (
        "sys_enter_sendmsg",
        "syscalls",
        "sys_enter_sendmsg",
        "socket sends",
    ),
    (
        "sys_enter_sendmmsg",
        "syscalls",
        "sys_enter_sendmmsg",
        "socket sends",
    ),
    (
        "sys_enter_vmsplice",
        "syscalls",
        "sys_enter_vmsplice",
        "writes",
    ),
    (
        "sys_enter_connect",
        "syscalls",
        "sys_enter_connect",
        "connects",
    ),
    (
        "sched_process_exec",
        "sched",
        "sched_process_exec",
        "exec records, the frozen check of new images and the write scope",
    ),
    (
        "sched_process_exit",
        "sched",
        "sched_process_exit",
        "the write scope and core dumps",
    ),
    (
        "sys_enter_copy_file_range",
        "syscalls",
        "sys_enter_copy_file_range",
        "in-kernel copies",
    ),
    (
        "sys_exit_copy_file_range",
        "syscalls",
        "sys_exit_copy_file_range",
        "in-kernel copies",
    ),
    (
        "sys_enter_sendfile64",
        "syscalls",
        "sys_enter_sendfile64",
        "in-kernel copies",
    ),
    (
        "sys_exit_sendfile64",
        "syscalls",
        "sys_exit_sendfile64",
        "in-kernel copies",
    ),
    (
        "sys_enter_splice",
        "syscalls",
        "sys_enter_splice",
        "in-kernel copies",
    ),
    (
        "sys_exit_splice",
        "syscalls",
        "sys_exit_splice",
        "in-kernel copies",
    ),
    (
        "sys_enter_tee",
        "syscalls",
        "sys_enter_tee",
        "in-kernel copies",
    ),
    (
        "sys_exit_tee",
        "syscalls",
        "sys_exit_tee",
        "in-kernel copies",
    ),
    (
        "io_uring_submit_req",
        "io_uring",
        "io_uring_submit_req",
        "io_uring writes",
    ),
];

/// (global, struct, member path, required): the kernel struct offsets the programs use.
/// Optional ones stay 0 (the feature degrades: e.g. no IPv6 peer address).
const OFFSETS: &[(&str, &str, &str, bool)] = &[
    ("OFF_TASK_REAL_PARENT", "task_struct", "real_parent", true),
    ("OFF_TASK_TGID", "task_struct", "tgid", true),
    ("OFF_TASK_GROUP_LEADER", "task_struct", "group_leader", true),
    ("OFF_TASK_COMM", "task_struct", "comm", true),
    ("OFF_TASK_FILES", "task_struct", "files", true),
    ("OFF_TASK_MM", "task_struct", "mm", true),
    ("OFF_TASK_EXIT_CODE", "task_struct", "exit_code", false),
    ("OFF_TASK_FS", "task_struct", "fs", false),
    ("OFF_TASK_SIGNAL", "task_struct", "signal", false),
    ("OFF_SIGNAL_LIVE", "signal_struct", "live", false),
    ("OFF_FS_PWD_MNT", "fs_struct", "pwd.mnt", false),
    ("OFF_FS_PWD_DENTRY", "fs_struct", "pwd.dentry", false),
    ("OFF_REQ_CMD", "io_kiocb", "cmd", false),
    ("OFF_REQ_CQE_FD", "io_kiocb", "cqe.fd", false),
    ("OFF_RW_ADDR", "io_rw", "addr", false),
    ("OFF_RW_LEN", "io_rw", "len", false),
    ("OFF_RW_POS", "io_rw", "kiocb.ki_pos", false),
    ("OFF_SR_BUF", "io_sr_msg", "buf", false),
    ("OFF_SR_LEN", "io_sr_msg", "len", false),
    ("OFF_MM_ARG_START", "mm_struct", "arg_start", true),
    ("OFF_MM_ARG_END", "mm_struct", "arg_end", true),
    ("OFF_MM_ENV_START", "mm_struct", "env_start", true),
    ("OFF_MM_ENV_END", "mm_struct", "env_end", true),
    ("OFF_FILES_FDT", "files_struct", "fdt", true),
    ("OFF_FDT_MAX_FDS", "fdtable", "max_fds", true),
    ("OFF_FDT_FD", "fdtable", "fd", true),
    ("OFF_FILE_INODE", "file", "f_inode", true),
    ("OFF_FILE_DENTRY", "file", "f_path.dentry", true),
    ("OFF_FILE_MNT", "file", "f_path.mnt", true),
    ("OFF_FILE_PRIVATE", "file", "private_data", true),
    ("OFF_FILE_POS", "file", "f_pos", false),
    ("OFF_FILE_FLAGS", "file", "f_flags", false),
    ("OFF_INODE_INO", "inode", "i_ino", true),
    ("OFF_INODE_MODE", "inode", "i_mode", true),
    ("OFF_INODE_SB", "inode", "i_sb", true),
    ("OFF_INODE_SIZE", "inode", "i_size", false),
    ("OFF_SB_DEV", "super_block", "s_dev", true),
    ("OFF_DENTRY_PARENT", "dentry", "d_parent", true),
    ("OFF_DENTRY_NAME", "dentry", "d_name.name", true),
    ("OFF_DENTRY_NAME_LEN", "dentry", "d_name.len", true),
    ("OFF_MOUNT_MNT", "mount", "mnt", true),
    ("OFF_MOUNT_PARENT", "mount", "mnt_parent", true),
    ("OFF_MOUNT_MOUNTPOINT", "mount", "mnt_mountpoint", true),
    ("OFF_VFSMOUNT_ROOT", "vfsmount", "mnt_root", true),
    ("OFF_SOCKET_SK", "socket", "sk", true),
    ("OFF_SK_FAMILY", "sock", "__sk_common.skc_family", true),
    ("OFF_SK_DADDR", "sock", "__sk_common.skc_daddr", true),
    ("OFF_SK_DPORT", "sock", "__sk_common.skc_dport", true),
    ("OFF_SK_NUM", "sock", "__sk_common.skc_num", true),
    ("OFF_SK_V6_DADDR", "sock", "__sk_common.skc_v6_daddr", false),
];

/// Per-CPU scratch arrays (indexed by CPU id): sized to the number of possible CPUs.
const PER_CPU_ARRAYS: &[&str] = &["EXEC_SCRATCH", "WRITE_SCRATCH"];

pub struct LoadOptions {
    /// Seed of the frozen-credential hash (the daemon hashes with the same seed).
    pub hash_seed: u64,
    /// The daemon's own tgid: never captured (its writes would feed back).
    pub own_tgid: u32,
    /// Scope and capture cap, in force before the first program is attached (otherwise
    /// every process would be captured at the default cap until `set_scope`).
    pub scope: KernelScope,
    /// Frozen credentials' (kernel hash, length), in the kernel map before the exec probes
    /// are attached: no exec slips through between load and the daemon's first publish.
    pub frozen: Vec<(u64, u32)>,
    /// Bytes of the `EVENTS` and `WRITES` rings (powers of two, at least a page).
    pub rings: (u32, u32),
    /// Where the exec kill's links are pinned while anything is frozen (`pins::dir_for`);
    /// `None`: never pinned.
    pub pin_dir: Option<std::path::PathBuf>,
}

/// Whose write payloads the kernel copies. A process is in scope if it matches any enabled
/// list; with none enabled, every process but the daemon is.
#[derive(Clone, Debug, Default)]
pub struct KernelScope {
    /// cgroup v2 ids (inode numbers of the cgroup directories); ancestors match too.
    pub cgroup_ids: Vec<u64>,
    pub uids: Vec<u32>,
    /// Process names (`comm` of the thread-group leader, at most 15 bytes).
    pub comms: Vec<String>,
    pub use_cgroups: bool,
    pub use_uids: bool,
    pub use_comms: bool,
    /// Per-call capture cap in bytes (0 = `WRITE_CAPTURE_DEFAULT`; clamped to
    /// `WRITE_DATA_MAX`).
    pub capture_max: u32,
}

/// Kernel counters of one probe, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeStats {
    pub events: u64,
    pub lost: u64,
    pub skipped: u64,
    pub truncated: u64,
    pub bytes_dropped: u64,
    pub kills: u64,
    /// Execs killed because their arguments could not be checked to the end (fail closed).
    pub unchecked: u64,
    /// Calls folded into a record sent before them (connect repeats).
    pub folded: u64,
}

/// Counters of every probe, indexed by `PROBE_*`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    pub per: [ProbeStats; PROBE_COUNT as usize],
}

pub struct Probes {
    ebpf: Ebpf,
    /// `category:name` of every attached tracepoint.
    pub attached: Vec<String>,
    /// Generation of the scope last loaded (see `ScopeConfig::generation`).
    scope_generation: u32,
    /// Files the TLS plaintext uprobes are attached to.
    pub tls_attached: Vec<String>,
    /// `detach_all` has run (the daemon is stopping): the TLS watcher attaches nothing more
    /// (it checks under the same lock).
    detached: bool,
    /// The exec kill's links, pinned while anything is frozen.
    pins: Option<pins::Pins>,
    /// What an earlier daemon's pinned exec kill left (taken once, by the daemon).
    left: Option<pins::Left>,
}

impl Probes {
    /// `detach_all` has run.
    pub fn detached(&self) -> bool {
        self.detached
    }

    /// Detaches every program, all at once from as many threads. Each detach waits for the
    /// kernel's RCU grace periods (60–115 ms apiece measured here), so one after another,
    /// as dropping them does, a stop took 2.6 s; side by side 1.6 s (22 tracepoints): the
    /// perf tracepoint teardown waits under the kernel's `event_mutex`, so most of the
    /// waits still run one after another. Each program is off its hook at the start of
    /// its close, before the waits: within milliseconds of the call, all of them.
    pub fn detach_all(&mut self) {
        use aya::programs::Program;
        self.detached = true;
        // Pinned killers stay, and stay in `self`: a freeze or unfreeze while stopping
        // still reaches them (through the frozen map they share, and the pins).
        let pins = match self.pins.take() {
            Some(p) if p.pinned() => {
                p.stays();
                self.pins = Some(p);
                None
            }
            other => other,
        };
        let progs: Vec<&mut Program> = self.ebpf.programs_mut().map(|(_, p)| p).collect();
        std::thread::scope(|s| {
            if let Some(pins) = pins {
                s.spawn(move || drop(pins));
            }
            for p in progs {
                s.spawn(move || {
                    let _ = match p {
                        Program::TracePoint(t) => t.unload(),
                        Program::UProbe(u) => u.unload(),
                        _ => Ok(()),
                    };
                });
            }
        });
    }
}

/// The kernel id of one of the object's maps (a ring or per-CPU array: the ones pinned).
fn map_id(ebpf: &Ebpf, name: &str) -> Result<u32> {
    match ebpf.map(name) {
        Some(aya::maps::Map::RingBuf(m) | aya::maps::Map::PerCpuArray(m)) => Ok(m.info()?.id()),
        _ => bail!("{name} map missing"),
    }
}

/// Sums the per-CPU counters of a `STATS` map.
fn stats_of<T: std::borrow::Borrow<MapData>>(map: &PerCpuArray<T, u64>) -> Result<KernelStats> {
    let sum = |p: u32, s: u32| -> Result<u64> { Ok(map.get(&stat_slot(p, s), 0)?.iter().sum()) };
    let mut out = KernelStats::default();
    for (p, st) in out.per.iter_mut().enumerate() {
        let p = p as u32;
        *st = ProbeStats {
            events: sum(p, STAT_EVENTS)?,
            lost: sum(p, STAT_LOST)?,
            skipped: sum(p, STAT_SKIPPED)?,
            truncated: sum(p, STAT_TRUNCATED)?,
            bytes_dropped: sum(p, STAT_BYTES_DROPPED)?,
            kills: sum(p, STAT_KILLS)?,
            unchecked: sum(p, STAT_UNCHECKED)?,
            folded: sum(p, STAT_FOLDED)?,
        };
    }
    Ok(out)
}

/// Checks what loading needs before trying, so the error names the real cause.
pub fn preflight() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("leakwatch daemon must run as root (it loads eBPF programs); run it with sudo or as the systemd service");
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!("this kernel has no BTF (/sys/kernel/btf/vmlinux is missing); leakwatch needs a kernel built with CONFIG_DEBUG_INFO_BTF=y");
    }
    let tracefs = tracefs()?;
    for (_, cat, name, what) in TRACEPOINTS {
        if !tracefs.join("events").join(cat).join(name).exists() {
            bail!("tracepoint {cat}:{name} is missing from this kernel (needs CONFIG_FTRACE_SYSCALLS=y); leakwatch cannot watch {what} without it");
        }
    }
    Ok(())
}

/// tracefs root, mounting it where systemd would if nobody has (tracepoint ids live there).
fn tracefs() -> Result<&'static Path> {
    if tracefs_root().is_none() {
        mount_tracefs();
    }
    tracefs_root().ok_or_else(|| {
        anyhow!("tracefs is not mounted; mount it with `mount -t tracefs nodev /sys/kernel/tracing` and start leakwatch again")
    })
}

fn mount_tracefs() {
    let target = c"/sys/kernel/tracing";
    // SAFETY: constant NUL-terminated strings; mount(2) has no memory preconditions.
    let r = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r == 0 {
        log::info!("mounted tracefs at /sys/kernel/tracing");
    }
}

fn tracefs_root() -> Option<&'static Path> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("events").exists())
}

/// Where `group_dead` sits in this kernel's `sched_process_exit` record; 0 when it has no
/// such field (older kernels: the program then reads the thread group's live count).
/// `LEAKWATCH_GROUP_DEAD` makes this kernel take another kernel's path, for tests:
/// `signal` the live count, `helper` the helper read of an offset other than 32.
fn exit_group_dead() -> u64 {
    let force = std::env::var("LEAKWATCH_GROUP_DEAD").unwrap_or_default();
    if force == "signal" {
        return 0;
    }
    let Some(root) = tracefs_root() else {
        return 0;
    };
    let off = match std::fs::read_to_string(root.join("events/sched/sched_process_exit/format")) {
        Ok(text) => match tpformat::field(&text, "group_dead") {
            Some((off, 1)) if off > 0 && off < GROUP_DEAD_BY_HELPER => off,
            _ => 0,
        },
        Err(_) => 0,
    };
    if force == "helper" && off != 0 {
        log::info!(
            "sched_process_exit: group_dead read with a helper call (LEAKWATCH_GROUP_DEAD=helper)"
        );
        return off | GROUP_DEAD_BY_HELPER;
    }
    off
}

/// The kernel struct offsets the programs read by (`OFFSETS`), from this kernel's BTF. The
/// parsed table (every type's and member's name) is freed before the object is loaded,
/// not held through the verification.
fn kernel_offsets() -> Result<Vec<(&'static str, u64)>> {
    let vmlinux =
        std::fs::read("/sys/kernel/btf/vmlinux").context("reading /sys/kernel/btf/vmlinux")?;
    let btf = btf::Btf::parse(&vmlinux).context("parsing /sys/kernel/btf/vmlinux")?;
    let mut offsets = Vec::with_capacity(OFFSETS.len());
    for (global, st, path, required) in OFFSETS {
        match btf.offset(st, path) {
            Ok(v) => offsets.push((*global, v)),
            Err(e) if *required => {
                return Err(e.context(format!(
                    "this kernel's BTF lacks a struct member leakwatch reads ({st}.{path})"
                )))
            }
            Err(e) => {
                log::info!("{e:#}; that detail will be missing from records");
                offsets.push((*global, 0));
            }
        }
    }
    Ok(offsets)
}

fn nr_cpus() -> Result<u32> {
    Ok(aya::util::nr_cpus().map_err(|(what, e)| anyhow!("reading {what}: {e}"))? as u32)
}

impl Probes {
    /// Loads the object with this host's kernel struct offsets, hash seed and own tgid, and
    /// attaches every tracepoint.
    pub fn load(o: &LoadOptions) -> Result<Probes> {
        let t0 = std::time::Instant::now();
        let offsets = kernel_offsets()?;
        let cpus = nr_cpus()?;
        let mut loader = EbpfLoader::new();
        // No CO-RE relocations to make (the offsets are ours, read above): the kernel BTF
        // aya parsed in `new` goes at once, not held through the load (13 MB here).
        loader.btf(None);
        for (global, v) in &offsets {
            loader.override_global(global, v, true);
        }
        let group_dead = exit_group_dead();
        if group_dead == 0 {
            log::info!("sched_process_exit: group_dead not read from the record (none here, or LEAKWATCH_GROUP_DEAD=signal): a process's last thread is told by its thread group's live count");
        }
        if group_dead == 0
            && offsets
                .iter()
                .any(|&(g, v)| g == "OFF_TASK_SIGNAL" && v == 0)
        {
            log::warn!("this kernel tells no process's last thread apart (no group_dead in sched_process_exit, no task_struct.signal in BTF): core dumps go unnoticed and per-process caches are not dropped at exit");
        }
        loader
            .override_global("EXIT_GROUP_DEAD", &group_dead, true)
            .override_global("HASH_SEED", &o.hash_seed, true)
            .override_global("OWN_TGID", &o.own_tgid, true);
        for m in PER_CPU_ARRAYS {
            loader.map_max_entries(m, cpus);
        }
        loader
            .map_max_entries("EVENTS", o.rings.0)
            .map_max_entries("WRITES", o.rings.1);
        let ebpf = loader.load(OBJECT).map_err(explain_load)?;
        let mut p = Probes {
            ebpf,
            attached: Vec::new(),
            scope_generation: 0,
            tls_attached: Vec::new(),
            detached: false,
            pins: None,
            left: None,
        };
        p.set_scope(&o.scope)
            .context("loading the [scope] lists into the kernel")?;
        p.set_frozen(&o.frozen)
            .context("loading the frozen set into the kernel map")?;
        let t_object = t0.elapsed();
        load_all(&mut p.ebpf)?;
        let t_verified = t0.elapsed();
        let mut pins = o.pin_dir.clone().map(|d| pins::Pins::new(d, OBJECT));
        if let Some(pins) = pins.as_mut() {
            for name in ["EVENTS", "STATS"] {
                let id = map_id(&p.ebpf, name).with_context(|| format!("{name} map id"))?;
                pins.add_map(name, id);
            }
        }
        // Owning a link needs a bpf_link (kernel 5.15+); without one aya's link is the perf
        // event itself, which cannot be pinned.
        if pins.is_some() && !aya::features().bpf_perf_link() {
            log::warn!("frozen credentials are blocked only while the daemon runs: this kernel cannot pin a tracepoint link (no bpf_link for perf events)");
            pins = None;
        }
        for (prog, cat, name, _) in TRACEPOINTS {
            let t: &mut TracePoint = program(&mut p.ebpf, prog)?.try_into()?;
            let id = attach_loaded(t, prog, cat, name)?;
            if let Some(pins) = pins.as_mut().filter(|_| pins::KILLERS.contains(prog)) {
                let link = t.take_link(id)?;
                pins.add(prog, aya::programs::links::FdLink::try_from(link)?);
            }
            p.attached.push(format!("{cat}:{name}"));
        }
        if let Some(mut pins) = pins {
            // Ours pinned before the earlier ones go: a crash in between leaves two sets
            // pinned (the next start retires both), never none.
            pins.sync(!o.frozen.is_empty());
            let left = pins.retire_old();
            if left.links != 0 {
                log::info!(
                    "retired the exec kill an earlier leakwatch left pinned in {} ({} links)",
                    pins.dir().display(),
                    left.links
                );
            }
            p.pins = Some(pins);
            p.left = Some(left);
        }
        log::debug!(
            "probes: BTF offsets and maps {t_object:?}, programs verified {:?}, attached {:?}",
            t_verified - t_object,
            t0.elapsed() - t_verified
        );
        Ok(p)
    }

    /// The event ring buffer: exec, kill notices, connects (taken once, by the reader).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map("EVENTS").context("EVENTS map missing")?;
        Ok(RingBuf::try_from(map)?)
    }

    /// The kernel's list of files held for by-reference capture and its pending runs of
    /// by-reference writes (taken once, by the pipeline).
    pub fn take_held(&mut self) -> Result<(HeldMap, RunsMap)> {
        let held = self.ebpf.take_map("HELD").context("HELD map missing")?;
        let runs = self.ebpf.take_map("RUNS").context("RUNS map missing")?;
        Ok((
            aya::maps::HashMap::try_from(held)?,
            aya::maps::HashMap::try_from(runs)?,
        ))
    }

    /// The kernel's last recorded connect per process and fd slot, with the repeats folded
    /// since, and the flag that stops the kernel sending them (taken once, by the pipeline).
    pub fn take_connect_folds(&mut self) -> Result<ConnectFolds> {
        let map = self
            .ebpf
            .take_map("CONNECT_LAST")
            .context("CONNECT_LAST map missing")?;
        let drained = self
            .ebpf
            .take_map("CONNECT_DRAINED")
            .context("CONNECT_DRAINED map missing")?;
        Ok(ConnectFolds {
            last: aya::maps::HashMap::try_from(map)?,
            drained: aya::maps::Array::try_from(drained)?,
        })
    }

    /// The write ring reader's wakeup request (see `maps::write_wakeup` in the kernel crate;
    /// taken once, by the reader).
    pub fn take_reader_asleep(&mut self) -> Result<aya::maps::Array<MapData, u32>> {
        let map = self
            .ebpf
            .take_map("READER_ASLEEP")
            .context("READER_ASLEEP map missing")?;
        Ok(aya::maps::Array::try_from(map)?)
    }

    /// The write-family ring buffer (taken once, by the reader).
    pub fn take_writes(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map("WRITES").context("WRITES map missing")?;
        Ok(RingBuf::try_from(map)?)
    }

    pub fn stats(&self) -> Result<KernelStats> {
        let map =
            PerCpuArray::<_, u64>::try_from(self.ebpf.map("STATS").context("STATS map missing")?)?;
        stats_of(&map)
    }

    /// What an earlier daemon's pinned exec kill left (see `pins::Left`), once.
    pub fn take_left(&mut self) -> pins::Left {
        self.left.take().unwrap_or_default()
    }

    /// Replaces the kernel's frozen set with these (hash, length) pairs.
    pub fn set_frozen(&mut self, entries: &[(u64, u32)]) -> Result<()> {
        let mut map: HashMap<_, u64, u32> =
            HashMap::try_from(self.ebpf.map_mut("FROZEN").context("FROZEN map missing")?)?;
        for (h, len) in entries {
            map.insert(h, len, 0)?;
        }
        let old: Vec<u64> = map.keys().filter_map(|k| k.ok()).collect();
        for k in old {
            if !entries.iter().any(|(h, _)| *h == k) {
                map.remove(&k)?;
            }
        }
        let mut on: Array<_, u32> = Array::try_from(
            self.ebpf
                .map_mut("FROZEN_ON")
                .context("FROZEN_ON map missing")?,
        )?;
        on.set(0, u32::from(!entries.is_empty()), 0)?;
        if let Some(p) = self.pins.as_mut() {
            p.sync(!entries.is_empty());
        }
        // Decided under the same lock as `detach_all`: stopping, with the exec kill off its
        // hooks, the set is saved but enforced only from the next start.
        if !entries.is_empty() && self.kill_detached() {
            bail!("leakwatch is stopping and its exec kill is detached: the frozen set is saved and enforced from the next start (its sweep kills what started meanwhile)");
        }
        Ok(())
    }

    /// The kernel id of the `STATS` map (the key of what was reported from it, see
    /// `daemon::report_left`).
    pub fn stats_map_id(&self) -> Option<u32> {
        map_id(&self.ebpf, "STATS").ok()
    }

    /// Stopping, with the exec kill off its hooks (it was not pinned): a frozen set given
    /// now is enforced only from the next start.
    pub fn kill_detached(&self) -> bool {
        self.detached && !self.kill_pinned()
    }

    /// The exec kill is pinned: it stays attached if the daemon stops or dies.
    pub fn kill_pinned(&self) -> bool {
        self.pins.as_ref().is_some_and(|p| p.pinned())
    }

    /// Replaces the scope lists and config, then drops every cached verdict. New entries go
    /// in before stale ones leave, so a process in both the old and new scope never drops out.
    /// Blocks ~2 ms (see below).
    pub fn set_scope(&mut self, s: &KernelScope) -> Result<()> {
        let comms: Vec<[u8; 16]> = s.comms.iter().map(|c| comm_key(c)).collect();
        replace_set::<u64>(&mut self.ebpf, "SCOPE_CGROUPS", &s.cgroup_ids)?;
        replace_set::<u32>(&mut self.ebpf, "SCOPE_UIDS", &s.uids)?;
        replace_set::<[u8; 16]>(&mut self.ebpf, "SCOPE_COMMS", &comms)?;
        let cfg = ScopeConfig {
            cgroups: u32::from(s.use_cgroups),
            uids: u32::from(s.use_uids),
            comms: u32::from(s.use_comms),
            capture_max: s.capture_max.min(WRITE_DATA_MAX as u32),
            // 0 is "no lists loaded yet", u32::MAX the kernel's "not decided yet".
            generation: match self.scope_generation.wrapping_add(1) {
                0 | u32::MAX => 1,
                g => g,
            },
            _pad: 0,
        };
        self.scope_generation = cfg.generation;
        let mut map: Array<_, PodScope> = Array::try_from(
            self.ebpf
                .map_mut("SCOPE_CFG")
                .context("SCOPE_CFG map missing")?,
        )?;
        map.set(0, PodScope(cfg), 0)?;
        // A program that read the old lists may still be about to cache its verdict; they
        // run for microseconds, so clear after they are done.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let mut verdicts: HashMap<_, u32, [u8; 56]> = HashMap::try_from(
            self.ebpf
                .map_mut("SCOPE_VERDICT")
                .context("SCOPE_VERDICT map missing")?,
        )?;
        let keys: Vec<u32> = verdicts.keys().filter_map(|k| k.ok()).collect();
        for k in keys {
            // Already gone (the process exited) is fine.
            let _ = verdicts.remove(&k);
        }
        Ok(())
    }

    /// For aya-log, which reads the kernel programs' log map.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// (program, instructions the verifier processed) for every loaded program.
    pub fn verifier_counts(&self) -> Vec<(String, u32)> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                let n = p.info().ok()?.verified_instruction_count()?;
                Some((name.to_string(), n))
            })
            .collect()
    }
}

/// `ScopeConfig` as an aya `Pod` (the common crate stays free of aya).
#[repr(transparent)]
#[derive(Clone, Copy)]
struct PodScope(ScopeConfig);
// SAFETY: #[repr(C)] struct of u32s.
unsafe impl aya::Pod for PodScope {}

/// A thread's pending run of by-reference writes (`RefRun`) as an aya `Pod`.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct PodRun(pub RefRun);
// SAFETY: #[repr(C)] struct of integers and integer arrays.
unsafe impl aya::Pod for PodRun {}

/// A process's connect slots (`ConnectLast`) as an aya `Pod`.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct PodConnectLast(pub ConnectLast);
// SAFETY: #[repr(C)] struct of integers and integer arrays.
unsafe impl aya::Pod for PodConnectLast {}

/// The kernel's connect folds: tgid -> its connect slots, with the repeats folded in the
/// kernel, and the flag that tells the kernel the daemon drains them for good (`pipeline`
/// drains them at stop, and when it forgets its (tgid, fd) names).
pub struct ConnectFolds {
    pub last: aya::maps::HashMap<MapData, u32, PodConnectLast>,
    pub drained: aya::maps::Array<MapData, u32>,
}

/// Inodes of held files (see `pipeline::held`).
pub type HeldMap = aya::maps::HashMap<MapData, u64, u8>;
/// Thread id -> its pending run.
pub type RunsMap = aya::maps::HashMap<MapData, u32, PodRun>;

/// `comm` as the kernel stores it: at most 15 bytes, NUL-padded.
fn comm_key(c: &str) -> [u8; 16] {
    let mut k = [0u8; 16];
    let b = c.as_bytes();
    let n = b.len().min(15);
    k[..n].copy_from_slice(&b[..n]);
    k
}

/// Makes the hash map `name` hold exactly `keys` (value 1).
fn replace_set<K: aya::Pod + PartialEq>(ebpf: &mut Ebpf, name: &str, keys: &[K]) -> Result<()> {
    let mut map: HashMap<_, K, u8> = HashMap::try_from(
        ebpf.map_mut(name)
            .with_context(|| format!("{name} map missing"))?,
    )?;
    for k in keys {
        map.insert(k, 1, 0)
            .with_context(|| format!("adding to {name} (is the list longer than the map?)"))?;
    }
    let old: Vec<K> = map.keys().filter_map(|k| k.ok()).collect();
    for k in old {
        if !keys.contains(&k) {
            map.remove(&k)?;
        }
    }
    Ok(())
}

/// The object's program `prog`, or one sentence saying the object is stale.
fn program<'a>(ebpf: &'a mut Ebpf, prog: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(prog).with_context(|| {
        format!("program {prog} missing from the embedded object; rebuild with `cargo xtask build`")
    })
}

/// Programs whose verification takes longest, started first so the rest fill the other
/// cores meanwhile (measured here: `sched_process_exec` ~210 ms, `io_uring_submit_req` ~80 ms,
/// every other one under 25 ms).
const SLOW_TO_VERIFY: [&str; 2] = ["sched_process_exec", "io_uring_submit_req"];

/// Loads every tracepoint program. The kernel's verifier is most of the daemon's start-up
/// and verifies programs independently, so they are loaded on all cores, slowest first.
fn load_all(ebpf: &mut Ebpf) -> Result<()> {
    for (prog, ..) in TRACEPOINTS {
        program(ebpf, prog)?;
    }
    let mut progs: Vec<(&str, &mut TracePoint)> = Vec::new();
    for (name, prog) in ebpf.programs_mut() {
        if TRACEPOINTS.iter().any(|t| t.0 == name) {
            progs.push((name, prog.try_into()?));
        }
    }
    // Popped from the end: the slow ones last in the vector.
    progs.sort_by_key(|(n, _)| SLOW_TO_VERIFY.iter().rev().position(|s| s == n));
    let queue = std::sync::Mutex::new(progs);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let next = queue
                            .lock()
                            .map_err(|_| anyhow!("loader queue poisoned"))?
                            .pop();
                        let Some((name, p)) = next else { return Ok(()) };
                        p.load().map_err(|e| explain_prog(name, e))?;
                    }
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .map_err(|_| anyhow!("a program loader thread panicked"))?
        })
    })
}

fn attach_loaded(
    p: &mut TracePoint,
    prog: &str,
    cat: &str,
    name: &str,
) -> Result<aya::programs::trace_point::TracePointLinkId> {
    p.attach(cat, name).map_err(|e| {
        anyhow!("attaching {prog} to tracepoint {cat}:{name} failed: {e}; check that tracefs is mounted and the tracepoint exists")
    })
}

fn explain_load(e: aya::EbpfError) -> anyhow::Error {
    let text = format!("{e:#}");
    if text.contains("Operation not permitted") || text.contains("EPERM") {
        anyhow!("the kernel refused to load leakwatch's eBPF maps ({text}); run as root with CAP_BPF and CAP_SYS_ADMIN, and check kernel.unprivileged_bpf_disabled and lockdown")
    } else {
        anyhow!("loading leakwatch's eBPF object failed: {text}; rebuild with `cargo xtask build` for this kernel")
    }
}

fn explain_prog(prog: &str, e: aya::programs::ProgramError) -> anyhow::Error {
    if let aya::programs::ProgramError::LoadError {
        io_error,
        verifier_log,
    } = &e
    {
        let log = verifier_log.to_string();
        if io_error.raw_os_error() == Some(libc::EPERM) && log.trim().is_empty() {
            return anyhow!("the kernel refused to load the {prog} eBPF program (EPERM); run as root with CAP_BPF and CAP_SYS_ADMIN");
        }
        log::debug!("{prog} verifier output:\n{log}");
        let last: Vec<&str> = log
            .lines()
            .rev()
            .filter(|l| !l.trim().is_empty())
            .take(3)
            .collect();
        return anyhow!(
            "the kernel verifier rejected the {prog} eBPF program ({io_error}): {}; rerun with LEAKWATCH_LOG=debug for the full log",
            last.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    anyhow!("loading the {prog} eBPF program failed: {e}")
}

#[cfg(test)]
mod tests {
    use object::{Object, ObjectSection};

    /// The loader is given no kernel BTF (`Probes::load`): right only while the object asks
    /// for no CO-RE relocation. A `.BTF.ext` header (magic, version, flags, header length,
    /// then func, line and CO-RE info as offset and length) with CO-RE records means the
    /// programs now need the kernel's BTF to be relocated.
    #[test]
    fn the_object_asks_for_no_core_relocation() {
        let obj = object::File::parse(super::OBJECT).unwrap();
        let ext = obj.section_by_name(".BTF.ext").unwrap().data().unwrap();
        let u32_at = |at: usize| u32::from_le_bytes(ext[at..at + 4].try_into().unwrap());
        assert_eq!(u16::from_le_bytes([ext[0], ext[1]]), 0xeb9f);
        let header_len = u32_at(4) as usize;
        assert!(
            u32_at(12) > 0,
            "func info is there: the header is read right"
        );
        if header_len >= 32 {
            assert_eq!(u32_at(28), 0, "CO-RE relocations in the object");
        }
    }
}
