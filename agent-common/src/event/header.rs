/// Length of the kernel's `task->comm`.
pub const COMM_LEN: usize = 16;

/// Every kind of event, kernel and daemon: one enum gives each its stable number (the
/// ring buffer's wire format for kernel kinds: never renumber) and its name (events,
/// the audit store, OCSF, the CLI).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
    /// A syscall a profile's `syscalls:` section (or the daemon's self-protection)
    /// names, refused by seccomp, or met at entry by the signal layer or recorded.
    SyscallDecision = 8,
    /// A process outside every session executed what a profile's `match:` selector
    /// names, and the kernel started a session for it. The daemon records it as the
    /// session's `SessionStart`.
    Enrolment = 9,
    /// A cgroup was created while selectors name container labels (the daemon looks
    /// up its container). Not an event of its own: it becomes container context.
    CgroupCreated = 10,
    /// Repeats of an allowed open the kernel counted instead of sending
    /// ([`super::OpenRepeatEvent`]). Not an event of its own: it becomes an `open` event
    /// that says how many opens it stands for.
    OpenRepeats = 11,
    /// Raised by the daemon, never sent by the kernel: a session was enrolled.
    SessionStart = 64,
    /// Raised by the daemon: a session's last process exited.
    SessionEnd = 65,
    /// Raised by the daemon: a kernel or daemon loss counter grew.
    Loss = 66,
    /// Reported by the agent through its hook: a prompt it was given (its turn).
    Prompt = 67,
    /// Reported by the agent through its hook: a tool call it is about to make, with
    /// the daemon's decision on it where a `tools:` rule matched.
    ToolCall = 68,
    /// Reported by the agent through its hook: a tool call finished.
    ToolResult = 69,
    /// Raised by the daemon: a held operation (`on_violation: ask`) was answered, by a
    /// person or by its timeout.
    Approval = 70,
    /// Raised by the daemon: a process that looks like an agent (a known agent's
    /// program or command line, an MCP server) runs outside every session.
    UnmanagedAgent = 71,
    /// Raised by the daemon's out-of-band analyser: a session did something its
    /// agent's baseline does not contain (`vocab::Finding`).
    Drift = 72,
}

impl EventKind {
    /// Every kind, kernel kinds first.
    pub const ALL: &'static [Self] = &[
        Self::Exec,
        Self::Exit,
        Self::Fork,
        Self::Open,
        Self::Connect,
        Self::SessionMapFull,
        Self::NetDecision,
        Self::SyscallDecision,
        Self::Enrolment,
        Self::CgroupCreated,
        Self::OpenRepeats,
        Self::SessionStart,
        Self::SessionEnd,
        Self::Loss,
        Self::Prompt,
        Self::ToolCall,
        Self::ToolResult,
        Self::Approval,
        Self::UnmanagedAgent,
        Self::Drift,
    ];

    /// A kind the kernel sends (the daemon's own kinds never come from the ring).
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Exec,
            2 => Self::Exit,
            3 => Self::Fork,
            4 => Self::Open,
            5 => Self::Connect,
            6 => Self::SessionMapFull,
            7 => Self::NetDecision,
            8 => Self::SyscallDecision,
            9 => Self::Enrolment,
            10 => Self::CgroupCreated,
            11 => Self::OpenRepeats,
            _ => return None,
        })
    }

    /// The name used in events, records and the CLI.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Exit => "exit",
            Self::Fork => "fork",
            Self::Open => "open",
            Self::Connect => "connect",
            Self::SessionMapFull => "session_map_full",
            Self::NetDecision => "net_decision",
            Self::SyscallDecision => "syscall_decision",
            Self::Enrolment => "enrolment",
            Self::CgroupCreated => "cgroup_created",
            Self::OpenRepeats => "open_repeats",
            Self::SessionStart => "session_start",
            Self::SessionEnd => "session_end",
            Self::Loss => "loss",
            Self::Prompt => "prompt",
            Self::ToolCall => "tool_call",
            Self::ToolResult => "tool_result",
            Self::Approval => "approval",
            Self::UnmanagedAgent => "unmanaged_agent",
            Self::Drift => "drift",
        }
    }

    /// The kind of a name (as `as_str` spells it).
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.as_str() == s)
    }
}

impl core::fmt::Display for EventKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // `pad`, not `write_str`: widths and alignment (`{:<13}`) apply.
        f.pad(self.as_str())
    }
}

#[cfg(feature = "user")]
impl serde::Serialize for EventKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(feature = "user")]
impl<'de> serde::Deserialize<'de> for EventKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::from_name(&s)
            .ok_or_else(|| serde::de::Error::custom(format_args!("unknown event kind `{s}`")))
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
