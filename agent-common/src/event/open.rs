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
    /// On success the path of the opened `struct file`; on failure the raw argument.
    pub path: KPath,
}
crate::assert_size!(OpenEvent, 72 + 16 + 8 + 8 + 4096);
// SAFETY: repr(C), integers and byte arrays only.
unsafe impl super::Plain for OpenEvent {}

impl OpenEvent {
    /// Bytes of the record that precede the path bytes.
    pub const FIXED_LEN: usize = core::mem::size_of::<Self>() - super::PATH_MAX;
}
