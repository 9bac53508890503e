//! `connect`: the destination the process connected to and the result.

use std::net::{Ipv4Addr, Ipv6Addr};

use agent_common::event::ConnectEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnectInfo {
    pub family: String,
    pub address: String,
    pub port: u16,
    pub fd: i32,
    /// 0, or `-errno`.
    pub result: i64,
}

pub(super) fn connect_info(e: &ConnectEvent) -> ConnectInfo {
    let (family, address) = match e.family {
        2 => (
            "inet",
            Ipv4Addr::new(e.addr[0], e.addr[1], e.addr[2], e.addr[3]).to_string(),
        ),
        _ => ("inet6", Ipv6Addr::from(e.addr).to_string()),
    };
    ConnectInfo {
        family: family.to_owned(),
        address,
        port: e.port,
        fd: e.fd,
        result: e.ret,
    }
}
