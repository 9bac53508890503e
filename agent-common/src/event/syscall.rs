use super::EventHeader;

/// A syscall a profile (or the daemon's self-protection) names, met in a session: at its
/// exit, refused by the seccomp filter of a `run` session (`ret` is `-EPERM`), or at its
/// entry (signal layer or recorded only; `ret` is 0 there, the call has not run yet).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallDecisionEvent {
    pub header: EventHeader,
    /// The syscall number (x86_64).
    pub nr: u32,
    /// The rule that matched.
    pub rule_id: u32,
    /// The syscall's result at exit; 0 when decided at entry.
    pub ret: i64,
    /// The argument the rule judged (a pid, clone flags); `u64::MAX` for rules on every
    /// call.
    pub arg: u64,
    /// 1: the profile denies this call (always, today: only denials are sent).
    pub denied: u8,
    /// [`crate::vocab::Action`] as `u8`.
    pub action: u8,
    /// [`crate::vocab::Layer`] as `u8`.
    pub enforced_by: u8,
    /// 1 when met at syscall entry, 0 at its exit.
    pub at_entry: u8,
    pub _pad: u32,
}
crate::assert_size!(SyscallDecisionEvent, 72 + 32);
// SAFETY: repr(C), integers and byte arrays only.
unsafe impl super::Plain for SyscallDecisionEvent {}
