//! Session membership: inherited at fork, removed when the whole process exits.

use agent_common::{
    event::{EventKind, ExitEvent, ForkEvent},
    stats::Stat,
};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::btf_tracepoint, programs::BtfTracePointContext,
};

use crate::{
    emit::{current_task, header, send},
    kernel::{self, off, read, read_ptr},
    maps::{DAEMON, SESSIONS, count, current_session},
    repeats,
};

/// The daemon's main thread exiting: its process is going (its threads are killed with
/// it, a daemon never ends its main thread alone), so its userspace layers are. This
/// runs before the exiting task closes its files, so the programs know before the
/// fanotify group is gone (whose pending permission events the kernel then allows).
#[inline(always)]
fn daemon_exit(tgid: u32, pid: u32) {
    if tgid != pid {
        return;
    }
    if let Some(d) = DAEMON.get_ptr_mut(0) {
        // SAFETY: the one entry of an array map; a plain store of one field.
        unsafe {
            if (*d).tgid == tgid && (*d).alive != 0 {
                (*d).alive = 0;
            }
        }
    }
}

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`; runs in
/// the parent before the child is first scheduled, so the child cannot act untracked.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    if !kernel::ready() {
        return 0;
    }
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(entry) = current_session(parent_tgid) else {
        return 0;
    };
    let child: *const u8 = ctx.arg(1);
    let (Some(child_pid), Some(child_tgid)) = (
        read::<u32>(child, off!(task_pid)),
        read::<u32>(child, off!(task_tgid)),
    ) else {
        return 0;
    };
    if child_pid != child_tgid {
        // A new thread of the same process: the tgid is already tracked.
        return 0;
    }
    let kind = match SESSIONS.insert(child_tgid, entry, 0) {
        Ok(()) => EventKind::Fork,
        Err(_) => {
            count(Stat::SessionMapFull);
            EventKind::SessionMapFull
        }
    };
    send(&ForkEvent {
        header: header(kind, entry.session_id),
        child_tgid,
        _pad: 0,
    });
    0
}

/// `sched_process_exit(struct task_struct *p, ...)`: when the last thread of a session
/// process exits, report its status and drop it from the session.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(_ctx: BtfTracePointContext) -> i32 {
    if !kernel::ready() {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    daemon_exit(tgid, pid_tgid as u32);
    let task = current_task();
    // `signal->live` is decremented before this tracepoint; zero means the group is dead.
    let live = || {
        read_ptr(task, off!(task_signal))
            .and_then(|signal| read::<i32>(signal, off!(signal_live)))
            .unwrap_or(0)
    };
    let Some(entry) = current_session(tgid) else {
        // Out of its session while it ran (or under a daemon no longer acting): its
        // table of repeated opens, if it has one, goes with it all the same.
        if repeats::has_table(tgid) && live() == 0 {
            repeats::process_gone(tgid);
        }
        return 0;
    };
    if live() != 0 {
        return 0;
    }
    // Its counted opens come before its exit.
    repeats::process_gone(tgid);
    let exit_code = read::<u32>(task, off!(task_exit_code)).unwrap_or(0);
    send(&ExitEvent {
        header: header(EventKind::Exit, entry.session_id),
        exit_code,
        _pad: 0,
    });
    let _ = SESSIONS.remove(tgid);
    0
}
