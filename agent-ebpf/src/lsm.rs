//! BPF-LSM hooks: decisions taken before the operation, returning `-EPERM`. Loaded only
//! where the kernel runs the `bpf` LSM (`lsm=...,bpf`); the daemon's program table says
//! so when they are left out.

use agent_common::{session::SESSION_FLAG_DENY_EXEC, stats::Stat};
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::lsm, programs::LsmContext};

use crate::maps::{count, current_session};

const EPERM: i32 = 1;

/// `bprm_check_security(struct linux_binprm *bprm)`, with the previous LSM's verdict as
/// the last argument.
#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        // Another LSM already denied: keep its verdict.
        return previous;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    match current_session(tgid) {
        Some(e) if e.flags & SESSION_FLAG_DENY_EXEC != 0 => {
            count(Stat::LsmExecDenied);
            -EPERM
        }
        _ => 0,
    }
}
