//! Resolving a `struct path` to the absolute path the kernel sees, by walking dentries and
//! mounts (`bpf_d_path` is only offered to LSM and tracing programs, not tracepoints).
//!
//! Decisions and events use this instead of the syscall's argument string, which may be
//! relative, contain `..`, name a symlink, or change after it was read.

use core::ffi::c_void;

use agent_common::{
    event::{KPath, NAME_READ_MAX, PATH_FLAG_RAW, PATH_FLAG_TRUNCATED, PATH_MAX, PATH_WALK_DEPTH},
    stats::Stat,
};
use aya_ebpf::helpers::generated::{bpf_loop, bpf_probe_read_kernel_str, bpf_probe_read_user_str};

use crate::{
    kernel::{off, read, read_ptr},
    maps::count,
};

/// State of one path walk, shared with the [`walk_step`] callback of `bpf_loop`.
#[repr(C)]
struct Walk {
    out: *mut KPath,
    dentry: *const u8,
    vfsmnt: *const u8,
    mnt: *const u8,
    complete: u64,
}

/// Writes the components of `path` (a `struct path *`) leaf-first into `out`, each
/// followed by `/`. Crosses mount points up to the root of the mount namespace.
///
/// The walk runs under `bpf_loop`, so the verifier checks one step once instead of every
/// unrolled level (an open-coded loop over 48 levels exceeds its complexity budget).
#[inline(always)]
pub fn resolve(path: *const u8, out: &mut KPath) {
    out.len = 0;
    out.flags = 0;
    let (Some(dentry), Some(vfsmnt)) = (
        read_ptr(path, off!(path_dentry)),
        read_ptr(path, off!(path_mnt)),
    ) else {
        return;
    };
    let mut walk = Walk {
        out: out as *mut KPath,
        dentry,
        vfsmnt,
        // `struct vfsmount` is embedded in `struct mount`: container_of.
        mnt: vfsmnt.wrapping_sub(off!(mount_mnt) as usize),
        complete: 0,
    };
    // SAFETY: `walk_step` matches the callback ABI; `walk` outlives the call.
    unsafe {
        bpf_loop(
            PATH_WALK_DEPTH,
            walk_step as *mut c_void,
            (&mut walk as *mut Walk).cast(),
            0,
        );
    }
    if walk.complete == 0 {
        out.flags |= PATH_FLAG_TRUNCATED;
        count(Stat::PathTruncated);
    }
}

/// One level of the walk; returns 1 to stop. The write position lives in `out.len`
/// (map memory), so every step looks alike to the verifier and the loop converges.
extern "C" fn walk_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Walk` passed to bpf_loop by `resolve`.
    let w = unsafe { &mut *ctx.cast::<Walk>() };
    // SAFETY: `out` points at a live per-CPU map value for the duration of the walk.
    let out = unsafe { &mut *w.out };
    let dentry = w.dentry;
    let mnt_root = read_ptr(w.vfsmnt, off!(vfsmount_mnt_root)).unwrap_or(core::ptr::null());
    let parent = read_ptr(dentry, off!(dentry_d_parent)).unwrap_or(core::ptr::null());
    if dentry == mnt_root || dentry == parent || parent.is_null() {
        let mnt_parent = read_ptr(w.mnt, off!(mount_mnt_parent)).unwrap_or(core::ptr::null());
        if dentry == mnt_root && !mnt_parent.is_null() && mnt_parent != w.mnt {
            // Root of a mount: continue at its mount point in the parent mount.
            let Some(mountpoint) = read_ptr(w.mnt, off!(mount_mnt_mountpoint)) else {
                return 1;
            };
            w.dentry = mountpoint;
            w.mnt = mnt_parent;
            w.vfsmnt = mnt_parent.wrapping_add(off!(mount_mnt) as usize);
            return 0;
        }
        w.complete = 1;
        return 1;
    }
    let pos = usize::from(out.len);
    if pos > PATH_MAX - NAME_READ_MAX {
        return 1;
    }
    let Some(name) = read_ptr(dentry, off!(dentry_d_name) + off!(qstr_name)) else {
        return 1;
    };
    let at = pos & (PATH_MAX - 1);
    // SAFETY: `at + NAME_READ_MAX <= PATH_MAX`, inside `out.bytes`.
    let n = unsafe {
        bpf_probe_read_kernel_str(
            out.bytes.as_mut_ptr().add(at).cast(),
            NAME_READ_MAX as u32,
            name.cast(),
        )
    };
    if n <= 1 {
        return 1;
    }
    let end = at + (n as usize & (2 * NAME_READ_MAX - 1));
    // Replace the NUL with the separator.
    out.bytes[(end - 1) & (PATH_MAX - 1)] = b'/';
    out.len = end as u16;
    w.dentry = parent;
    0
}

/// Copies a user-space path string as passed to the syscall (used when the syscall failed
/// and there is no `struct file` to resolve).
#[inline(always)]
pub fn raw_user(ptr: *const u8, out: &mut KPath) {
    // SAFETY: the helper faults safely; the destination is `PATH_MAX` bytes.
    let n = unsafe {
        bpf_probe_read_user_str(out.bytes.as_mut_ptr().cast(), PATH_MAX as u32, ptr.cast())
    };
    out.flags = PATH_FLAG_RAW;
    out.len = if n > 1 { (n - 1) as u16 } else { 0 };
    if n as usize >= PATH_MAX {
        out.flags |= PATH_FLAG_TRUNCATED;
    }
}

/// Resolves the `struct path` embedded at `offset` in `base` (a `struct file` or
/// `struct fs_struct`).
#[inline(always)]
pub fn resolve_embedded(base: Option<*const u8>, offset: u32, out: &mut KPath) {
    match base {
        Some(b) => resolve(b.wrapping_add(offset as usize), out),
        None => {
            out.len = 0;
            out.flags = PATH_FLAG_TRUNCATED;
        }
    }
}

/// `task->files->fdt->fd[fd]`.
#[inline(always)]
pub fn fd_file(task: *const u8, fd: u32) -> Option<*const u8> {
    let files = read_ptr(task, off!(task_files))?;
    let fdt = read_ptr(files, off!(files_fdt))?;
    let max_fds = read::<u32>(fdt, off!(fdtable_max_fds))?;
    if fd >= max_fds {
        return None;
    }
    let fds = read_ptr(fdt, off!(fdtable_fd))?;
    read_ptr(fds, fd.wrapping_mul(8))
}
