//! Program execution by session processes.

use agent_common::{
    event::{ARGV_MAX, ARGV_TRUNCATED, EventKind, ExecEvent},
    policy::CATEGORY_EXEC,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_probe_read_user},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use crate::{
    emit::{current_task, fill_header, send},
    kernel::{self, off, read, read_ptr},
    maps::{EXEC_SCRATCH, current_session},
    path::resolve_embedded,
};

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`:
/// the new image is in place, so `bprm->file` is the executable the kernel opened and
/// `mm->arg_start..arg_end` holds the new argument vector.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    if !kernel::ready() {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let session = current_session(tgid);
    // A process outside every session is looked at only while selectors are loaded.
    let selectors = if session.is_none() {
        match crate::selector::active() {
            Some(cfg) => Some(cfg),
            None => return 0,
        }
    } else {
        None
    };
    let Some(ev) = EXEC_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch value, exclusively ours while this program runs.
    let ev = unsafe { &mut *ev };
    let bprm: *const u8 = ctx.arg(2);
    let task = current_task();
    let file = read_ptr(bprm, off!(bprm_file));
    resolve_embedded(file, off!(file_f_path), &mut ev.exe);
    read_argv(task, ev);
    let entry = match (session, selectors) {
        (Some(entry), _) => entry,
        (None, Some(cfg)) => match crate::selector::enrol(ev, cfg) {
            Some(entry) => entry,
            None => return 0,
        },
        (None, None) => return 0,
    };
    fill_header(&mut ev.header, EventKind::Exec, entry.session_id);
    crate::pathrules::enforce(
        file.unwrap_or(core::ptr::null()),
        &ev.exe,
        &entry,
        CATEGORY_EXEC,
        &mut ev.verdict,
    );
    if ev.verdict.denied == 0 {
        crate::fileless::enforce(file.unwrap_or(core::ptr::null()), &entry, &mut ev.verdict);
    }
    resolve_embedded(read_ptr(task, off!(task_fs)), off!(fs_pwd), &mut ev.cwd);
    send(ev);
    0
}

/// `mm->arg_start..arg_end`: the new argument vector, NUL-separated, truncated at
/// [`ARGV_MAX`].
#[inline(always)]
fn read_argv(task: *const u8, ev: &mut ExecEvent) {
    ev.argv_len = 0;
    ev.argv_flags = 0;
    if let Some(mm) = read_ptr(task, off!(task_mm)) {
        let start = read::<u64>(mm, off!(mm_arg_start)).unwrap_or(0);
        let end = read::<u64>(mm, off!(mm_arg_end)).unwrap_or(0);
        let mut len = end.saturating_sub(start) as usize;
        if len > ARGV_MAX - 1 {
            len = ARGV_MAX - 1;
            ev.argv_flags = ARGV_TRUNCATED;
        }
        let len = len & (ARGV_MAX - 1);
        // SAFETY: `len < ARGV_MAX`, the destination holds ARGV_MAX bytes.
        let ret = unsafe {
            bpf_probe_read_user(ev.argv.as_mut_ptr().cast(), len as u32, start as *const _)
        };
        if ret == 0 {
            ev.argv_len = len as u32;
        }
    }
}
