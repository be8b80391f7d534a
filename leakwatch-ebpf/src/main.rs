//! leakwatch kernel programs. One module per hook family; maps shared between them live in
//! `maps`. Built for `bpfel-unknown-none` by `cargo xtask build-ebpf`.
#![no_std]
#![no_main]

mod enforce;
mod exec;
mod maps;
mod task;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never reached at run time.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
