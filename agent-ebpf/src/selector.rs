//! Enrolment by selector (see `agent_common::selector`): at the exec of a process
//! outside every session, the profiles' `match:` selectors are judged on the resolved
//! executable, the argument vector and the cgroup; a match puts the process into a new
//! session before the program's first instruction. And the creation of a cgroup a
//! selector names by path, so a unit or container started later is covered too.

use core::ffi::c_void;

use agent_common::{
    event::{ARGV_MAX, CgroupEvent, EnrolEvent, EventKind, ExecEvent},
    policy::{FNV_OFFSET, fnv_step},
    selector::{
        ARGV_EXACT, ARGV_SUFFIX, ArgvKey, CGROUP_DEPTH_MAX, CGROUP_PATH_MAX, CGROUP_PENDING, HELD,
        MAX_ARGV_PATTERNS, MAX_SELECTORS, NEEDS_ARGV, NEEDS_CGROUP, NEEDS_EXE, SelectorConfig,
        SelectorEntry,
    },
    session::SessionEntry,
    stats::Stat,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_prandom_u32, bpf_loop,
            bpf_probe_read_kernel_str,
        },
    },
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::BtfTracePointContext,
};

use crate::{
    emit::{header, send},
    kernel::{self, off, read, read_ptr},
    maps::{SESSIONS, acting, count},
};

#[map]
pub static SELECTORS: Array<SelectorEntry> = Array::with_max_entries(MAX_SELECTORS, 0);
#[map]
pub static SELECTOR_CONFIG: Array<SelectorConfig> = Array::with_max_entries(1, 0);
#[map]
pub static SELECTOR_ARGV: HashMap<ArgvKey, u64> =
    HashMap::with_max_entries(2 * MAX_ARGV_PATTERNS, 0);
/// Cgroups a selector names (by path, or by the labels of the container they hold).
#[map]
pub static SELECTOR_CGROUPS: HashMap<u64, u32> = HashMap::with_max_entries(8192, 0);
#[map]
pub static SELECTOR_CGROUP_PATHS: HashMap<u64, u32> = HashMap::with_max_entries(1024, 0);
/// Processes held until the daemon has looked up their container.
#[map]
pub static SELECTOR_HELD: HashMap<u32, u64> = HashMap::with_max_entries(1024, 0);

const SIGSTOP: u32 = 19;

/// `BPF_NOEXIST`: a process another program enrolled meanwhile keeps its session.
const BPF_NOEXIST: u64 = 1;

/// The selectors' configuration while any is loaded and this load's programs act.
#[inline(always)]
pub fn active() -> Option<&'static SelectorConfig> {
    let cfg = SELECTOR_CONFIG.get(0)?;
    (cfg.count != 0 && acting()).then_some(cfg)
}

/// What the selector passes share, in map memory so each `bpf_loop` callback is
/// verified once with unknown scalars instead of 32 unrolled, branching iterations.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Judging {
    count: u32,
    exe_bits: u32,
    cgroup_bits: u32,
    candidates: u32,
    argv_bits: u64,
    argv_needed: u32,
    /// The first selector that matched, or -1.
    matched: i32,
}

#[map]
static JUDGING: PerCpuArray<Judging> = PerCpuArray::with_max_entries(1, 0);

/// The callbacks' context: `bpf_loop` takes a pointer to the stack, which holds the
/// pointer to the map value.
struct JudgingRef {
    j: *mut Judging,
}

/// Pass 1: the selectors whose executable and cgroup conditions hold.
extern "C" fn cheap_step(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is a `JudgingRef` to this CPU's `Judging`.
    let j = unsafe { &mut *(*ctx.cast::<JudgingRef>()).j };
    let i = i as u32;
    if i >= j.count || i >= MAX_SELECTORS {
        return 1;
    }
    let Some(s) = SELECTORS.get(i) else {
        return 1;
    };
    let bit = 1u32 << (i & 31);
    if (s.needs & NEEDS_EXE != 0 && j.exe_bits & bit == 0)
        || (s.needs & NEEDS_CGROUP != 0 && j.cgroup_bits & bit == 0)
        || s.needs == 0
    {
        return 0;
    }
    j.candidates |= bit;
    if s.needs & NEEDS_ARGV != 0 {
        j.argv_needed = 1;
    }
    0
}

/// Pass 2: the first candidate whose argv patterns all matched.
extern "C" fn argv_check_step(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is a `JudgingRef` to this CPU's `Judging`.
    let j = unsafe { &mut *(*ctx.cast::<JudgingRef>()).j };
    let i = i as u32;
    if i >= j.count || i >= MAX_SELECTORS {
        return 1;
    }
    if j.candidates & (1u32 << (i & 31)) == 0 {
        return 0;
    }
    let Some(s) = SELECTORS.get(i) else {
        return 1;
    };
    if s.needs & NEEDS_ARGV != 0 && j.argv_bits & s.argv_mask != s.argv_mask {
        return 0;
    }
    j.matched = i as i32;
    1
}

/// Judges the selectors for the exec `ev` describes (its executable and argv already
/// filled in); on a match, the process's new session.
#[inline(always)]
pub fn enrol(ev: &ExecEvent, cfg: &SelectorConfig) -> Option<SessionEntry> {
    let exe_bits = if cfg.exe_selectors != 0 {
        crate::pathrules::selector_bits(&ev.exe, cfg.exe_prefix_depths)
    } else {
        0
    };
    let cgroup_bits = if cfg.cgroup_selectors != 0 {
        cgroup_bits()
    } else {
        0
    };
    let pending = cgroup_bits & CGROUP_PENDING != 0;
    let cgroup_bits = cgroup_bits & !CGROUP_PENDING;
    if exe_bits == 0 && cgroup_bits == 0 {
        // Every selector has an executable or cgroup condition (argv alone is refused
        // at load: it would scan every exec's argv on the host).
        if pending {
            hold();
        }
        return None;
    }
    let jp = JUDGING.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, exclusively ours while the program runs.
    let j = unsafe { &mut *jp };
    j.count = cfg.count;
    j.exe_bits = exe_bits;
    j.cgroup_bits = cgroup_bits;
    j.candidates = 0;
    j.argv_bits = 0;
    j.argv_needed = 0;
    j.matched = -1;
    let mut r = JudgingRef { j: jp };
    let rp = (&mut r as *mut JudgingRef).cast();
    // SAFETY: the callbacks match the ABI; `r` and the map value outlive the calls.
    unsafe { bpf_loop(MAX_SELECTORS, cheap_step as *mut c_void, rp, 0) };
    // SAFETY: as above.
    let (candidates, argv_needed) = unsafe { ((*jp).candidates, (*jp).argv_needed) };
    if candidates == 0 {
        if pending {
            hold();
        }
        return None;
    }
    if argv_needed != 0 {
        let bits = argv_bits(ev);
        // SAFETY: as above.
        unsafe { (*jp).argv_bits = bits };
    }
    // SAFETY: as above.
    unsafe { bpf_loop(MAX_SELECTORS, argv_check_step as *mut c_void, rp, 0) };
    // SAFETY: as above.
    let matched = unsafe { (*jp).matched };
    if matched < 0 {
        if pending {
            hold();
        }
        return None;
    }
    let index = matched as u32;
    let s = SELECTORS.get(index)?;
    start(index, s)
}

/// Stops the current process before its first instruction and tells the daemon, which
/// looks up the container of its (new) cgroup, enrols it or not, and resumes it. Only
/// while a daemon runs: none would resume it otherwise.
#[inline(always)]
fn hold() {
    if !crate::maps::daemon_alive() {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: helper without preconditions.
    let cgroup = unsafe { aya_ebpf::helpers::generated::bpf_get_current_cgroup_id() };
    if SELECTOR_HELD.insert(tgid, cgroup, 0).is_err() {
        return;
    }
    count(Stat::SelectorHolds);
    // SAFETY: signals the current task; allowed from tracepoints.
    unsafe { aya_ebpf::helpers::generated::bpf_send_signal(SIGSTOP) };
    send(&EnrolEvent {
        header: header(EventKind::Enrolment, 0),
        selector: HELD,
        profile_id: 0,
    });
}

/// Starts the session of selector `index` for the current process.
#[inline(always)]
fn start(index: u32, s: &SelectorEntry) -> Option<SessionEntry> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // Random like the daemon's own ids, so the two never need to agree on a counter.
    // SAFETY: helpers without preconditions.
    let id = unsafe { (u64::from(bpf_get_prandom_u32()) << 32) | u64::from(bpf_get_prandom_u32()) };
    let entry = SessionEntry {
        session_id: id.max(1),
        profile_id: s.profile_id,
        flags: s.session_flags,
        owner_uid: bpf_get_current_uid_gid() as u32,
        _pad: 0,
    };
    if SESSIONS.insert(tgid, entry, BPF_NOEXIST).is_err() {
        count(Stat::SessionMapFull);
        return None;
    }
    count(Stat::SelectorEnrolments);
    send(&EnrolEvent {
        header: header(EventKind::Enrolment, entry.session_id),
        selector: index,
        profile_id: s.profile_id,
    });
    Some(entry)
}

extern "C" fn cgroup_step(level: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the caller's `u32` of bits.
    let bits = unsafe { &mut *ctx.cast::<u32>() };
    // SAFETY: helper without preconditions; 0 past the process's own level.
    let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
    if id == 0 {
        return 1;
    }
    // SAFETY: value copied out.
    if let Some(b) = unsafe { SELECTOR_CGROUPS.get(id) } {
        *bits |= *b;
    }
    0
}

/// The bits of the selectors naming the current process's cgroup or an ancestor.
#[inline(always)]
fn cgroup_bits() -> u32 {
    let mut bits = 0u32;
    // SAFETY: `cgroup_step` matches the callback ABI; `bits` outlives the call.
    unsafe {
        bpf_loop(
            CGROUP_DEPTH_MAX,
            cgroup_step as *mut c_void,
            (&mut bits as *mut u32).cast(),
            0,
        )
    };
    bits
}

/// State of the argv scan, in map memory so the `bpf_loop` callback converges.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ArgvScan {
    key: ArgvKey,
    /// Next byte to look at (scanning backwards); -1 when done.
    pos: i64,
    /// FNV-1a of the bytes after `pos` up to the end of their token, last byte first.
    h: u64,
    bits: u64,
}

#[map]
static ARGV_SCAN: PerCpuArray<ArgvScan> = PerCpuArray::with_max_entries(1, 0);

struct ArgvWalk {
    ev: *const ExecEvent,
    st: *mut ArgvScan,
}

#[inline(always)]
fn argv_lookup(s: &mut ArgvScan, form: u8) {
    s.key.form = form;
    s.key.hash = s.h;
    // SAFETY: value copied out.
    if let Some(b) = unsafe { SELECTOR_ARGV.get(s.key) } {
        s.bits |= *b;
    }
}

/// A token's first byte is behind the scan: the whole token matches exactly or as a
/// suffix.
#[inline(always)]
fn token_start(s: &mut ArgvScan) {
    if s.h != FNV_OFFSET {
        argv_lookup(s, ARGV_EXACT);
        argv_lookup(s, ARGV_SUFFIX);
    }
    s.h = FNV_OFFSET;
}

extern "C" fn argv_step(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `ArgvWalk` passed by `argv_bits`.
    let w = unsafe { &*ctx.cast::<ArgvWalk>() };
    // SAFETY: a live per-CPU map value.
    let s = unsafe { &mut *w.st };
    if s.pos < 0 {
        token_start(s);
        return 1;
    }
    // SAFETY: a live per-CPU map value; the index is masked.
    let b = unsafe { (*w.ev).argv[s.pos as usize & (ARGV_MAX - 1)] };
    if b == 0 {
        token_start(s);
    } else {
        if b == b'/' && s.h != FNV_OFFSET {
            argv_lookup(s, ARGV_SUFFIX);
        }
        s.h = fnv_step(s.h, b);
    }
    s.pos -= 1;
    0
}

/// The argv patterns some token of the exec's argument vector satisfies.
#[inline(always)]
fn argv_bits(ev: &ExecEvent) -> u64 {
    let Some(st) = ARGV_SCAN.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot, exclusively ours while the program runs.
    let s = unsafe { &mut *st };
    s.key.hash = 0;
    s.key.form = 0;
    s.pos = i64::from(ev.argv_len) - 1;
    s.h = FNV_OFFSET;
    s.bits = 0;
    let mut w = ArgvWalk {
        ev: ev as *const ExecEvent,
        st,
    };
    // SAFETY: `argv_step` matches the callback ABI; `w` outlives the call.
    unsafe {
        bpf_loop(
            ARGV_MAX as u32 + 1,
            argv_step as *mut c_void,
            (&mut w as *mut ArgvWalk).cast(),
            0,
        );
    }
    // SAFETY: as above.
    unsafe { (*st).bits }
}

/// A cgroup path being hashed by [`cgroup_mkdir`], in the record the daemon may get.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CgroupPath {
    ev: CgroupEvent,
    len: u64,
    h: u64,
}

#[map]
static CGROUP_PATH: PerCpuArray<CgroupPath> = PerCpuArray::with_max_entries(1, 0);

struct CgroupPathRef {
    p: *mut CgroupPath,
}

extern "C" fn path_step(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is a `CgroupPathRef` to the per-CPU `CgroupPath` of `cgroup_mkdir`.
    let p = unsafe { &mut *(*ctx.cast::<CgroupPathRef>()).p };
    if i >= p.len {
        return 1;
    }
    p.h = fnv_step(p.h, p.ev.path[i as usize & (CGROUP_PATH_MAX - 1)]);
    0
}

/// `cgroup_mkdir(struct cgroup *cgrp, const char *path)`: a new cgroup of the v2
/// hierarchy whose path a selector names gets the selector's bits before any process
/// can be moved into it.
#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: BtfTracePointContext) -> i32 {
    if !kernel::ready() {
        return 0;
    }
    let Some(cfg) = active().filter(|c| c.cgroup_selectors != 0) else {
        return 0;
    };
    let labels = cfg.label_selectors != 0;
    let cgrp: *const u8 = ctx.arg(0);
    let path: *const u8 = ctx.arg(1);
    // The v2 hierarchy is number 0 (`/proc/PID/cgroup`'s `0::`); v1 ids are another
    // numbering.
    let hierarchy = read_ptr(cgrp, off!(cgroup_root))
        .and_then(|root| read::<i32>(root, off!(cgroup_root_hierarchy_id)));
    if hierarchy != Some(0) {
        return 0;
    }
    let Some(id) =
        read_ptr(cgrp, off!(cgroup_kn)).and_then(|kn| read::<u64>(kn, off!(kernfs_node_id)))
    else {
        return 0;
    };
    let Some(p) = CGROUP_PATH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot, exclusively ours while the program runs.
    let buf = unsafe { &mut *p };
    // SAFETY: the helper faults safely; the destination holds CGROUP_PATH_MAX bytes.
    let n = unsafe {
        bpf_probe_read_kernel_str(
            buf.ev.path.as_mut_ptr().cast(),
            CGROUP_PATH_MAX as u32,
            path.cast(),
        )
    };
    if n <= 1 || n as usize >= CGROUP_PATH_MAX {
        return 0;
    }
    buf.len = (n - 1) as u64;
    buf.h = FNV_OFFSET;
    let mut r = CgroupPathRef { p };
    // SAFETY: `path_step` matches the callback ABI; `r` and the buffer outlive the call.
    unsafe {
        bpf_loop(
            CGROUP_PATH_MAX as u32,
            path_step as *mut c_void,
            (&mut r as *mut CgroupPathRef).cast(),
            0,
        );
    }
    // SAFETY: as above.
    let buf = unsafe { &mut *p };
    // SAFETY: value copied out.
    let mut bits = (unsafe { SELECTOR_CGROUP_PATHS.get(buf.h) })
        .copied()
        .unwrap_or(0);
    if labels {
        bits |= CGROUP_PENDING;
    }
    if bits != 0 {
        let _ = SELECTOR_CGROUPS.insert(id, bits, 0);
    }
    if labels {
        buf.ev.header = header(EventKind::CgroupCreated, 0);
        buf.ev.cgroup_id = id;
        buf.ev.path_len = buf.len as u32;
        buf.ev._pad = 0;
        send(&buf.ev);
    }
    0
}
