use super::{EventHeader, KPath};

/// Bytes of the argument vector kept per exec (NUL-separated, as in `/proc/PID/cmdline`).
pub const ARGV_MAX: usize = 2048;
/// `argv_flags`: the argument vector was longer than [`ARGV_MAX`].
pub const ARGV_TRUNCATED: u32 = 1;

/// A process of a session executed a new program (`sched_process_exec`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEvent {
    pub header: EventHeader,
    /// The new executable as the kernel opened it (`bprm->file`), not the argument string.
    pub exe: KPath,
    /// Working directory (`task->fs->pwd`).
    pub cwd: KPath,
    pub argv_len: u32,
    pub argv_flags: u32,
    /// The kernel's decision on this exec.
    pub verdict: super::KernelVerdict,
    pub argv: [u8; ARGV_MAX],
}
crate::assert_size!(ExecEvent, 72 + 2 * (8 + 4096) + 8 + 8 + 2048);
// SAFETY: repr(C), integers and byte arrays only.
unsafe impl super::Plain for ExecEvent {}
