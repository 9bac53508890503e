//! Syscall rules (a profile's `syscalls:` section and the daemon's self-protection).
//!
//! `run` sessions carry a seccomp filter that refuses the calls before they run; seccomp
//! skips the `sys_enter` tracepoint of a call it refuses but not `sys_exit`, which sees
//! the call return `-EPERM`: [`sys_exit`] records those refusals (and carries out
//! `on_violation: kill` after them). Sessions without the filter (`attach`) are met at
//! entry by [`sys_enter`]: SIGKILL (the call itself still runs: the process dies before it
//! returns to user mode) or a record.
//!
//! Both are BTF tracepoints on the raw `sys_enter`/`sys_exit`, which fire for every
//! syscall on the host: a process outside every session pays one `SESSIONS` lookup at
//! entry, and none at exit unless the call failed with `EPERM`.

use agent_common::{
    event::{EventKind, SyscallDecisionEvent},
    policy::{
        PROTECTED_PIDS_MAX, SYSCALL_COND_ANY_BIT, SYSCALL_COND_PROTECTED_PID, SYSCALL_ENTRY_NONE,
        SYSCALL_RULES_MAX, SyscallKey, SyscallRule,
    },
    session::{SESSION_FLAG_SECCOMP, SessionEntry},
    vocab::{Action, Layer, OnViolation},
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{btf_tracepoint, map},
    maps::HashMap,
    programs::BtfTracePointContext,
};

use crate::{
    emit::{header, send},
    kernel,
    maps::current_session,
};

const EPERM: i64 = 1;

/// `(profile id, syscall nr)` → how the profile meets the call.
#[map]
static SYSCALL_RULES: HashMap<SyscallKey, SyscallRule> =
    HashMap::with_max_entries(SYSCALL_RULES_MAX, 0);

/// Pids a session must not aim at (the daemon's), as the syscalls' `int` argument.
#[map]
static PROTECTED_PIDS: HashMap<i32, u8> = HashMap::with_max_entries(PROTECTED_PIDS_MAX, 0);

/// Offsets in x86_64's `struct pt_regs` (an ABI: `arch/x86/include/asm/ptrace.h`) of the
/// syscall arguments (di, si, dx, r10, r8, r9) and of `orig_ax`, the syscall number.
const ARG0: usize = 112;
const ARG1: usize = 104;
const ARG2: usize = 96;
const ARG3: usize = 56;
const ARG4: usize = 72;
const ARG5: usize = 64;
const ORIG_AX: usize = 120;

#[inline(always)]
fn reg(regs: *const u8, off: usize) -> u64 {
    // SAFETY: the helper faults safely; `regs` is the tracepoint's own argument.
    unsafe { bpf_probe_read_kernel(regs.add(off).cast::<u64>()) }.unwrap_or(0)
}

/// The argument a conditional rule judges, and whether the rule matches this call
/// (`u64::MAX` as the argument of a rule on every call).
#[inline(always)]
fn matches(rule: &SyscallRule, regs: *const u8) -> Option<u64> {
    if rule.cond == SYSCALL_COND_PROTECTED_PID || rule.cond == SYSCALL_COND_ANY_BIT {
        // A constant offset per argument: the verifier refuses a variable offset from
        // the tracepoint's trusted `pt_regs` pointer.
        let arg = match rule.arg {
            0 => reg(regs, ARG0),
            1 => reg(regs, ARG1),
            2 => reg(regs, ARG2),
            3 => reg(regs, ARG3),
            4 => reg(regs, ARG4),
            _ => reg(regs, ARG5),
        };
        let hit = if rule.cond == SYSCALL_COND_ANY_BIT {
            arg & rule.mask != 0
        } else {
            // SAFETY: presence check only.
            unsafe { PROTECTED_PIDS.get(arg as u32 as i32) }.is_some()
        };
        return hit.then_some(arg);
    }
    Some(u64::MAX)
}

#[inline(always)]
pub(crate) fn rule_of(entry: &SessionEntry, nr: u32) -> Option<SyscallRule> {
    let key = SyscallKey {
        profile_id: entry.profile_id,
        nr,
    };
    // SAFETY: copied out before the map can change it.
    unsafe { SYSCALL_RULES.get(key).copied() }
}

/// The action on a call refused before it ran (seccomp, BPF-LSM): `on_violation: kill`
/// adds SIGKILL.
#[inline(always)]
pub(crate) fn refused(rule: &SyscallRule) -> Action {
    if rule.seccomp_kill != 0 {
        crate::pathrules::kill_current();
        Action::Killed
    } else {
        Action::Blocked
    }
}

/// Sends the decision; one taken by seccomp was seen at the call's exit, the others at
/// its entry.
#[inline(always)]
pub(crate) fn record(
    entry: &SessionEntry,
    nr: u32,
    rule_id: u32,
    arg: u64,
    ret: i64,
    action: Action,
    layer: Layer,
) {
    send(&SyscallDecisionEvent {
        header: header(EventKind::SyscallDecision, entry.session_id),
        nr,
        rule_id,
        ret,
        arg,
        denied: 1,
        action: action as u8,
        enforced_by: layer as u8,
        at_entry: u8::from(layer != Layer::Seccomp),
        _pad: 0,
    });
}

/// `sys_enter(struct pt_regs *regs, long id)`: sessions without the seccomp filter (or a
/// rule it does not carry: `alert`, monitor mode).
#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter(ctx: BtfTracePointContext) -> i32 {
    let Some(entry) = current_session((bpf_get_current_pid_tgid() >> 32) as u32) else {
        return 0;
    };
    if !kernel::ready() {
        return 0;
    }
    let nr: i64 = ctx.arg(1);
    let Some(rule) = rule_of(&entry, nr as u32) else {
        return 0;
    };
    if entry.flags & SESSION_FLAG_SECCOMP != 0
        && rule.seccomp != 0
        && rule.cond != SYSCALL_COND_PROTECTED_PID
    {
        // The filter refused it already (this tracepoint then does not fire) or let it
        // through because its condition did not hold. A call aimed at a protected pid
        // that the filter let through is judged here: the filter holds the pids of the
        // daemon the session enrolled with, and a successor's (or a later thread's) are
        // in `PROTECTED_PIDS` only.
        return 0;
    }
    if rule.entry == SYSCALL_ENTRY_NONE || crate::selfprotect::refused_by_lsm(nr as u32) {
        // The BPF-LSM hooks refuse these calls inside them (`EPERM`): a kill here, before
        // the call, would end a process whose call is refused anyway.
        return 0;
    }
    let regs: *const u8 = ctx.arg(0);
    let Some(arg) = matches(&rule, regs) else {
        return 0;
    };
    let action = if rule.entry == OnViolation::Kill as u8 {
        crate::pathrules::kill_current();
        (Action::Killed, Layer::Signal)
    } else {
        (Action::Alerted, Layer::None)
    };
    record(&entry, nr as u32, rule.rule_id, arg, 0, action.0, action.1);
    0
}

/// `sys_exit(struct pt_regs *regs, long ret)`: the seccomp filter's refusals in `run`
/// sessions, seen as the refused call returns `-EPERM`.
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit(ctx: BtfTracePointContext) -> i32 {
    // The result first: every other call, in or out of a session, costs no lookup.
    let ret: i64 = ctx.arg(1);
    if ret != -EPERM {
        return 0;
    }
    let Some(entry) = current_session((bpf_get_current_pid_tgid() >> 32) as u32) else {
        return 0;
    };
    if entry.flags & SESSION_FLAG_SECCOMP == 0 || !kernel::ready() {
        return 0;
    }
    let regs: *const u8 = ctx.arg(0);
    let nr = reg(regs, ORIG_AX) as u32;
    let Some(rule) = rule_of(&entry, nr) else {
        return 0;
    };
    if rule.seccomp == 0 {
        return 0;
    }
    let Some(arg) = matches(&rule, regs) else {
        return 0;
    };
    record(
        &entry,
        nr,
        rule.rule_id,
        arg,
        ret,
        refused(&rule),
        Layer::Seccomp,
    );
    0
}
