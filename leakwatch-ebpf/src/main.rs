//! leakwatch kernel programs, one module per hook family (exec: the record from the new
//! image in `exec_capture`, the frozen checks in `exec` and `exec_image`; write with its
//! `payload` copy; connect; floor) over shared pieces: `header` (who made the call), `maps`
//! (ring + per-probe counters), `args` (syscall arguments from the record), `frozen`
//! (credential hash + kill), `scope` (whose writes are copied), `task`/`fdinfo`/
//! `sockaddr`/`span` (kernel and user structs; kernel offsets come from BTF via
//! loader-set globals). Built for `bpfel-unknown-none` by `cargo xtask build-ebpf`.
#![no_std]
#![no_main]
// `atomic_xadd`: this target's `core` has no atomic read-modify-write types (see `maps::add`).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod args;
mod connect;
mod copies;
mod coredump;
mod exec;
mod exec_capture;
mod exec_image;
mod fdinfo;
mod floor;
mod frozen;
mod header;
mod iouring;
mod maps;
mod mem;
mod payload;
mod runs;
mod scope;
mod sockaddr;
mod span;
mod task;
mod tls;
mod write;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never reached at run time.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
