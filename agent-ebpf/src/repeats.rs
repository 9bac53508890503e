//! Repeated opens counted instead of sent. A session process that opens a file again —
//! the same `struct path` (mount and dentry, so the same name), the same inode, syscall
//! and flags — within a second of the file's last record, under the same rules, and
//! was allowed the last time, costs one map lookup and a count: no path walk, no rule
//! scan, no ring record. The counts reach the daemon as [`OpenRepeatEvent`]s when
//! [`repeats_timer`] runs (every `agent_common::config::REPEATS_TIMER_NS`), when the process exits, and
//! when another file takes the slot; one [`OpenEvent`](agent_common::event::OpenEvent)
//! a second goes on being sent for a file opened without pause (its path, afresh).
//!
//! Denied opens are never counted (no slot is made for them, and a counted open is one
//! whose every identity field matched an allowed one); the daemon bumps the policy
//! epoch whenever a rule changes, which makes every slot stale. Agent runtimes poll a
//! few files (`/proc/self/statm`, the loader's cache): 16–43% of the opens of the
//! scripted agent sessions were such repeats (see the README).
//!
//! Races, all bounded and none losing a count: two threads of one process filling the
//! same slot at once can leave it mixed, which at worst sends one open a second time
//! (a slot matches only when all of mount, dentry, inode, flags and syscall match the
//! open at hand); the timer and a process reporting the same slot at once can report
//! part of a count twice.

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use agent_common::{
    event::{EventHeader, EventKind, OpenRepeatEvent},
    session::SessionEntry,
    stats::Stat,
};
use aya_ebpf::{
    helpers::generated::{bpf_for_each_map_elem, bpf_ktime_get_boot_ns},
    macros::{map, perf_event},
    maps::{Array, HashMap, PerCpuArray},
    programs::PerfEventContext,
};

use crate::{
    emit::{fill_header, send},
    kernel::{self, off, read, read_ptr},
    maps::{acting, count, daemon},
    netpolicy::PROFILES,
};

/// Files counted per process at once (the most recently used are kept).
pub const SLOTS: usize = 8;
/// A repeat within this long of the file's last record is counted, not sent.
const WINDOW_NS: u64 = 1_000_000_000;
/// Processes with a table at once; a process without one has its opens all sent.
const TABLES: u32 = 4096;

/// What makes two opens the same.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key {
    mnt: u64,
    dentry: u64,
    ino: u64,
    dev: u32,
    flags: u32,
    syscall: u32,
    epoch: u32,
}

impl Key {
    /// The key of an open that returned `file`, under the current policy epoch.
    #[inline(always)]
    pub fn of(file: *const u8, flags: u32, syscall: u32) -> Option<Self> {
        let path = file.wrapping_add(off!(file_f_path) as usize);
        let inode = read_ptr(file, off!(file_f_inode))?;
        let sb = read_ptr(inode, off!(inode_i_sb))?;
        Some(Self {
            mnt: read_ptr(path, off!(path_mnt))? as u64,
            dentry: read_ptr(path, off!(path_dentry))? as u64,
            ino: read::<u64>(inode, off!(inode_i_ino))?,
            dev: read::<u32>(sb, off!(super_block_s_dev))?,
            flags,
            syscall,
            epoch: daemon()?.policy_epoch,
        })
    }

    pub fn dev(&self) -> u32 {
        self.dev
    }

    pub fn ino(&self) -> u64 {
        self.ino
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Slot {
    key: Key,
    /// When the file's latest record was sent; 0: the slot is free.
    sent_ns: u64,
    /// The first repeat not reported yet, and the latest.
    first_ns: u64,
    last_ns: u64,
    /// Repeats counted since the slot was filled (atomic: threads share the table).
    count: u64,
    /// Of which reported.
    reported: u64,
}

/// One process's counted files, with what the timer needs to report them.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Table {
    /// The process as its first table-making open saw it (kind [`EventKind::OpenRepeats`]).
    header: EventHeader,
    profile_id: u32,
    owner_uid: u32,
    slots: [Slot; SLOTS],
}

/// tgid → its table. Preallocated (a tracepoint cannot allocate here on every kernel
/// supported) and bounded: without a table a process is recorded open by open.
#[map]
static REPEATS: HashMap<u32, Table> = HashMap::with_max_entries(TABLES, 0);

/// A zeroed table to insert from (larger than the BPF stack); never written.
#[map]
static EMPTY_TABLE: Array<Table> = Array::with_max_entries(1, 0);

/// A report is built here (the BPF stack is small).
#[map]
static REPORT_SCRATCH: PerCpuArray<OpenRepeatEvent> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// Whether repeats of the session's allowed opens may be counted (its profile's file
/// decision is the kernel's alone).
#[inline(always)]
fn wanted(entry: &SessionEntry) -> bool {
    PROFILES
        .get(entry.profile_id)
        .is_some_and(|c| c.loaded != 0 && c.file_repeats != 0)
}

/// The table of `tgid` if it is this session's, under this profile.
#[inline(always)]
fn table(tgid: u32, entry: &SessionEntry) -> Option<*mut Table> {
    let t = REPEATS.get_ptr_mut(tgid)?;
    // SAFETY: a live map value.
    let r = unsafe { &*t };
    (r.header.session_id == entry.session_id
        && r.profile_id == entry.profile_id
        && r.owner_uid == entry.owner_uid)
        .then_some(t)
}

/// The slot the open repeats, within that slot's window, if any.
#[inline(always)]
fn repeated(t: *mut Table, key: &Key, now: u64) -> Option<*mut Slot> {
    for i in 0..SLOTS {
        // SAFETY: a live map value; `i < SLOTS`.
        let s = unsafe { &mut (*t).slots[i] };
        if s.sent_ns != 0 && s.key == *key {
            return (now.wrapping_sub(s.sent_ns) < WINDOW_NS).then_some(s as *mut Slot);
        }
    }
    None
}

/// Whether the open repeats an allowed one within its window (the LSM hook's question;
/// the syscall's exit counts it).
#[inline(always)]
pub fn is_repeat(tgid: u32, key: &Key, entry: &SessionEntry) -> bool {
    table(tgid, entry).is_some_and(|t| repeated(t, key, now()).is_some())
}

/// Counts the open as a repeat when it is one: the same as a slot's, within the window
/// of that slot's last record. True: counted, send nothing.
#[inline(always)]
pub fn counted(tgid: u32, key: &Key, entry: &SessionEntry) -> bool {
    let Some(t) = table(tgid, entry) else {
        return false;
    };
    let now = now();
    let Some(s) = repeated(t, key, now) else {
        return false;
    };
    // SAFETY: a slot of a live map value.
    let s = unsafe { &mut *s };
    if s.count == s.reported {
        s.first_ns = now;
    }
    s.last_ns = now;
    // SAFETY: an aligned u64 of a live map value, shared with other CPUs; the result
    // is unused, so this is the BPF atomic add every supported kernel has.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut s.count, 1) };
    count(Stat::OpenRepeats);
    true
}

/// After an allowed open was sent: its slot (found, free, or the least recently used,
/// whose count is reported first) now starts a window.
#[inline(always)]
pub fn remember(tgid: u32, key: &Key, entry: &SessionEntry, header: &EventHeader) {
    if !wanted(entry) {
        return;
    }
    let t = match table(tgid, entry) {
        Some(t) => t,
        None => {
            let Some(empty) = EMPTY_TABLE.get(0) else {
                return;
            };
            if REPEATS.insert(tgid, empty, 0).is_err() {
                count(Stat::RepeatTableFull);
                return;
            }
            let Some(t) = REPEATS.get_ptr_mut(tgid) else {
                return;
            };
            // SAFETY: a live map value.
            let r = unsafe { &mut *t };
            r.header = *header;
            r.header.kind = EventKind::OpenRepeats as u32;
            r.profile_id = entry.profile_id;
            r.owner_uid = entry.owner_uid;
            t
        }
    };
    let now = now();
    let mut victim = 0;
    let mut oldest = u64::MAX;
    for i in 0..SLOTS {
        // SAFETY: a live map value; `i < SLOTS`.
        let s = unsafe { &mut (*t).slots[i] };
        if s.sent_ns != 0 && s.key == *key {
            s.sent_ns = now;
            return;
        }
        let used = if s.last_ns > s.sent_ns {
            s.last_ns
        } else {
            s.sent_ns
        };
        if used < oldest {
            oldest = used;
            victim = i;
        }
    }
    // SAFETY: a live map value; `victim < SLOTS`.
    let s = unsafe { &mut (*t).slots[victim & (SLOTS - 1)] };
    // SAFETY: as above.
    report(unsafe { &(*t).header }, s, true);
    *s = Slot {
        key: *key,
        sent_ns: now,
        first_ns: 0,
        last_ns: 0,
        count: 0,
        reported: 0,
    };
}

/// Sends the slot's unreported count, if any; `current`: from the process itself (its
/// header is taken afresh), else from the timer (the table's).
#[inline(always)]
fn report(header: &EventHeader, s: &mut Slot, current: bool) {
    let total = s.count;
    if s.sent_ns == 0 || total <= s.reported {
        return;
    }
    let Some(ev) = REPORT_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch value; tracing programs do not nest on a CPU (the
    // timer skips a tick that lands while another runs), so it is ours alone.
    let ev = unsafe { &mut *ev };
    if current {
        fill_header(&mut ev.header, EventKind::OpenRepeats, header.session_id);
    } else {
        ev.header = *header;
    }
    ev.syscall = s.key.syscall;
    ev.flags = s.key.flags;
    ev.dev = s.key.dev;
    ev._pad = 0;
    ev.ino = s.key.ino;
    ev.count = total - s.reported;
    ev.first_ns = s.first_ns;
    ev.last_ns = s.last_ns;
    s.reported = total;
    send(ev);
}

/// Reports every count of the table.
#[inline(always)]
fn report_all(t: *mut Table, current: bool) {
    for i in 0..SLOTS {
        // SAFETY: a live map value; `i < SLOTS`.
        let (h, s) = unsafe { (&(*t).header, &mut (*t).slots[i]) };
        report(h, s, current);
    }
}

/// Whether `tgid` has a table (one lookup, for every process exit on the host).
#[inline(always)]
pub fn has_table(tgid: u32) -> bool {
    // SAFETY: only the presence is read.
    unsafe { REPEATS.get(tgid) }.is_some()
}

/// The process `tgid` is gone: its counts are reported (before its exit record) and its
/// table freed. Called for every process exit: a process that left its session while it
/// ran (or whose daemon stopped acting) still has its table freed.
#[inline(always)]
pub fn process_gone(tgid: u32) {
    let Some(t) = REPEATS.get_ptr_mut(tgid) else {
        return;
    };
    if acting() {
        report_all(t, true);
    }
    let _ = REPEATS.remove(tgid);
}

/// The timer: reports every table's counts, so a process that stopped opening a file
/// (and does not exit) has its repeats in the trail within a period.
#[perf_event]
pub fn repeats_timer(_ctx: PerfEventContext) -> u32 {
    if !kernel::ready() || !acting() {
        return 0;
    }
    // SAFETY: `report_table` matches the callback ABI; the map is this object's.
    unsafe {
        bpf_for_each_map_elem(
            (&REPEATS as *const HashMap<u32, Table>).cast_mut().cast(),
            report_table as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
    }
    0
}

/// `bpf_for_each_map_elem` callback: one process's table.
extern "C" fn report_table(
    _map: *mut c_void,
    _key: *mut c_void,
    value: *mut c_void,
    _ctx: *mut c_void,
) -> i64 {
    report_all(value.cast::<Table>(), false);
    0
}
