//! Loading and attaching the kernel programs, and access to their maps. The only module
//! that uses aya. Failures are turned into one sentence an operator can act on.
mod btf;

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

/// (program, tracepoint category, tracepoint name)
const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("sys_enter_execve", "syscalls", "sys_enter_execve"),
    ("sys_enter_execveat", "syscalls", "sys_enter_execveat"),
];

pub struct Probes {
    ebpf: Ebpf,
    pub attached: Vec<String>,
}

/// Kernel counters summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    pub exec_events: u64,
    pub lost_execve: u64,
    pub lost_execveat: u64,
    pub enforce_kills: u64,
    pub enforce_lost: u64,
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
    if tracefs_root().is_none() {
        mount_tracefs();
    }
    let tracefs = tracefs_root().ok_or_else(|| {
        anyhow!("tracefs is not mounted; mount it with `mount -t tracefs nodev /sys/kernel/tracing` and start leakwatch again")
    })?;
    for (_, cat, name) in TRACEPOINTS {
        if !tracefs.join("events").join(cat).join(name).exists() {
            bail!("tracepoint {cat}:{name} is missing from this kernel (needs CONFIG_FTRACE_SYSCALLS=y); leakwatch cannot watch execs without it");
        }
    }
    Ok(())
}

/// Tracepoint ids are read from tracefs; mount it where systemd would, if nobody has.
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

impl Probes {
    /// Loads the object with this host's `task_struct` offsets and hash seed, and attaches
    /// every tracepoint.
    pub fn load(hash_seed: u64) -> Result<Probes> {
        let vmlinux =
            std::fs::read("/sys/kernel/btf/vmlinux").context("reading /sys/kernel/btf/vmlinux")?;
        let off_parent = btf::member_offset(&vmlinux, "task_struct", "real_parent")? as u64;
        let off_tgid = btf::member_offset(&vmlinux, "task_struct", "tgid")? as u64;
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("reading {what}: {e}"))? as u32;
        let mut ebpf = EbpfLoader::new()
            .override_global("OFF_TASK_REAL_PARENT", &off_parent, true)
            .override_global("OFF_TASK_TGID", &off_tgid, true)
            .override_global("HASH_SEED", &hash_seed, true)
            .map_max_entries("SCRATCH", cpus)
            .load(OBJECT)
            .map_err(explain_load)?;
        let mut attached = Vec::new();
        for (prog, cat, name) in TRACEPOINTS {
            let p: &mut TracePoint = ebpf
                .program_mut(prog)
                .with_context(|| format!("program {prog} missing from the embedded object; rebuild with `cargo xtask build`"))?
                .try_into()?;
            p.load().map_err(|e| explain_prog(prog, e))?;
            p.attach(cat, name).map_err(|e| {
                anyhow!("attaching {prog} to tracepoint {cat}:{name} failed: {e}; check that tracefs is mounted and the tracepoint exists")
            })?;
            attached.push(format!("{cat}:{name}"));
        }
        Ok(Probes { ebpf, attached })
    }

    /// The event ring buffer (taken once, by the reader task).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map("EVENTS").context("EVENTS map missing")?;
        Ok(RingBuf::try_from(map)?)
    }

    pub fn stats(&self) -> Result<KernelStats> {
        let map =
            PerCpuArray::<_, u64>::try_from(self.ebpf.map("STATS").context("STATS map missing")?)?;
        let sum = |slot: u32| -> Result<u64> { Ok(map.get(&slot, 0)?.iter().sum()) };
        Ok(KernelStats {
            exec_events: sum(STAT_EXEC_EVENTS)?,
            lost_execve: sum(STAT_EXEC_LOST_EXECVE)?,
            lost_execveat: sum(STAT_EXEC_LOST_EXECVEAT)?,
            enforce_kills: sum(STAT_ENFORCE_KILLS)?,
            enforce_lost: sum(STAT_ENFORCE_LOST)?,
        })
    }

    /// Replaces the kernel's frozen set with these (hash, length) pairs.
    pub fn set_frozen(&mut self, entries: &[(u64, u32)]) -> Result<()> {
        let mut map: HashMap<_, u64, u32> =
            HashMap::try_from(self.ebpf.map_mut("FROZEN").context("FROZEN map missing")?)?;
        let old: Vec<u64> = map.keys().filter_map(|k| k.ok()).collect();
        for k in old {
            if !entries.iter().any(|(h, _)| *h == k) {
                map.remove(&k)?;
            }
        }
        for (h, len) in entries {
            map.insert(h, len, 0)?;
        }
        let mut on: Array<_, u32> = Array::try_from(
            self.ebpf
                .map_mut("FROZEN_ON")
                .context("FROZEN_ON map missing")?,
        )?;
        on.set(0, u32::from(!entries.is_empty()), 0)?;
        Ok(())
    }
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

impl Probes {
    /// For aya-log, which reads the kernel programs' log map.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}
