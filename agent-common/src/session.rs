//! The session map: which agent session a process (keyed by tgid) belongs to.

/// Maximum number of processes tracked across all sessions.
pub const MAX_TRACKED_PROCESSES: u32 = 65_536;

/// `SessionEntry::flags`: every `execve` of the session is denied (BPF-LSM
/// `bprm_check_security`). Set for profiles whose exec default is deny with no allow list.
pub const SESSION_FLAG_DENY_EXEC: u32 = 1;

/// `SessionEntry::flags`: the session's processes run under the seccomp filter
/// `agentwarden run` installed before it executed the agent, so the syscall-entry program
/// leaves the calls that filter refuses to it, and the exit program records its refusals.
pub const SESSION_FLAG_SECCOMP: u32 = 2;

/// Value of the `SESSIONS` map, keyed by tgid. Filled at enrolment by the daemon and
/// copied to every child process in the fork tracepoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionEntry {
    pub session_id: u64,
    /// Profile the session runs under (index assigned by the daemon).
    pub profile_id: u32,
    pub flags: u32,
    /// uid of the session's owner (`~` in its profile's path rules is this user's home).
    pub owner_uid: u32,
    pub _pad: u32,
}
crate::assert_size!(SessionEntry, 24);

#[cfg(feature = "user")]
// SAFETY: plain-old-data, no padding.
unsafe impl aya::Pod for SessionEntry {}
