use super::EventHeader;

/// A process of a session called `connect` on an IPv4 or IPv6 socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectEvent {
    pub header: EventHeader,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Destination port, host byte order.
    pub port: u16,
    pub fd: i32,
    /// 0, or `-errno` (`-EINPROGRESS` for a non-blocking connect).
    pub ret: i64,
    /// IPv4 in the first 4 bytes, or IPv6, network byte order.
    pub addr: [u8; 16],
}
crate::assert_size!(ConnectEvent, 72 + 32);
// SAFETY: repr(C), integers and byte arrays only.
unsafe impl super::Plain for ConnectEvent {}
