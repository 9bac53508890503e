/// Bytes reserved for one path (the kernel's `PATH_MAX`).
pub const PATH_MAX: usize = 4096;
/// Upper bound of one path component read (`NAME_MAX` + NUL).
pub const NAME_READ_MAX: usize = 256;
/// Directory levels the kernel walks up from a dentry before it gives up (truncated).
pub const PATH_WALK_DEPTH: u32 = 128;

/// The path was longer or deeper than the kernel walk allows; it is a suffix.
pub const PATH_FLAG_TRUNCATED: u16 = 1;
/// The path is the raw string the process passed (the syscall failed, so there is no
/// `struct file` to resolve); it may be relative and is in normal order.
pub const PATH_FLAG_RAW: u16 = 2;

/// A path as the kernel resolved it.
///
/// When resolved from a dentry (no [`PATH_FLAG_RAW`]), `bytes[..len]` holds the components
/// from the leaf up to the root, each followed by `/` (`hostname/etc/` for
/// `/etc/hostname`): the kernel walks `d_parent` upwards and appending keeps the
/// verifier's bounds simple. The user side reverses the components.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KPath {
    pub len: u16,
    pub flags: u16,
    pub _pad: u32,
    pub bytes: [u8; PATH_MAX],
}
crate::assert_size!(KPath, 8 + PATH_MAX);
// SAFETY: repr(C), integers and byte arrays only.
unsafe impl super::Plain for KPath {}
