//! The kernel's own view of a file's identity, for binding deny rules to inodes.
//!
//! `stat(2)` does not always report what `file->f_inode` holds (overlayfs maps device and
//! inode numbers), so the daemon learns `(dev, ino)` the way the programs will see them:
//! it opens the file itself, and the `openat` exit records the opened file's identity for
//! the daemon's thread, with the inode's generation, which tells the bound file from a
//! later one given the same number.

use aya_ebpf::{macros::map, maps::LruHashMap};

use crate::{
    kernel::{off, read, read_ptr},
    path::fd_file,
};

/// The daemon's tgid, set at load: only its own opens are recorded.
#[unsafe(no_mangle)]
static BINDER_TGID: u32 = 0;

/// pid_tgid of a daemon thread → `[ino, dev | i_generation << 32]` of the file its last
/// open returned.
#[map]
static BIND_RESULT: LruHashMap<u64, [u64; 2]> = LruHashMap::with_max_entries(64, 0);

/// Whether `pid_tgid` is a daemon thread (one global read for every other process).
#[inline(always)]
pub fn is_binder(pid_tgid: u64) -> bool {
    // SAFETY: reading a static; volatile so the zero initialiser is not folded.
    let binder = unsafe { core::ptr::read_volatile(&BINDER_TGID) };
    binder != 0 && (pid_tgid >> 32) as u32 == binder
}

/// Records the identity of the file behind `fd`, just returned to the daemon's thread.
#[inline(always)]
pub fn record(pid_tgid: u64, task: *const u8, fd: i64) {
    if fd < 0 {
        return;
    }
    let Some(file) = fd_file(task, fd as u32) else {
        return;
    };
    let Some(inode) = read_ptr(file, off!(file_f_inode)) else {
        return;
    };
    let (Some(ino), Some(sb), Some(generation)) = (
        read::<u64>(inode, off!(inode_i_ino)),
        read_ptr(inode, off!(inode_i_sb)),
        read::<u32>(inode, off!(inode_i_generation)),
    ) else {
        return;
    };
    let Some(dev) = read::<u32>(sb, off!(super_block_s_dev)) else {
        return;
    };
    let _ = BIND_RESULT.insert(
        pid_tgid,
        [ino, u64::from(dev) | (u64::from(generation) << 32)],
        0,
    );
}
