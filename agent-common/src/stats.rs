//! Per-CPU counters kept by the kernel programs (`STATS` per-CPU array), so that nothing
//! is lost silently.

/// Index into the `STATS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// An event could not be reserved in the ring buffer (full): the event is lost.
    RingbufDrops = 0,
    /// A child could not be added to `SESSIONS` (map full): it escapes tracking.
    SessionMapFull = 1,
    /// A syscall entry could not be stashed for its exit (map full): event lost.
    StashFull = 2,
    /// A path was longer than the event buffer or deeper than the walk limit.
    PathTruncated = 3,
    /// Events successfully submitted to the ring buffer.
    EventsSubmitted = 4,
    /// Executions denied by the BPF-LSM layer.
    LsmExecDenied = 5,
    /// File opens denied by the BPF-LSM layer.
    LsmFileDenied = 6,
    /// Processes sent SIGKILL by a `kill` decision.
    Kills = 7,
    /// Events sent while no daemon was alive to read them: kept in the ring buffer for
    /// the next daemon (what did not fit is in `RingbufDrops`), decided by the kernel
    /// alone (a `block` the fanotify layer would have refused was a kill).
    SentWhileAbsent = 8,
    /// Sessions the kernel started for a process a `match:` selector named.
    SelectorEnrolments = 9,
    /// Processes held at their exec in a new cgroup until the daemon looked up its
    /// container (container label selectors).
    SelectorHolds = 10,
    /// Allowed opens counted as repeats instead of sent (reported with their counts).
    OpenRepeats = 11,
    /// A process's table of repeated opens could not be made (map full): its opens are
    /// all sent, none counted.
    RepeatTableFull = 12,
}

/// Number of entries in `STATS`.
pub const STAT_COUNT: u32 = 13;

impl Stat {
    pub const ALL: [Stat; STAT_COUNT as usize] = [
        Stat::RingbufDrops,
        Stat::SessionMapFull,
        Stat::StashFull,
        Stat::PathTruncated,
        Stat::EventsSubmitted,
        Stat::LsmExecDenied,
        Stat::LsmFileDenied,
        Stat::Kills,
        Stat::SentWhileAbsent,
        Stat::SelectorEnrolments,
        Stat::SelectorHolds,
        Stat::OpenRepeats,
        Stat::RepeatTableFull,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Stat::RingbufDrops => "ringbuf_drops",
            Stat::SessionMapFull => "session_map_full",
            Stat::StashFull => "stash_full",
            Stat::PathTruncated => "path_truncated",
            Stat::EventsSubmitted => "events_submitted",
            Stat::LsmExecDenied => "lsm_exec_denied",
            Stat::LsmFileDenied => "lsm_file_denied",
            Stat::Kills => "kills",
            Stat::SentWhileAbsent => "sent_while_daemon_absent",
            Stat::SelectorEnrolments => "selector_enrolments",
            Stat::SelectorHolds => "selector_holds",
            Stat::OpenRepeats => "open_repeats",
            Stat::RepeatTableFull => "repeat_table_full",
        }
    }
}
