//! File opens by session processes: the flags are taken at syscall entry, the path at
//! exit from the `struct file` the kernel installed in the fd table.

use agent_common::{
    event::{EventKind, OpenEvent, OpenSyscall, PATH_MAX},
    policy::CATEGORY_FILE,
    stats::Stat,
};
use aya_ebpf::{
    bindings::BPF_F_NO_COMMON_LRU,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};

use crate::{
    emit::{current_task, fill_header, send},
    kernel::{self, off},
    maps::{OPEN_SCRATCH, count, current_session},
    path::{fd_file, raw_user, resolve_embedded},
    repeats,
};

/// Syscall arguments kept from entry to exit (kernel-only type).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OpenStash {
    filename: u64,
    pub flags: u32,
    pub syscall: u32,
    /// Set by the LSM hook when it refused this open and sent the event itself.
    pub lsm_sent: u32,
    _pad: u32,
}

/// pid_tgid → pending open. LRU so a thread killed inside the syscall cannot leak slots;
/// per-CPU LRU lists (`BPF_F_NO_COMMON_LRU`), because the shared list's lock was the
/// largest cost of stashing on a busy opener.
#[map]
pub static OPEN_STASH: LruHashMap<u64, OpenStash> =
    LruHashMap::with_max_entries(16_384, BPF_F_NO_COMMON_LRU);

// Syscall tracepoint records: 8 bytes of common fields, the syscall number padded to 8,
// then each argument as 8 bytes (`struct syscall_trace_enter`); exit has `ret` at 16.
const ARG0: usize = 16;
const ARG1: usize = 24;
const ARG2: usize = 32;
const RET: usize = 16;

const O_WRONLY: u32 = 0o1;
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;
const O_PATH: u32 = 0o10_000_000;

#[inline(always)]
fn arg(ctx: &TracePointContext, at: usize) -> u64 {
    // SAFETY: reading the tracepoint record.
    unsafe { ctx.read_at::<u64>(at) }.unwrap_or(0)
}

#[inline(always)]
fn stash(filename: u64, flags: u32, syscall: OpenSyscall) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !kernel::ready() || current_session((pid_tgid >> 32) as u32).is_none() {
        return;
    }
    let s = OpenStash {
        filename,
        flags,
        syscall: syscall as u32,
        lsm_sent: 0,
        _pad: 0,
    };
    if OPEN_STASH.insert(pid_tgid, s, 0).is_err() {
        count(Stat::StashFull);
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat")]
pub fn sys_enter_openat(ctx: TracePointContext) -> u32 {
    stash(arg(&ctx, ARG1), arg(&ctx, ARG2) as u32, OpenSyscall::Openat);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat2")]
pub fn sys_enter_openat2(ctx: TracePointContext) -> u32 {
    // The flags live in the user's `struct open_how` (first field, u64).
    let how = arg(&ctx, ARG2) as *const u64;
    // SAFETY: the helper faults safely.
    let flags = unsafe { bpf_probe_read_user(how) }.unwrap_or(0);
    stash(arg(&ctx, ARG1), flags as u32, OpenSyscall::Openat2);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_open")]
pub fn sys_enter_open(ctx: TracePointContext) -> u32 {
    stash(arg(&ctx, ARG0), arg(&ctx, ARG1) as u32, OpenSyscall::Open);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_creat")]
pub fn sys_enter_creat(ctx: TracePointContext) -> u32 {
    stash(
        arg(&ctx, ARG0),
        O_CREAT | O_WRONLY | O_TRUNC,
        OpenSyscall::Creat,
    );
    0
}

/// Shared by the four exit tracepoints.
#[inline(always)]
fn exit_open(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if crate::bind::is_binder(pid_tgid) {
        crate::bind::record(pid_tgid, current_task(), arg(ctx, RET) as i64);
        return;
    }
    // SAFETY: copied out before removal.
    let Some(s) = (unsafe { OPEN_STASH.get(pid_tgid) }).copied() else {
        return;
    };
    let _ = OPEN_STASH.remove(pid_tgid);
    if s.lsm_sent != 0 {
        return;
    }
    let tgid = (pid_tgid >> 32) as u32;
    let Some(entry) = current_session(tgid) else {
        return;
    };
    let ret = arg(ctx, RET) as i64;
    let file = if ret >= 0 {
        fd_file(current_task(), ret as u32)
    } else {
        None
    };
    // The same allowed open again, within its window: counted, nothing else to do.
    let key = file.and_then(|f| repeats::Key::of(f, s.flags, s.syscall));
    if let Some(k) = &key
        && repeats::counted(tgid, k, &entry)
    {
        return;
    }
    let Some(ev) = OPEN_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch value, exclusively ours while this program runs.
    let ev = unsafe { &mut *ev };
    fill_header(&mut ev.header, EventKind::Open, entry.session_id);
    ev.syscall = s.syscall;
    ev.flags = s.flags;
    ev.ret = ret;
    ev.dev = key.map_or(0, |k| k.dev());
    ev._pad = 0;
    ev.ino = key.map_or(0, |k| k.ino());
    if ret >= 0 {
        resolve_embedded(file, off!(file_f_path), &mut ev.path);
        if s.flags & O_PATH == 0 {
            crate::pathrules::enforce(
                file.unwrap_or(core::ptr::null()),
                &ev.path,
                &entry,
                CATEGORY_FILE,
                &mut ev.verdict,
            );
        } else {
            // An O_PATH descriptor gives no access to the content (the kernel skips the
            // LSM open hook for it too); agents use them to resolve paths. Reopening it
            // through /proc/self/fd is a real open, judged like any other.
            ev.verdict = Default::default();
        }
    } else {
        raw_user(s.filename as *const u8, &mut ev.path);
        ev.verdict = Default::default();
    }
    send_open(ev);
    if ev.verdict.denied == 0
        && let Some(k) = &key
    {
        repeats::remember(tgid, k, &entry, &ev.header);
    }
}

/// Sends an open event without the unused tail of its path buffer.
#[inline(always)]
pub fn send_open(ev: &OpenEvent) {
    let mut path_len = ev.path.len as usize;
    if path_len > PATH_MAX {
        path_len = PATH_MAX;
    }
    let len = OpenEvent::FIXED_LEN + path_len;
    // SAFETY: `len <= size_of::<OpenEvent>()`.
    let bytes = unsafe { core::slice::from_raw_parts((ev as *const OpenEvent).cast::<u8>(), len) };
    send(bytes);
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn sys_exit_openat(ctx: TracePointContext) -> u32 {
    exit_open(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat2")]
pub fn sys_exit_openat2(ctx: TracePointContext) -> u32 {
    exit_open(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_open")]
pub fn sys_exit_open(ctx: TracePointContext) -> u32 {
    exit_open(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_creat")]
pub fn sys_exit_creat(ctx: TracePointContext) -> u32 {
    exit_open(&ctx);
    0
}
