//! Outgoing connections of session processes (IPv4 and IPv6). The address is read at
//! syscall entry, the result at exit. (Enforcement reads the kernel's own copy of the
//! address in cgroup sock_addr programs; this is the observation path.)

use agent_common::{
    event::{ConnectEvent, EventKind},
    stats::Stat,
};
use aya_ebpf::{
    bindings::BPF_F_NO_COMMON_LRU,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated::bpf_send_signal},
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};

use crate::{
    emit::{header, send},
    kernel,
    maps::{count, current_session},
    netpolicy::NET_KILL,
};

const SIGKILL: u32 = 9;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Pending connect (kernel-only type).
#[repr(C)]
#[derive(Clone, Copy)]
struct ConnectStash {
    fd: i32,
    family: u16,
    port: u16,
    addr: [u8; 16],
}

#[map]
static CONNECT_STASH: LruHashMap<u64, ConnectStash> =
    LruHashMap::with_max_entries(16_384, BPF_F_NO_COMMON_LRU);

#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !kernel::ready() || current_session((pid_tgid >> 32) as u32).is_none() {
        return 0;
    }
    // SAFETY: reading the tracepoint record.
    let (fd, uaddr, addrlen) = unsafe {
        (
            ctx.read_at::<u64>(16).unwrap_or(0),
            ctx.read_at::<u64>(24).unwrap_or(0),
            ctx.read_at::<u64>(32).unwrap_or(0),
        )
    };
    if addrlen < 16 {
        return 0;
    }
    // sockaddr_in is 16 bytes; sockaddr_in6 is 28 (address at 8..24).
    // SAFETY: the helper faults safely.
    let Ok(head) = (unsafe { bpf_probe_read_user(uaddr as *const [u8; 16]) }) else {
        return 0;
    };
    let family = u16::from_ne_bytes([head[0], head[1]]);
    let port = u16::from_be_bytes([head[2], head[3]]);
    let mut addr = [0u8; 16];
    match family {
        AF_INET => addr[..4].copy_from_slice(&head[4..8]),
        AF_INET6 if addrlen >= 24 => {
            // SAFETY: the helper faults safely.
            match unsafe { bpf_probe_read_user((uaddr + 8) as *const [u8; 16]) } {
                Ok(a) => addr = a,
                Err(_) => return 0,
            }
        }
        _ => return 0,
    }
    let s = ConnectStash {
        fd: fd as i32,
        family,
        port,
        addr,
    };
    if CONNECT_STASH.insert(pid_tgid, s, 0).is_err() {
        count(Stat::StashFull);
    }
    0
}

/// Carries out a `kill` the cgroup layer decided for this thread's operation.
#[inline(always)]
fn kill_if_decided(pid_tgid: u64) {
    // SAFETY: presence check only.
    if unsafe { NET_KILL.get(pid_tgid) }.is_some() {
        let _ = NET_KILL.remove(pid_tgid);
        // SAFETY: signals the current task, allowed from tracepoints.
        unsafe { bpf_send_signal(SIGKILL) };
        count(Stat::Kills);
    }
}

#[tracepoint(category = "syscalls", name = "sys_exit_sendto")]
pub fn sys_exit_sendto(_ctx: TracePointContext) -> u32 {
    kill_if_decided(bpf_get_current_pid_tgid());
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_sendmsg")]
pub fn sys_exit_sendmsg(_ctx: TracePointContext) -> u32 {
    kill_if_decided(bpf_get_current_pid_tgid());
    0
}

/// A raw or ICMP socket refused in a `kill` session, or a packet socket created in a
/// session that denies the network: the signal before the process returns from
/// `socket(2)`.
#[tracepoint(category = "syscalls", name = "sys_exit_socket")]
pub fn sys_exit_socket(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    kill_if_decided(pid_tgid);
    // SAFETY: reading the tracepoint record.
    let ret = unsafe { ctx.read_at::<i64>(16) }.unwrap_or(-1);
    crate::packet::at_socket_exit(pid_tgid, ret);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_sendmmsg")]
pub fn sys_exit_sendmmsg(_ctx: TracePointContext) -> u32 {
    kill_if_decided(bpf_get_current_pid_tgid());
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    kill_if_decided(pid_tgid);
    // SAFETY: copied out before removal.
    let Some(s) = (unsafe { CONNECT_STASH.get(pid_tgid) }).copied() else {
        return 0;
    };
    let _ = CONNECT_STASH.remove(pid_tgid);
    let Some(entry) = current_session((pid_tgid >> 32) as u32) else {
        return 0;
    };
    // SAFETY: reading the tracepoint record.
    let ret = unsafe { ctx.read_at::<i64>(16) }.unwrap_or(0);
    send(&ConnectEvent {
        header: header(EventKind::Connect, entry.session_id),
        family: s.family,
        port: s.port,
        fd: s.fd,
        ret,
        addr: s.addr,
    });
    0
}
