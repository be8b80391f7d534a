//! Copies the eBPF object built by `cargo xtask build-ebpf` into OUT_DIR for
//! `include_bytes_aligned!`. Without it the build stops with the command to run.
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("leakwatch.bpf.o");
    println!("cargo:rerun-if-env-changed=LEAKWATCH_BPF_OBJECT");
    let src = env::var("LEAKWATCH_BPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
            root.join("target/bpfel-unknown-none/release/leakwatch")
        });
    println!("cargo:rerun-if-changed={}", src.display());
    match fs::copy(&src, &out) {
        Ok(_) => {}
        Err(e) => panic!(
            "the eBPF object {} is missing ({e}); build with `cargo xtask build`, which compiles it first",
            src.display()
        ),
    }
}
