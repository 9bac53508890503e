use super::EventHeader;

/// A process outside every session executed a program a profile's `match:` selector
/// names: the kernel started a new session for it (the header's `session_id`) before
/// the program's first instruction. The header describes the process after the exec.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnrolEvent {
    pub header: EventHeader,
    /// The selector's index in `SELECTORS`.
    pub selector: u32,
    pub profile_id: u32,
}
crate::assert_size!(EnrolEvent, 80);
// SAFETY: repr(C), integers and byte arrays only.
unsafe impl super::Plain for EnrolEvent {}
