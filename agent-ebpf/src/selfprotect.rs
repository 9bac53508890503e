//! The daemon's self-protection in the BPF-LSM layer, where the kernel runs it: a signal
//! to the daemon (`task_kill`: kill, tkill, tgkill, rt_sigqueueinfo, pidfd_send_signal,
//! io_uring alike), an access to it as a tracer (`ptrace_access_check`: ptrace,
//! process_vm_readv/writev, `/proc/<pid>/mem`), any `bpf()` or `perf_event_open` call and
//! any kernel module load (`init_module`, `finit_module`) are refused inside the call
//! (`EPERM`) for every session, attached ones included, which the seccomp filter of
//! `run` cannot reach. The rule is the session profile's for that syscall (the daemon's
//! own self-protection rule unless the profile names the call), recorded with layer
//! `lsm`; a profile whose rule says `kill` also gets SIGKILL.
//!
//! Where these hooks run, the syscall-entry program leaves the calls they judge to them
//! ([`refused_by_lsm`]): its SIGKILL would come before a call that is refused anyway.

use agent_common::{config::DAEMON_FLAG_LSM_SELF_PROTECTION, session::SessionEntry, vocab::Layer};
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::lsm, programs::LsmContext};

use crate::{
    kernel::{self, off, read},
    maps::{current_session, daemon},
    syscalls::{record, refused, rule_of},
};

const EPERM: i32 = 1;

// x86_64 syscall numbers the hooks record decisions under (the hook does not know
// which of the calls that reach it was made: `kill` stands for every signal, `ptrace`
// for every access as a tracer).
const NR_KILL: u32 = 62;
const NR_PTRACE: u32 = 101;
const NR_BPF: u32 = 321;
const NR_PERF_EVENT_OPEN: u32 = 298;
const NR_INIT_MODULE: u32 = 175;
const NR_FINIT_MODULE: u32 = 313;
/// Calls the hooks judge, which the syscall-entry program leaves to them.
const TAKEN: [u32; 12] = [
    NR_KILL,
    200, // tkill
    234, // tgkill
    129, // rt_sigqueueinfo
    297, // rt_tgsigqueueinfo
    NR_PTRACE,
    310, // process_vm_readv
    311, // process_vm_writev
    NR_BPF,
    NR_PERF_EVENT_OPEN,
    NR_INIT_MODULE,
    NR_FINIT_MODULE,
];

/// `enum kernel_read_file_id` / `kernel_load_data_id`: a kernel module's image.
const READING_MODULE: i32 = 2;

/// True when the hooks are attached and judge syscall `nr`.
#[inline(always)]
pub fn refused_by_lsm(nr: u32) -> bool {
    daemon().is_some_and(|d| d.flags & DAEMON_FLAG_LSM_SELF_PROTECTION != 0) && TAKEN.contains(&nr)
}

/// The session of the current process, when the hooks have anything to judge.
#[inline(always)]
fn session() -> Option<SessionEntry> {
    if !kernel::ready() {
        return None;
    }
    current_session((bpf_get_current_pid_tgid() >> 32) as u32)
}

/// Refuses (and records) the call `nr` of a session when `target` is one of the daemon's
/// pids, or when `target` is `None` (a call refused whatever it aims at).
#[inline(always)]
fn refuse(entry: &SessionEntry, nr: u32, target: Option<u32>) -> i32 {
    // The target's process against the daemon's (all its threads share it), not against
    // the pid list the seccomp filter and the entry program use: that list holds thread
    // ids of enrolment time, which a later process may reuse.
    if let Some(t) = target
        && !daemon().is_some_and(|d| d.alive != 0 && d.tgid == t)
    {
        return 0;
    }
    let Some(rule) = rule_of(entry, nr) else {
        return 0;
    };
    let action = refused(&rule);
    let arg = target.map_or(u64::MAX, u64::from);
    record(
        entry,
        nr,
        rule.rule_id,
        arg,
        -(EPERM as i64),
        action,
        Layer::Lsm,
    );
    -EPERM
}

/// `task_kill(struct task_struct *p, struct kernel_siginfo *info, int sig, const struct
/// cred *cred)`, the previous LSM's verdict last. Signal 0 only asks whether the process
/// exists: let through.
#[lsm(hook = "task_kill")]
pub fn task_kill(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    let sig: i32 = ctx.arg(2);
    if sig == 0 {
        return 0;
    }
    let Some(entry) = session() else {
        return 0;
    };
    let target: *const u8 = ctx.arg(0);
    let Some(tgid) = read::<u32>(target, off!(task_tgid)) else {
        return 0;
    };
    refuse(&entry, NR_KILL, Some(tgid))
}

/// `ptrace_access_check(struct task_struct *child, unsigned int mode)`: every access to
/// another process as its tracer (attach, `/proc/<pid>/mem`, process_vm_*, and the
/// `/proc` files that need it: `environ`, `fd/`, `exe`).
#[lsm(hook = "ptrace_access_check")]
pub fn ptrace_access_check(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let Some(entry) = session() else {
        return 0;
    };
    let child: *const u8 = ctx.arg(0);
    let Some(tgid) = read::<u32>(child, off!(task_tgid)) else {
        return 0;
    };
    refuse(&entry, NR_PTRACE, Some(tgid))
}

/// `perf_event_open([struct perf_event_attr *attr,] int type)`: no session opens a perf
/// event (the daemon's self-protection, or the profile's rule). The arguments differ
/// between kernels (6.1 passes the attribute, 6.12 only the type), and so does the
/// previous verdict's position: not read, like `bpf`'s.
#[lsm(hook = "perf_event_open")]
pub fn perf_event_open(_ctx: LsmContext) -> i32 {
    let Some(entry) = session() else {
        return 0;
    };
    refuse(&entry, NR_PERF_EVENT_OPEN, None)
}

/// `kernel_load_data(enum kernel_load_data_id id, bool contents)`: `init_module` hands
/// the kernel a module image from memory.
#[lsm(hook = "kernel_load_data")]
pub fn kernel_load_data(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let id: i32 = ctx.arg(0);
    if id != READING_MODULE {
        return 0;
    }
    let Some(entry) = session() else {
        return 0;
    };
    refuse(&entry, NR_INIT_MODULE, None)
}

/// `kernel_read_file(struct file *file, enum kernel_read_file_id id, bool contents)`:
/// `finit_module` has the kernel read a module from a file.
#[lsm(hook = "kernel_read_file")]
pub fn kernel_read_file(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let id: i32 = ctx.arg(1);
    if id != READING_MODULE {
        return 0;
    }
    let Some(entry) = session() else {
        return 0;
    };
    refuse(&entry, NR_FINIT_MODULE, None)
}

/// `bpf(int cmd, union bpf_attr *attr, unsigned int size[, bool kernel])`: no session
/// calls `bpf()` (the daemon's own self-protection, or the profile's rule). The previous
/// verdict's position differs between kernels (6.14 added an argument): not read; a
/// refusal here is a refusal whatever another LSM said.
#[lsm(hook = "bpf")]
pub fn bpf(_ctx: LsmContext) -> i32 {
    let Some(entry) = session() else {
        return 0;
    };
    refuse(&entry, NR_BPF, None)
}
