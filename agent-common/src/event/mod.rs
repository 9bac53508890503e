//! Events sent by the kernel programs through the ring buffer, one type per file.
//!
//! Every record starts with an [`EventHeader`] whose `kind` (a stable number, see
//! [`EventKind`]) tells which body follows. Records with a path are sent only up to the
//! used length of the path, so the user side zero-fills the tail when decoding.

mod connect;
mod exec;
mod exit;
mod fork;
mod header;
mod net_decision;
mod open;
mod path;

pub use connect::ConnectEvent;
pub use exec::{ARGV_MAX, ARGV_TRUNCATED, ExecEvent};
pub use exit::ExitEvent;
pub use fork::ForkEvent;
pub use header::{COMM_LEN, EventHeader, EventKind};
pub use net_decision::*;
pub use open::{OpenEvent, OpenSyscall};
pub use path::{
    KPath, NAME_READ_MAX, PATH_FLAG_RAW, PATH_FLAG_TRUNCATED, PATH_MAX, PATH_WALK_DEPTH,
};

/// Marker for `#[repr(C)]` event types that are valid for every bit pattern (integers and
/// byte arrays only), so they can be decoded by copying bytes.
///
/// # Safety
/// Implement only for `#[repr(C)]` types made of integers and arrays of integers.
pub unsafe trait Plain: Copy + 'static {}

#[cfg(feature = "user")]
pub mod decode;
