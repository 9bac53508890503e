//! Network enforcement: cgroup sock_addr programs on the cgroup v2 root decide on the
//! kernel's own copy of the destination (not the process's buffer, which could change
//! after a tracepoint read it), before the connect or send happens.

use agent_common::{
    event::{EventKind, NET_OP_CONNECT, NET_OP_SENDMSG, NetDecisionEvent},
    policy::{
        MAX_PROFILES, NET_RULES_MAX, NetKey, NetRedirect, NetRule, ORIGINAL_DESTINATIONS_MAX,
        OriginalDestination, ProfileConfig, RULE_DEFAULT,
    },
    vocab::{Action, Layer, Mode, OnViolation},
};
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::{bpf_get_current_pid_tgid, bpf_get_socket_cookie},
    macros::{cgroup_sock, cgroup_sock_addr, map},
    maps::{Array, LpmTrie, LruHashMap, lpm_trie::Key},
    programs::{SockAddrContext, SockContext},
};

use crate::{
    emit::{header, send},
    maps::current_session,
};

/// Per-profile settings, indexed by profile id.
#[map]
pub static PROFILES: Array<ProfileConfig> = Array::with_max_entries(MAX_PROFILES, 0);
/// Denied destinations (checked first: deny wins over allow).
#[map]
pub static NET_DENY: LpmTrie<NetKey, NetRule> =
    LpmTrie::with_max_entries(NET_RULES_MAX, BPF_F_NO_PREALLOC);
/// Allowed destinations.
#[map]
pub static NET_ALLOW: LpmTrie<NetKey, NetRule> =
    LpmTrie::with_max_entries(NET_RULES_MAX, BPF_F_NO_PREALLOC);

/// Destinations sent elsewhere (`network.redirect`), checked before deny and allow: the
/// rule says where such connections go, whatever else would be said of them.
#[map]
pub static NET_REDIRECT: LpmTrie<NetKey, NetRedirect> =
    LpmTrie::with_max_entries(NET_RULES_MAX, BPF_F_NO_PREALLOC);
/// Socket cookie → where a redirected socket was addressed: the endpoint asks the daemon
/// (`agentwarden original-destination`), which finds the cookie by the connection's
/// addresses (sock_diag).
#[map]
pub static ORIGINAL_DESTINATIONS: LruHashMap<u64, OriginalDestination> =
    LruHashMap::with_max_entries(ORIGINAL_DESTINATIONS_MAX, 0);

/// Threads whose operation was refused under `on_violation: kill`: sock_addr programs
/// cannot send signals, so the syscall's exit tracepoint does (see `net`), before the
/// thread returns to user mode.
#[map]
pub static NET_KILL: LruHashMap<u64, u32> = LruHashMap::with_max_entries(4_096, 0);

const ALLOW: i32 = 1;
const REJECT: i32 = 0;
pub(crate) const AF_INET: u16 = 2;
pub(crate) const AF_INET6: u16 = 10;
const SOCK_DGRAM: u32 = 2;
pub(crate) const SOCK_RAW: u32 = 3;
const IPPROTO_ICMP: u32 = 1;
const IPPROTO_ICMPV6: u32 = 58;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    decide(&ctx, false, NET_OP_CONNECT)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    decide(&ctx, true, NET_OP_CONNECT)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    decide(&ctx, false, NET_OP_SENDMSG)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    decide(&ctx, true, NET_OP_SENDMSG)
}

#[inline(always)]
fn decide(ctx: &SockAddrContext, v6: bool, op: u8) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(entry) = current_session((pid_tgid >> 32) as u32) else {
        return ALLOW;
    };
    let Some(cfg) = PROFILES.get(entry.profile_id) else {
        return ALLOW;
    };
    if cfg.loaded == 0 {
        return ALLOW;
    }
    // SAFETY: the context of a sock_addr program.
    let sa = unsafe { &*ctx.sock_addr };
    let mut addr = [0u8; 16];
    if v6 {
        let words = [
            sa.user_ip6[0],
            sa.user_ip6[1],
            sa.user_ip6[2],
            sa.user_ip6[3],
        ];
        let mut i = 0;
        while i < 4 {
            let b = words[i].to_ne_bytes();
            addr[i * 4] = b[0];
            addr[i * 4 + 1] = b[1];
            addr[i * 4 + 2] = b[2];
            addr[i * 4 + 3] = b[3];
            i += 1;
        }
    } else {
        addr[10] = 0xff;
        addr[11] = 0xff;
        let b = sa.user_ip4.to_ne_bytes();
        addr[12] = b[0];
        addr[13] = b[1];
        addr[14] = b[2];
        addr[15] = b[3];
    }
    let port = u16::from_be(sa.user_port as u16);
    let a = Attempt {
        v6,
        addr,
        port,
        protocol: sa.protocol as u16,
        op,
    };
    let key = Key::new(
        NetKey::prefix_len(128),
        NetKey {
            profile_id: entry.profile_id.to_be_bytes(),
            addr,
        },
    );
    if let Some(r) = NET_REDIRECT.get(&key)
        && r.rule.has_port(port)
    {
        return redirect(ctx, r, &entry, cfg, &a);
    }
    let (denied, rule_id) = match NET_DENY.get(&key) {
        Some(r) if r.has_port(port) => (true, r.rule_id),
        _ => match NET_ALLOW.get(&key) {
            Some(r) if r.has_port(port) => (false, r.rule_id),
            _ => (cfg.net_default_deny != 0, RULE_DEFAULT),
        },
    };
    let ask = cfg.net_action == OnViolation::Ask as u8;
    let enforce =
        denied && cfg.mode == Mode::Enforce as u8 && cfg.net_action != OnViolation::Alert as u8;
    // `ask`: a connect waits at the daemon's holding endpoint for an answer. A datagram
    // cannot wait, nor can anything when no endpoint is set: those are refused.
    if enforce && ask && op == NET_OP_CONNECT && cfg.hold_port != 0 {
        return hold(ctx, &entry, cfg.hold_port, &a, rule_id);
    }
    let kill = enforce && cfg.net_action == OnViolation::Kill as u8;
    let action = match (denied, enforce) {
        (false, _) => Action::Allowed,
        (true, true) if kill => Action::Killed,
        (true, true) => Action::Blocked,
        (true, false) if ask => Action::WouldAsk,
        (true, false) => Action::Alerted,
    };
    if kill {
        // The signal follows at the syscall's exit; the operation is refused already.
        let _ = NET_KILL.insert(pid_tgid, 1, 0);
    }
    // Allowed datagrams are not reported one by one; every connect and every
    // out-of-profile operation is.
    if denied || op == NET_OP_CONNECT {
        let layer = if enforce { Layer::Cgroup } else { Layer::None };
        report(&entry, &a, denied, action, layer, rule_id);
    }
    if enforce { REJECT } else { ALLOW }
}

/// An operation being decided: where it was addressed, and how.
struct Attempt {
    v6: bool,
    /// As IPv6 (IPv4 as `::ffff:a.b.c.d`).
    addr: [u8; 16],
    port: u16,
    protocol: u16,
    /// `NET_OP_*`.
    op: u8,
}

/// Sends the decision on `a` to the daemon.
#[inline(always)]
fn report(
    entry: &agent_common::session::SessionEntry,
    a: &Attempt,
    denied: bool,
    action: Action,
    layer: Layer,
    rule_id: u32,
) {
    send(&NetDecisionEvent {
        header: header(EventKind::NetDecision, entry.session_id),
        family: if a.v6 { AF_INET6 } else { AF_INET },
        port: a.port,
        protocol: a.protocol,
        op: a.op,
        denied: denied as u8,
        action: action as u8,
        enforced_by: layer as u8,
        _pad: 0,
        rule_id,
        addr: a.addr,
    });
}

/// Rewrites the kernel's copy of the destination to `to` (IPv6 form; an IPv4 socket
/// takes its IPv4 part) before the operation happens, and remembers the original by
/// socket cookie for the daemon (`held`: sent to its holding endpoint).
#[inline(always)]
fn send_elsewhere(
    ctx: &SockAddrContext,
    entry: &agent_common::session::SessionEntry,
    a: &Attempt,
    (to, to_port): ([u8; 16], u16),
    rule_id: u32,
    held: bool,
) {
    // SAFETY: the context of a sock_addr program; these fields are writable there.
    let sa = unsafe { &mut *ctx.sock_addr };
    if a.v6 {
        let mut i = 0;
        while i < 4 {
            sa.user_ip6[i] =
                u32::from_ne_bytes([to[i * 4], to[i * 4 + 1], to[i * 4 + 2], to[i * 4 + 3]]);
            i += 1;
        }
    } else {
        sa.user_ip4 = u32::from_ne_bytes([to[12], to[13], to[14], to[15]]);
    }
    sa.user_port = u32::from(to_port.to_be());
    // SAFETY: the helper takes the sock_addr context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    let orig = OriginalDestination {
        session_id: entry.session_id,
        addr: a.addr,
        port: a.port,
        family: if a.v6 { AF_INET6 } else { AF_INET },
        rule_id,
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        held: u32::from(held),
    };
    let _ = ORIGINAL_DESTINATIONS.insert(cookie, orig, 0);
}

/// A destination a `network.redirect` rule names: in enforce mode sent to the rule's
/// endpoint; in monitor mode only recorded.
#[inline(always)]
fn redirect(
    ctx: &SockAddrContext,
    r: &NetRedirect,
    entry: &agent_common::session::SessionEntry,
    cfg: &ProfileConfig,
    a: &Attempt,
) -> i32 {
    let enforce = cfg.mode == Mode::Enforce as u8;
    // An IPv4 socket can only be sent to an IPv4 endpoint; an IPv6 one to either (as
    // `::ffff:a.b.c.d` for IPv4, which a dual-stack socket reaches).
    let to_v4 =
        r.to_addr[..10].iter().all(|b| *b == 0) && r.to_addr[10] == 0xff && r.to_addr[11] == 0xff;
    let fits = a.v6 || to_v4;
    let action = match (enforce, fits) {
        (true, true) => {
            send_elsewhere(ctx, entry, a, (r.to_addr, r.to_port), r.rule.rule_id, false);
            Action::Modified
        }
        // An IPv4 socket and an IPv6 endpoint: nothing can carry it there. Refused,
        // never let through to where the rule said it must not go.
        (true, false) => Action::Blocked,
        (false, _) => Action::WouldRedirect,
    };
    let layer = if enforce { Layer::Cgroup } else { Layer::None };
    report(entry, a, true, action, layer, r.rule.rule_id);
    if enforce && !fits { REJECT } else { ALLOW }
}

/// A connect an `ask` profile denies: sent to the daemon's holding endpoint on loopback
/// (IPv6 sockets as `::ffff:127.0.0.1`), where the daemon keeps it until a person
/// answers, then connects to the original destination and relays, or resets it.
#[inline(always)]
fn hold(
    ctx: &SockAddrContext,
    entry: &agent_common::session::SessionEntry,
    hold_port: u16,
    a: &Attempt,
    rule_id: u32,
) -> i32 {
    let loopback = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1];
    send_elsewhere(ctx, entry, a, (loopback, hold_port), rule_id, true);
    report(entry, a, true, Action::Held, Layer::Cgroup, rule_id);
    ALLOW
}

/// Sockets whose traffic no destination rule can judge: raw sockets and ICMP "ping"
/// datagram sockets (the cgroup sendmsg hooks see UDP only). The kernel runs this hook
/// for inet sockets only: packet sockets never reach it. In a session whose profile
/// denies the network by default, their creation is the decision: refused (`EPERM`
/// from `socket(2)`), killed at the syscall's exit, or recorded, as the profile says.
#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the context of a sock_create program; family, type and protocol are
    // readable there.
    let sk = unsafe { &*ctx.sock };
    let (family, kind, protocol) = (sk.family, sk.type_, sk.protocol);
    let unjudged = kind == SOCK_RAW
        || (kind == SOCK_DGRAM && (protocol == IPPROTO_ICMP || protocol == IPPROTO_ICMPV6));
    if !unjudged {
        return ALLOW;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some((entry, enforce, kill)) = crate::packet::deny_default() else {
        return ALLOW;
    };
    let kill = enforce && kill;
    let action = match (enforce, kill) {
        (true, true) => Action::Killed,
        (true, false) => Action::Blocked,
        (false, _) => Action::Alerted,
    };
    if kill {
        // The signal follows at the syscall's exit; the socket is refused already.
        let _ = NET_KILL.insert(pid_tgid, 1, 0);
    }
    crate::packet::decided_by_cgroup(pid_tgid);
    let layer = if enforce { Layer::Cgroup } else { Layer::None };
    crate::packet::record(&entry, family as i32, protocol as i32, action, layer);
    if enforce { REJECT } else { ALLOW }
}
