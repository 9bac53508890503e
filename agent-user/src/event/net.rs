//! `net_decision`: a connect or send judged by the cgroup layer on the kernel's copy of
//! the destination, or the creation of a socket no destination rule can judge (raw,
//! ICMP), judged by its kind.

use std::net::Ipv6Addr;

use agent_common::event::{NET_OP_SENDMSG, NET_OP_SOCKET, NetDecisionEvent};
use serde::{Deserialize, Serialize};

/// A network operation judged by the cgroup layer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetInfo {
    /// `connect`, `sendmsg`, or `socket` (a raw or ICMP socket's creation).
    pub op: String,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, `raw` or the protocol number.
    pub protocol: String,
    /// `inet` or `inet6`, as the process used it.
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
        protocol: match e.protocol {
            6 => "tcp".to_owned(),
            17 => "udp".to_owned(),
            1 => "icmp".to_owned(),
            58 => "icmpv6".to_owned(),
            255 => "raw".to_owned(),
            n => n.to_string(),
        },
        family: match e.family {
            10 => "inet6",
            17 => "packet",
            _ => "inet",
        }
        .to_owned(),
        address: if socket {
            String::new()
        } else {
            ip.to_ipv4_mapped()
                .map_or(ip.to_string(), |v4| v4.to_string())
        },
        port: e.port,
    }
}
