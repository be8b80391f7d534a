//! Bare counter programs for the benchmarks: the cheapest probe on the daemon's hooks (the
//! floor every cost is set against), and the same hooks taken from the raw `sys_enter` /
//! `sys_exit` tracepoints instead, to measure what that choice would cost. Never loaded by
//! the daemon.
use std::path::Path;

use anyhow::{Context, Result};
use aya::{
    maps::{Array, PerCpuArray, ProgramArray},
    programs::{uprobe::UProbeScope, RawTracePoint, TracePoint, UProbe},
    Ebpf, EbpfLoader,
};

use super::{attach_loaded, explain_load, explain_prog, program, tracefs, OBJECT};

/// Counter programs attached to hooks; detached when dropped.
pub struct Floor {
    ebpf: Ebpf,
}

/// The object with minimal maps: a floor never emits, and its maps should cost nothing.
fn object() -> Result<Ebpf> {
    EbpfLoader::new()
        .btf(None)
        .map_max_entries("EVENTS", 4096)
        .map_max_entries("WRITES", 4096)
        .load(OBJECT)
        .map_err(explain_load)
}

/// Loads the object's `floor` program and attaches it to each tracepoint: `category:name`,
/// or a bare name for `syscalls:<name>`.
pub fn load_floor(tracepoints: &[&str]) -> Result<Floor> {
    tracefs()?;
    let mut ebpf = object()?;
    let p: &mut TracePoint = program(&mut ebpf, "floor")?.try_into()?;
    p.load().map_err(|e| explain_prog("floor", e))?;
    for name in tracepoints {
        let (cat, name) = name.split_once(':').unwrap_or(("syscalls", name));
        attach_loaded(p, "floor", cat, name)?;
    }
    Ok(Floor { ebpf })
}

/// How the raw variant picks out the watched syscalls among all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawHook {
    /// One program per direction looks the syscall number up in an array.
    Filter,
    /// One program per direction tail-calls the syscall's own program (how a daemon with
    /// one handler per syscall would do it).
    Dispatch,
}

/// The floor on raw tracepoints: `enter` and `exit` are the syscall numbers watched at
/// entry and at exit (through `sys_enter` / `sys_exit`, which every syscall passes), and
/// `events` the other raw tracepoints (by name: `sched_process_exec`, …) counted as such.
pub fn load_raw_floor(
    hook: RawHook,
    enter: &[u32],
    exit: &[u32],
    events: &[&str],
) -> Result<Floor> {
    let mut ebpf = object()?;
    load_raw(&mut ebpf, "floor_raw")?;
    match hook {
        RawHook::Filter => {
            let mut ids: Array<_, u32> =
                Array::try_from(ebpf.map_mut("FLOOR_IDS").context("FLOOR_IDS map missing")?)?;
            for (nrs, bit) in [(enter, 1), (exit, 2)] {
                for &nr in nrs {
                    let v = ids.get(&nr, 0).context("syscall number out of range")?;
                    ids.set(nr, v | bit, 0)?;
                }
            }
        }
        RawHook::Dispatch => {
            let target = ebpf
                .program("floor_raw")
                .context("floor_raw missing")?
                .fd()?
                .try_clone()?;
            for (map, nrs) in [("FLOOR_JMP_ENTER", enter), ("FLOOR_JMP_EXIT", exit)] {
                let mut jmp = ProgramArray::try_from(
                    ebpf.map_mut(map)
                        .with_context(|| format!("{map} missing"))?,
                )?;
                for &nr in nrs {
                    jmp.set(nr, &target, 0)?;
                }
            }
        }
    }
    let (on_enter, on_exit) = match hook {
        RawHook::Filter => ("floor_raw_enter", "floor_raw_exit"),
        RawHook::Dispatch => ("floor_disp_enter", "floor_disp_exit"),
    };
    for (prog, tp, nrs) in [(on_enter, "sys_enter", enter), (on_exit, "sys_exit", exit)] {
        if !nrs.is_empty() {
            load_raw(&mut ebpf, prog)?;
            attach_raw(&mut ebpf, prog, tp)?;
        }
    }
    for tp in events {
        attach_raw(&mut ebpf, "floor_raw", tp)?;
    }
    Ok(Floor { ebpf })
}

fn raw_program<'a>(ebpf: &'a mut Ebpf, prog: &str) -> Result<&'a mut RawTracePoint> {
    Ok(program(ebpf, prog)?.try_into()?)
}

fn attach_raw(ebpf: &mut Ebpf, prog: &str, tp: &str) -> Result<()> {
    raw_program(ebpf, prog)?
        .attach(tp)
        .map_err(|e| anyhow::anyhow!("attaching {prog} to raw tracepoint {tp} failed: {e}"))?;
    Ok(())
}

fn load_raw(ebpf: &mut Ebpf, prog: &str) -> Result<()> {
    raw_program(ebpf, prog)?
        .load()
        .map_err(|e| explain_prog(prog, e))
}

impl Floor {
    /// Calls counted so far, over all CPUs and hooks.
    pub fn calls(&self) -> Result<u64> {
        let map = PerCpuArray::<_, u64>::try_from(
            self.ebpf
                .map("FLOOR_CALLS")
                .context("FLOOR_CALLS map missing")?,
        )?;
        Ok(map.get(&0, 0)?.iter().sum())
    }

    /// Adds the counter as the TLS probes' entry and return uprobes, at the same points
    /// of `path` (see `tls::POINTS`): what any probe there costs, the traps included.
    pub fn attach_tls(&mut self, path: &Path) -> Result<()> {
        for (prog, sym) in super::tls::POINTS {
            let floor = if prog.ends_with("_ret") {
                "floor_uretprobe"
            } else {
                "floor_uprobe"
            };
            let p: &mut UProbe = program(&mut self.ebpf, floor)?.try_into()?;
            if p.fd().is_err() {
                p.load().map_err(|e| explain_prog(floor, e))?;
            }
            p.attach(sym, path, UProbeScope::AllProcesses)
                .with_context(|| format!("attaching {floor} to {sym} in {}", path.display()))?;
        }
        Ok(())
    }

    /// The loaded object (program info, for run-time statistics).
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }
}
