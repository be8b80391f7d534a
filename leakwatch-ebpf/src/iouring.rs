//! io_uring writes: a write submitted through a ring makes no write syscall (node with
//! `UV_USE_IO_URING=1` writes files from its `iou-sqp-PID` thread), so the submission
//! itself is read at `io_uring:io_uring_submit_req`, after the request was prepared:
//! `WRITE`, `WRITE_FIXED` and `SEND` pass one buffer, `WRITEV` an iovec, `SENDMSG` a
//! msghdr. They go through the write path like the syscalls (scope, fd resolution,
//! capture), attributed to the submitting task, whose fd table the request's fd indexes.
//! Registered ("fixed") files are indexes into the ring's own table: counted as skipped.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use leakwatch_common::*;

use crate::{
    maps,
    task::{global, kread},
    write::{handle, Src},
};

#[unsafe(no_mangle)]
static OFF_REQ_CMD: u64 = 0;
#[unsafe(no_mangle)]
static OFF_REQ_CQE_FD: u64 = 0;
#[unsafe(no_mangle)]
static OFF_RW_ADDR: u64 = 0;
#[unsafe(no_mangle)]
static OFF_RW_LEN: u64 = 0;
#[unsafe(no_mangle)]
static OFF_RW_POS: u64 = 0;
#[unsafe(no_mangle)]
static OFF_SR_BUF: u64 = 0;
#[unsafe(no_mangle)]
static OFF_SR_LEN: u64 = 0;

const OP_WRITEV: u8 = 2;
const OP_WRITE_FIXED: u8 = 5;
const OP_SENDMSG: u8 = 9;
const OP_WRITE: u8 = 23;
const OP_SEND: u8 = 26;
/// `REQ_F_FIXED_FILE` (= `IOSQE_FIXED_FILE`).
const REQ_F_FIXED_FILE: u64 = 1;

/// format: req @16, opcode @32, flags @40.
#[tracepoint]
pub fn io_uring_submit_req(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from the format file; reads checked by the helper.
    let (req, opcode, flags) = unsafe {
        (
            ctx.read_at::<u64>(16).unwrap_or(0),
            ctx.read_at::<u8>(32).unwrap_or(0),
            ctx.read_at::<u64>(40).unwrap_or(0),
        )
    };
    if !matches!(
        opcode,
        OP_WRITEV | OP_WRITE_FIXED | OP_SENDMSG | OP_WRITE | OP_SEND
    ) || req == 0
    {
        return 0;
    }
    // `cmd` is at 0 today (in a union with `file`): only the others say "unknown" by 0.
    let (off_cmd, off_fd) = (global(&OFF_REQ_CMD), global(&OFF_REQ_CQE_FD));
    if off_fd == 0 || global(&OFF_RW_ADDR) == 0 {
        return 0;
    }
    if flags & REQ_F_FIXED_FILE != 0 {
        maps::count(PROBE_IO_URING, STAT_SKIPPED);
        return 0;
    }
    let fd: i32 = kread(req + off_fd);
    let cmd = req + off_cmd;
    let (src, pos) = match opcode {
        OP_SEND => (
            Src::Buf {
                ptr: kread(cmd + global(&OFF_SR_BUF)),
                len: kread::<u32>(cmd + global(&OFF_SR_LEN)) as u64,
            },
            -1,
        ),
        OP_SENDMSG => (
            Src::Msg {
                msg: kread(cmd + global(&OFF_SR_BUF)),
            },
            -1,
        ),
        op => {
            let addr: u64 = kread(cmd + global(&OFF_RW_ADDR));
            let len = kread::<u32>(cmd + global(&OFF_RW_LEN)) as u64;
            let pos: i64 = kread(cmd + global(&OFF_RW_POS));
            let src = if op == OP_WRITEV {
                Src::Iov {
                    iov: addr,
                    vlen: len,
                }
            } else {
                Src::Buf { ptr: addr, len }
            };
            (src, pos)
        }
    };
    handle(PROBE_IO_URING, fd as u32, src, pos, 0, 0);
    0
}
