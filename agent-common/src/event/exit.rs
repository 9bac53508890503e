use super::EventHeader;

/// The last thread of a session process exited; the process leaves the session.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitEvent {
    pub header: EventHeader,
    /// `task->exit_code` in wait-status form: `code << 8`, or the terminating signal in
    /// the low 7 bits.
    pub exit_code: u32,
    pub _pad: u32,
}
crate::assert_size!(ExitEvent, 80);
// SAFETY: repr(C), integers and byte arrays only.
unsafe impl super::Plain for ExitEvent {}
