//! Raw and packet sockets at creation. Packet sockets (`AF_PACKET`): frames below IP, which no destination rule can judge and
//! which the cgroup `sock_create` hook never sees (the kernel runs it for inet sockets
//! only). In a session whose profile denies the network by default, their creation is the
//! decision: refused by BPF-LSM (`socket_create`, `EPERM`, for the syscall and io_uring
//! alike), or where it is absent the process is killed at `socket(2)`'s exit, before it
//! returns to user mode with the socket (an io_uring socket submission is not seen
//! there: see the threat model).

use agent_common::{
    event::{EventKind, NET_OP_SOCKET, NetDecisionEvent},
    policy::RULE_DEFAULT,
    session::SessionEntry,
    vocab::{Action, Layer, Mode, OnViolation},
};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{lsm, map, tracepoint},
    maps::LruHashMap,
    programs::{LsmContext, TracePointContext},
};

use crate::{
    emit::{header, send},
    maps::current_session,
    netpolicy::{AF_INET, AF_INET6, PROFILES, SOCK_RAW},
    pathrules::kill_current,
};

const AF_PACKET: i32 = 17;
/// `type` carries `SOCK_NONBLOCK` and `SOCK_CLOEXEC` above the kind.
const SOCK_TYPE_MASK: i32 = 0xf;
const EPERM: i32 = 1;

/// How the session's profile meets a packet socket: `None` when it does not decide one
/// (not in a session, network default allow, or a socket the kernel makes for itself).
#[inline(always)]
fn decision(family: i32, kern: i32) -> Option<(SessionEntry, bool, bool)> {
    if family != AF_PACKET || kern != 0 {
        return None;
    }
    deny_default()
}

/// The session of the current process when its profile denies the network by default:
/// (entry, acted on, `kill` as the profile's action). Shared with the cgroup
/// `sock_create` hook.
#[inline(always)]
pub fn deny_default() -> Option<(SessionEntry, bool, bool)> {
    let entry = current_session((bpf_get_current_pid_tgid() >> 32) as u32)?;
    let cfg = PROFILES.get(entry.profile_id)?;
    if cfg.loaded == 0 || cfg.net_default_deny == 0 {
        return None;
    }
    let enforce = cfg.mode == Mode::Enforce as u8 && cfg.net_action != OnViolation::Alert as u8;
    Some((entry, enforce, cfg.net_action == OnViolation::Kill as u8))
}

/// The action on a refused socket: `kill` also signals (before the process returns to
/// user mode).
#[inline(always)]
fn refused(kill: bool) -> Action {
    if kill {
        kill_current();
        Action::Killed
    } else {
        Action::Blocked
    }
}

/// The `net_decision` event of a socket's creation (used by the cgroup `sock_create`
/// hook too): judged by the network default, there is no destination to match.
#[inline(always)]
pub fn record(entry: &SessionEntry, family: i32, protocol: i32, action: Action, layer: Layer) {
    send(&NetDecisionEvent {
        header: header(EventKind::NetDecision, entry.session_id),
        family: family as u16,
        port: 0,
        // The IP protocol, or for a packet socket the ethertype as passed (network byte
        // order).
        protocol: protocol as u16,
        op: NET_OP_SOCKET,
        denied: 1,
        action: action as u8,
        enforced_by: layer as u8,
        _pad: 0,
        // Judged by the category default: no destination to match a rule against.
        rule_id: RULE_DEFAULT,
        addr: [0; 16],
    });
}

/// `security_socket_create(family, type, protocol, kern)` as a BPF-LSM hook: refused
/// before the socket exists.
#[lsm(hook = "socket_create")]
pub fn socket_create(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    let (family, protocol, kern): (i32, i32, i32) = (ctx.arg(0), ctx.arg(2), ctx.arg(3));
    let Some((entry, true, kill)) = decision(family, kern) else {
        // Monitor and alert are recorded after creation, below.
        return 0;
    };
    record(&entry, AF_PACKET, protocol, refused(kill), Layer::Lsm);
    // Recorded here: the syscall's exit must not record the same refusal again.
    decided_by_cgroup(bpf_get_current_pid_tgid());
    -EPERM
}

/// Raw and packet sockets asked for in a session that denies the network, from
/// `socket(2)`'s entry to its exit: `[family, protocol, decided]` (`decided`: the cgroup
/// `sock_create` hook took and recorded the decision itself).
#[map]
pub static SOCKET_STASH: LruHashMap<u64, [i32; 3]> = LruHashMap::with_max_entries(4_096, 0);

#[tracepoint(category = "syscalls", name = "sys_enter_socket")]
pub fn sys_enter_socket(ctx: TracePointContext) -> u32 {
    // SAFETY: reading the tracepoint record (args at 16, 24 and 32: family, type,
    // protocol).
    let (family, kind, protocol) = unsafe {
        (
            ctx.read_at::<u64>(16).unwrap_or(0) as i32,
            ctx.read_at::<u64>(24).unwrap_or(0) as i32,
            ctx.read_at::<u64>(32).unwrap_or(0) as i32,
        )
    };
    let inet = family == i32::from(AF_INET) || family == i32::from(AF_INET6);
    let raw = inet && kind & SOCK_TYPE_MASK == SOCK_RAW as i32;
    if (family == AF_PACKET || raw) && deny_default().is_some() {
        let _ = SOCKET_STASH.insert(bpf_get_current_pid_tgid(), [family, protocol, 0], 0);
    }
    0
}

/// Marks the current `socket(2)` as decided by a hook that sent the event itself (the
/// cgroup layer or BPF-LSM).
#[inline(always)]
pub fn decided_by_cgroup(pid_tgid: u64) {
    if let Some(s) = SOCKET_STASH.get_ptr_mut(pid_tgid) {
        // SAFETY: a live map value of this thread.
        unsafe { (*s)[2] = 1 };
    }
}

/// At `socket(2)`'s exit (called by the exit program in `net`), for a raw or packet
/// socket of a session that denies the network by default:
/// - refused with `EPERM` and not decided by the cgroup layer: the kernel's capability
///   check refused it (`run` dropped `CAP_NET_RAW`): recorded, and a `kill` profile's
///   signal sent;
/// - a packet socket created (no BPF-LSM refused it, the capability was kept: `attach`):
///   enforce mode kills the process before it returns to user mode with the socket;
///   monitor and alert record.
#[inline(always)]
pub fn at_socket_exit(pid_tgid: u64, ret: i64) {
    // SAFETY: copied out before removal.
    let Some([family, protocol, decided]) = (unsafe { SOCKET_STASH.get(pid_tgid) }).copied() else {
        return;
    };
    let _ = SOCKET_STASH.remove(pid_tgid);
    let Some((entry, enforce, kill)) = deny_default() else {
        return;
    };
    if ret == -i64::from(EPERM) {
        if decided != 0 || !enforce {
            return;
        }
        record(&entry, family, protocol, refused(kill), Layer::Capabilities);
        return;
    }
    if ret < 0 || family != AF_PACKET {
        return;
    }
    let (action, layer) = if enforce {
        kill_current();
        (Action::Killed, Layer::Signal)
    } else {
        (Action::Alerted, Layer::None)
    };
    record(&entry, family, protocol, action, layer);
}
