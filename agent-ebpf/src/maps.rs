//! Maps shared by all programs.
//! The maps the daemon takes by name are spelled as in `agent_common::maps` (checked
//! against the built object by a unit test of the daemon).

use agent_common::{
    config::DaemonState,
    event::{ExecEvent, OpenEvent},
    session::{MAX_TRACKED_PROCESSES, SessionEntry},
    stats::{STAT_COUNT, Stat},
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};

/// tgid → session. Filled by the daemon at enrolment, inherited at fork, removed at exit.
#[map]
pub static SESSIONS: HashMap<u32, SessionEntry> =
    HashMap::with_max_entries(MAX_TRACKED_PROCESSES, 0);

/// Events to the daemon.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

/// Per-CPU counters, indexed by [`Stat`].
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// Per-CPU scratch space: events are far larger than the 512-byte BPF stack.
#[map]
pub static EXEC_SCRATCH: PerCpuArray<ExecEvent> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static OPEN_SCRATCH: PerCpuArray<OpenEvent> = PerCpuArray::with_max_entries(1, 0);

/// Bumps a per-CPU counter. Per-CPU slots need no atomics: a program runs with migration
/// disabled and the daemon sums the CPUs.
#[inline(always)]
pub fn count(stat: Stat) {
    if let Some(v) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: pointer into this CPU's slot of a map value.
        unsafe { *v += 1 };
    }
}

/// Which daemon the programs answer to, and which load's programs act (see
/// [`DaemonState`]). Pinned with the other maps, written only by the daemon (and
/// `alive` cleared by [`crate::session::sched_process_exit`]).
#[map]
pub static DAEMON: Array<DaemonState> = Array::with_max_entries(1, 0);

/// The generation of this load's programs, set by the daemon before load.
#[unsafe(no_mangle)]
static GENERATION: u64 = 0;

/// The daemon's entry.
#[inline(always)]
pub fn daemon() -> Option<&'static DaemonState> {
    DAEMON.get(0)
}

/// True while the daemon the programs answer to runs (its userspace layers with it).
#[inline(always)]
pub fn daemon_alive() -> bool {
    daemon().is_some_and(|d| d.alive != 0)
}

/// True when this load's programs are the ones that act: a daemon adopting the pinned
/// state attaches its programs first and switches the generation once they all are.
#[inline(always)]
pub fn acting() -> bool {
    // SAFETY: reading a global; volatile so the compiler cannot fold the initialiser.
    let mine = unsafe { core::ptr::read_volatile(&GENERATION) };
    daemon().is_some_and(|d| d.generation == mine)
}

/// The session of the current process, if it is in one and this load's programs act.
/// The session lookup comes first: it is the only cost a process outside every session
/// pays, and every program's decisions and records go through here.
#[inline(always)]
pub fn current_session(tgid: u32) -> Option<SessionEntry> {
    // SAFETY: the value is copied out before the map can change it.
    let entry = unsafe { SESSIONS.get(tgid).copied() }?;
    acting().then_some(entry)
}
