//! Where a redirected connection was addressed: the redirect endpoint sees the agent's
//! connection come from `peer` and asks (`agentwarden original-destination --peer`); the
//! kernel remembered the original destination by socket cookie when it rewrote it, and
//! sock_diag (the interface `ss` uses) gives the cookie of the socket whose local end is
//! `peer`. Connections of the daemon's network namespace only.

use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

use super::*;

/// The socket cookie of the TCP socket whose local end is `peer` (and, if given, whose
/// remote end is `local`, the endpoint's own address).
pub(super) fn cookie_of(peer: SocketAddr, local: Option<SocketAddr>) -> Result<Option<u64>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).context("opening a sock_diag socket")?;
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let socket_id = if peer.is_ipv4() {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family: if peer.is_ipv4() { AF_INET } else { AF_INET6 },
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id,
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf[..]);
    socket.send(&buf, 0).context("sock_diag request")?;
    let same = |ip: IpAddr, port: u16, want: SocketAddr| {
        port == want.port() && canonical(ip) == canonical(want.ip())
    };
    let mut found = None;
    let mut rx = vec![0u8; 64 * 1024];
    loop {
        let n = socket
            .recv(&mut &mut rx[..], 0)
            .context("sock_diag answer")?;
        let mut at = 0;
        while at < n {
            let msg = <NetlinkMessage<SockDiagMessage>>::deserialize(&rx[at..n])
                .map_err(|e| anyhow!("sock_diag answer: {e}"))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let id = &r.header.socket_id;
                    if found.is_none()
                        && same(id.source_address, id.source_port, peer)
                        && local
                            .is_none_or(|l| same(id.destination_address, id.destination_port, l))
                    {
                        found = Some(u64::from_le_bytes(id.cookie));
                    }
                }
                NetlinkPayload::Done(_) => return Ok(found),
                NetlinkPayload::Error(e) => bail!("sock_diag: {e:?}"),
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += len;
        }
    }
}

/// Where the redirected connection from `peer` was addressed. The sock_diag dump (every
/// TCP socket of the namespace) is done before the daemon's core lock is taken.
pub(super) fn original_destination(
    shared: &Shared,
    peer: SocketAddr,
    local: Option<SocketAddr>,
) -> Result<Response> {
    let cookie = cookie_of(peer, local)?
        .ok_or_else(|| anyhow!("no TCP connection from {peer} in this network namespace"))?;
    let core = shared.core();
    let o = core
        .kernel
        .policy
        .original_destinations
        .get(&cookie, 0)
        .map_err(|_| anyhow!("the connection from {peer} was not redirected by agentwarden"))?;
    Ok(Response::OriginalDestination {
        address: SocketAddr::new(address_of(&o), o.port),
        session: crate::session::format_id(o.session_id),
        rule: core.rules.describe(o.rule_id, "network"),
    })
}

/// IPv4-mapped IPv6 addresses as IPv4, so either form matches.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The address an `OriginalDestination` holds, as the process addressed it.
pub(super) fn address_of(o: &agent_common::policy::OriginalDestination) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(o.addr);
    match v6.to_ipv4_mapped() {
        Some(v4) if o.family == libc::AF_INET as u16 => IpAddr::V4(v4),
        _ => IpAddr::V6(v6),
    }
}
