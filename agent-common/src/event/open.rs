use super::{EventHeader, KPath};

/// Which syscall opened the file.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenSyscall {
    Openat = 1,
    Openat2 = 2,
    Open = 3,
    Creat = 4,
    /// An open the kernel made for the process outside these syscalls (the executable
    /// of an `execve`, io_uring), seen only by the LSM hook.
    Other = 5,
    /// A read from a descriptor the process already held (however it came by it), refused
    /// by the fanotify layer: not an open, but the same access to the file's content.
    Read = 6,
}

impl OpenSyscall {
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Openat,
            2 => Self::Openat2,
            3 => Self::Open,
            4 => Self::Creat,
            5 => Self::Other,
            6 => Self::Read,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Openat => "openat",
            Self::Openat2 => "openat2",
            Self::Open => "open",
            Self::Creat => "creat",
            Self::Other => "other",
            Self::Read => "read",
        }
    }
}

/// A process of a session opened (or failed to open) a file.
///
/// Sent only up to `path.len` bytes of the path.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenEvent {
    pub header: EventHeader,
    /// An [`OpenSyscall`] number.
    pub syscall: u32,
    /// Open flags as passed (`O_*`).
    pub flags: u32,
    /// File descriptor, or `-errno`.
    pub ret: i64,
    /// The kernel's decision on this open.
    pub verdict: super::KernelVerdict,
    /// On success the opened inode as the kernel numbers it (`s_dev`, `i_ino`); 0 on
    /// failure. Repeats of this open are reported by it ([`OpenRepeatEvent`]).
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
    /// On success the path of the opened `struct file`; on failure the raw argument.
    pub path: KPath,
}
crate::assert_size!(OpenEvent, 72 + 16 + 8 + 16 + 8 + 4096);
// SAFETY: repr(C), integers and byte arrays only.
unsafe impl super::Plain for OpenEvent {}

impl OpenEvent {
    /// Bytes of the record that precede the path bytes.
    pub const FIXED_LEN: usize = core::mem::size_of::<Self>() - super::PATH_MAX;
}

/// How often a process opened one file again, the same way (syscall, flags), with the
/// same outcome (allowed), without a record of its own: the kernel counts such repeats
/// instead of sending each (`agent-ebpf`'s `repeats`), and reports the count when its
/// timer runs, when the process exits, and when the file's slot is taken by another.
/// The first open of the file, and one every second while the repeats go on, are sent
/// as an [`OpenEvent`]; denied opens are never counted, always sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenRepeatEvent {
    /// The process; from the timer, as its first counted open's record had it.
    pub header: EventHeader,
    /// An [`OpenSyscall`] number.
    pub syscall: u32,
    /// Open flags as passed (`O_*`).
    pub flags: u32,
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
    /// Opens counted since the previous report of this file by this process.
    pub count: u64,
    /// `CLOCK_BOOTTIME` of the first and the last of them.
    pub first_ns: u64,
    pub last_ns: u64,
}
crate::assert_size!(OpenRepeatEvent, 72 + 48);
// SAFETY: repr(C), integers and byte arrays only.
unsafe impl super::Plain for OpenRepeatEvent {}
