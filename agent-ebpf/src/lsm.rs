//! BPF-LSM hooks: decisions taken before the operation, returning `-EPERM`. Loaded only
//! where the kernel runs the `bpf` LSM (`lsm=...,bpf`); the daemon's program table says
//! so when they are left out.
//!
//! A refused operation never reaches the tracepoints that report successful ones, so the
//! hooks send the event themselves, with the path resolved from the kernel's `struct
//! file` (not the caller's string).

use agent_common::{
    event::{EventKind, ExecEvent, OpenEvent, OpenSyscall},
    policy::{CATEGORY_EXEC, CATEGORY_FILE},
    session::SESSION_FLAG_DENY_EXEC,
    stats::Stat,
};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{lsm, map},
    maps::PerCpuArray,
    programs::LsmContext,
};

use crate::{
    emit::{current_task, fill_header, send},
    file::{OPEN_STASH, send_open},
    kernel::{self, off, read, read_ptr},
    maps::{count, current_session},
    path::{resolve, resolve_embedded},
    pathrules::{lsm_decide, lsm_wanted},
};

const EPERM: i32 = 1;

/// Scratch records of the hooks (kept apart from the tracepoints' scratch).
#[map]
static LSM_OPEN_SCRATCH: PerCpuArray<OpenEvent> = PerCpuArray::with_max_entries(1, 0);
#[map]
static LSM_EXEC_SCRATCH: PerCpuArray<ExecEvent> = PerCpuArray::with_max_entries(1, 0);

/// `bprm_check_security(struct linux_binprm *bprm)`, with the previous LSM's verdict as
/// the last argument. Runs for the program and for each interpreter it names.
#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        // Another LSM already denied: keep its verdict.
        return previous;
    }
    if !kernel::ready() {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(entry) = current_session(tgid) else {
        return 0;
    };
    if entry.flags & SESSION_FLAG_DENY_EXEC != 0 {
        count(Stat::LsmExecDenied);
        return -EPERM;
    }
    let fileless = crate::fileless::lsm_wanted(&entry);
    if !lsm_wanted(&entry, CATEGORY_EXEC) && !fileless {
        return 0;
    }
    let Some(ev) = LSM_EXEC_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch value, exclusively ours while this program runs.
    let ev = unsafe { &mut *ev };
    let bprm: *const u8 = ctx.arg(0);
    let Some(file) = read_ptr(bprm, off!(bprm_file)) else {
        return 0;
    };
    resolve(file.wrapping_add(off!(file_f_path) as usize), &mut ev.exe);
    let mut ret = lsm_decide(file, &ev.exe, &entry, CATEGORY_EXEC, &mut ev.verdict);
    if ret == 0 && fileless {
        ret = crate::fileless::lsm_decide(file, &entry, &mut ev.verdict);
    }
    if ret == 0 {
        return 0;
    }
    count(Stat::LsmExecDenied);
    fill_header(&mut ev.header, EventKind::Exec, entry.session_id);
    resolve_embedded(
        read_ptr(current_task(), off!(task_fs)),
        off!(fs_pwd),
        &mut ev.cwd,
    );
    // The new argument vector lives in the new, not yet installed, address space.
    ev.argv_len = 0;
    ev.argv_flags = 0;
    send(ev);
    ret
}

/// `file_open(struct file *file)`: every open of a session process, whichever syscall
/// (or io_uring, or execve) made it.
#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    if !kernel::ready() {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(entry) = current_session((pid_tgid >> 32) as u32) else {
        return 0;
    };
    if !lsm_wanted(&entry, CATEGORY_FILE) {
        return 0;
    }
    let Some(ev) = LSM_OPEN_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch value, exclusively ours while this program runs.
    let ev = unsafe { &mut *ev };
    let file: *const u8 = ctx.arg(0);
    // The same open as one allowed within its window, under the same rules: allowed
    // again without the walk (the syscall's exit counts it).
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: copied out.
    if let Some(s) = unsafe { OPEN_STASH.get(pid_tgid) }.copied()
        && let Some(k) = crate::repeats::Key::of(file, s.flags, s.syscall)
        && crate::repeats::is_repeat(tgid, &k, &entry)
    {
        return 0;
    }
    resolve(file.wrapping_add(off!(file_f_path) as usize), &mut ev.path);
    let ret = lsm_decide(file, &ev.path, &entry, CATEGORY_FILE, &mut ev.verdict);
    if ret == 0 {
        return 0;
    }
    count(Stat::LsmFileDenied);
    fill_header(&mut ev.header, EventKind::Open, entry.session_id);
    ev.ret = i64::from(ret);
    match OPEN_STASH.get_ptr_mut(pid_tgid) {
        Some(s) => {
            // SAFETY: a live map value; the syscall exit sees the mark and stays quiet.
            let s = unsafe { &mut *s };
            s.lsm_sent = 1;
            ev.syscall = s.syscall;
            ev.flags = s.flags;
        }
        None => {
            ev.syscall = OpenSyscall::Other as u32;
            ev.flags = read::<u32>(file, off!(file_f_flags)).unwrap_or(0);
        }
    }
    send_open(ev);
    ret
}
