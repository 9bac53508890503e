//! Events sent by the kernel programs through the ring buffer, one type per file.
//!
//! Every record starts with an [`EventHeader`] whose `kind` (a stable number, see
//! [`EventKind`]) tells which body follows. Records with a path are sent only up to the
//! used length of the path, so the user side zero-fills the tail when decoding.

mod cgroup;
mod connect;
mod enrol;
mod exec;
mod exit;
mod fork;
mod header;
mod net_decision;
mod open;
mod path;
mod syscall;

pub use cgroup::CgroupEvent;
pub use connect::ConnectEvent;
pub use enrol::EnrolEvent;
pub use exec::{ARGV_MAX, ARGV_TRUNCATED, ExecEvent};
pub use exit::ExitEvent;
pub use fork::ForkEvent;
pub use header::{COMM_LEN, EventHeader, EventKind};
pub use net_decision::*;
pub use open::{OpenEvent, OpenRepeatEvent, OpenSyscall};
pub use path::{
    KPath, NAME_READ_MAX, PATH_FLAG_RAW, PATH_FLAG_TRUNCATED, PATH_MAX, PATH_WALK_DEPTH,
};
pub use syscall::SyscallDecisionEvent;

/// A path decision the kernel took (deny rules of exec and files).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelVerdict {
    /// The deny rule that matched (meaningful when `denied` is 1).
    pub rule_id: u32,
    pub denied: u8,
    /// [`crate::vocab::Action`] as `u8`.
    pub action: u8,
    /// [`crate::vocab::Layer`] as `u8`.
    pub enforced_by: u8,
    pub _pad: u8,
}
crate::assert_size!(KernelVerdict, 8);

/// Marker for `#[repr(C)]` event types that are valid for every bit pattern (integers and
/// byte arrays only), so they can be decoded by copying bytes.
///
/// # Safety
/// Implement only for `#[repr(C)]` types made of integers and arrays of integers.
pub unsafe trait Plain: Copy + 'static {}

#[cfg(feature = "user")]
pub mod decode;
