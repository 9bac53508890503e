//! Filling event headers and sending records, with every loss counted.

use agent_common::{
    event::{EventHeader, EventKind},
    stats::Stat,
};
use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_uid_gid,
    generated::{bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns},
};

use crate::{
    kernel,
    maps::{EVENTS, count},
};

/// The current task as a byte pointer for offset reads.
#[inline(always)]
pub fn current_task() -> *const u8 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_get_current_task() as *const u8 }
}

/// Fills the common header from the current task.
#[inline(always)]
pub fn fill_header(h: &mut EventHeader, kind: EventKind, session_id: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    h.kind = kind as u32;
    h._reserved = 0;
    // SAFETY: helpers without preconditions.
    h.ktime_ns = unsafe { bpf_ktime_get_boot_ns() };
    h.session_id = session_id;
    // SAFETY: helper without preconditions.
    h.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    h.pid = pid_tgid as u32;
    h.tgid = (pid_tgid >> 32) as u32;
    h.ppid = kernel::parent_tgid(current_task());
    h.uid = uid_gid as u32;
    h.gid = (uid_gid >> 32) as u32;
    h._pad = 0;
    h.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

/// A header for a small event built on the stack.
#[inline(always)]
pub fn header(kind: EventKind, session_id: u64) -> EventHeader {
    let mut h = EventHeader {
        kind: 0,
        _reserved: 0,
        ktime_ns: 0,
        session_id: 0,
        cgroup_id: 0,
        pid: 0,
        tgid: 0,
        ppid: 0,
        uid: 0,
        gid: 0,
        _pad: 0,
        comm: [0; 16],
    };
    fill_header(&mut h, kind, session_id);
    h
}

/// Sends a record; a full ring buffer is counted, never silent.
#[inline(always)]
pub fn send<T: ?Sized>(record: &T) {
    match EVENTS.output::<T>(record, 0) {
        Ok(()) => count(Stat::EventsSubmitted),
        Err(_) => count(Stat::RingbufDrops),
    }
    if !crate::maps::daemon_alive() {
        count(Stat::SentWhileAbsent);
    }
}
