use super::EventHeader;

/// A process of a session created a child process (kind `Fork`), or the child could not
/// be tracked because the session map is full (kind `SessionMapFull`). The header
/// describes the parent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForkEvent {
    pub header: EventHeader,
    pub child_tgid: u32,
    pub _pad: u32,
}
crate::assert_size!(ForkEvent, 80);
// SAFETY: repr(C), integers and byte arrays only.
unsafe impl super::Plain for ForkEvent {}
