use super::EventHeader;
use crate::selector::CGROUP_PATH_MAX;

/// A cgroup of the v2 hierarchy was created while selectors name container labels: the
/// daemon asks the container runtime whose container it is and, where its labels match
/// a selector, gives the cgroup the selector's bits before the container's entrypoint
/// runs. The header describes the creating process (the runtime).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupEvent {
    pub header: EventHeader,
    pub cgroup_id: u64,
    pub path_len: u32,
    pub _pad: u32,
    /// The cgroup's path from the hierarchy's root (`path_len` bytes).
    pub path: [u8; CGROUP_PATH_MAX],
}
crate::assert_size!(CgroupEvent, 72 + 16 + CGROUP_PATH_MAX);
// SAFETY: repr(C), integers and byte arrays only.
unsafe impl super::Plain for CgroupEvent {}
