use super::EventHeader;

pub const NET_OP_CONNECT: u8 = 0;
pub const NET_OP_SENDMSG: u8 = 1;
/// The creation of a socket whose traffic no destination rule can judge (raw, packet,
/// ICMP): decided by kind, before the socket exists (`cgroup/sock_create`).
pub const NET_OP_SOCKET: u8 = 2;

/// A network decision taken by a cgroup sock_addr program on the kernel's own copy of
/// the destination address, before the operation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetDecisionEvent {
    pub header: EventHeader,
    /// `AF_INET` or `AF_INET6` as the process used it.
    pub family: u16,
    /// Destination port, host byte order.
    pub port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u16,
    /// `NET_OP_*`.
    pub op: u8,
    /// 1 when the profile denies this destination.
    pub denied: u8,
    /// [`crate::vocab::Action`] as `u8`.
    pub action: u8,
    /// [`crate::vocab::Layer`] as `u8`.
    pub enforced_by: u8,
    pub _pad: u16,
    /// The rule that decided (`RULE_DEFAULT` for the category default).
    pub rule_id: u32,
    /// Destination as IPv6 (IPv4 as `::ffff:a.b.c.d`), network byte order.
    pub addr: [u8; 16],
}
crate::assert_size!(NetDecisionEvent, 72 + 32);
// SAFETY: repr(C), integers and byte arrays only.
unsafe impl super::Plain for NetDecisionEvent {}
