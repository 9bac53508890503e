//! `net_decision`: a connect or send judged by the cgroup layer on the kernel's copy of
//! the destination, or the creation of a socket no destination rule can judge (raw,
//! packet, ICMP), judged by its kind.

use std::net::Ipv6Addr;

use agent_common::event::{NET_OP_SENDMSG, NET_OP_SOCKET, NetDecisionEvent};
use serde::{Deserialize, Serialize};

/// A network operation judged by the cgroup layer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetInfo {
    /// `connect`, `sendmsg`, or `socket` (a raw, packet or ICMP socket's creation).
    pub op: String,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, `raw` or the protocol number.
    pub protocol: String,
    /// `inet`, `inet6` or `packet`, as the process used it.
    pub family: String,
    /// IPv4-mapped IPv6 addresses are shown (and judged) as IPv4; empty for `socket`.
    pub address: String,
    pub port: u16,
}

pub(super) fn net_info(e: &NetDecisionEvent) -> NetInfo {
    let ip = Ipv6Addr::from(e.addr);
    let socket = e.op == NET_OP_SOCKET;
    NetInfo {
        op: match e.op {
            NET_OP_SENDMSG => "sendmsg",
            NET_OP_SOCKET => "socket",
            _ => "connect",
        }
        .to_owned(),
        protocol: match (e.family, e.protocol) {
            // A packet socket's protocol is an ethertype: shown as its number.
            (17, n) => n.to_string(),
            (_, 6) => "tcp".to_owned(),
            (_, 17) => "udp".to_owned(),
            (_, 1) => "icmp".to_owned(),
            (_, 58) => "icmpv6".to_owned(),
            (_, 255) => "raw".to_owned(),
            (_, n) => n.to_string(),
        },
        family: match e.family {
            10 => "inet6".to_owned(),
            2 => "inet".to_owned(),
            17 => "packet".to_owned(),
            n => n.to_string(),
        },
        address: if socket {
            String::new()
        } else {
            ip.to_ipv4_mapped()
                .map_or(ip.to_string(), |v4| v4.to_string())
        },
        port: e.port,
    }
}
