/// Length of the kernel's `task->comm`.
pub const COMM_LEN: usize = 16;

/// Stable event kind numbers (never renumber: they are the wire format of the ring buffer).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Exec = 1,
    Exit = 2,
    Fork = 3,
    Open = 4,
    Connect = 5,
    /// A child of a session process could not be tracked because `SESSIONS` is full.
    SessionMapFull = 6,
    /// A network decision of the cgroup layer.
    NetDecision = 7,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Exec,
            2 => Self::Exit,
            3 => Self::Fork,
            4 => Self::Open,
            5 => Self::Connect,
            6 => Self::SessionMapFull,
            7 => Self::NetDecision,
            _ => return None,
        })
    }
}

/// Common prefix of every event: who did it, in which session, when.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// An [`EventKind`] number.
    pub kind: u32,
    pub _reserved: u32,
    /// `CLOCK_BOOTTIME` in nanoseconds (`bpf_ktime_get_boot_ns`); the daemon converts it
    /// to wall-clock time.
    pub ktime_ns: u64,
    pub session_id: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}
crate::assert_size!(EventHeader, 72);
// SAFETY: repr(C), integers and byte arrays only.
unsafe impl super::Plain for EventHeader {}
