//! Types shared by the kernel programs (`agent-ebpf`) and the daemon (`agent-user`).
//!
//! Every type that crosses the kernel/user boundary is defined exactly once, here, as
//! `#[repr(C)]` with explicit padding, and its size is checked at compile time so both
//! sides agree on the layout.
// Userspace (the `user` feature) and unit tests have std; the kernel programs do not.
#![cfg_attr(not(any(test, feature = "user")), no_std)]

pub mod config;
pub mod event;
pub mod maps;
pub mod policy;
pub mod selector;
pub mod session;
pub mod stats;
pub mod vocab;

/// Checks a type's size at compile time (the layout is an ABI between kernel and user).
#[macro_export]
macro_rules! assert_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $n);
    };
}
