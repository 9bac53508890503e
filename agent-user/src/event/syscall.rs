//! `syscall_decision`: a syscall a profile's `syscalls:` section (or the daemon's
//! self-protection) names, refused by the seccomp filter of a `run` session (seen at its
//! exit with `-EPERM`), or met at its entry by the signal layer or recorded.

use agent_common::event::SyscallDecisionEvent;
use serde::{Deserialize, Serialize};

/// A syscall judged by a profile's syscall rules.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyscallInfo {
    /// The syscall's name (x86_64), `syscall_N` for a number this build does not name.
    pub name: String,
    pub nr: u32,
    /// `entry` (decided before the call ran) or `exit` (the seccomp refusal, seen as the
    /// call returned).
    pub at: String,
    /// The call's result at exit (`-1` for `EPERM`); 0 at entry.
    pub result: i64,
    /// The argument the rule judged (a pid, clone flags); absent for rules on every call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arg: Option<i64>,
}

pub(super) fn syscall_info(e: &SyscallDecisionEvent) -> SyscallInfo {
    SyscallInfo {
        name: crate::policy::syscalls::name_of(e.nr),
        nr: e.nr,
        at: if e.at_entry != 0 { "entry" } else { "exit" }.to_owned(),
        result: e.ret,
        // Pids are ints: shown as the syscall read them (`-1`, `-pgid`).
        arg: (e.arg != u64::MAX).then_some(i64::from(e.arg as u32 as i32)),
    }
}
