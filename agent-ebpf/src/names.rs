//! Changes to the names of denied files, refused by the BPF-LSM path hooks where the
//! kernel runs them: creating, removing, renaming or linking a name a file deny rule
//! covers, and truncating such a file by name. `file_open` refuses opens only; without
//! these an agent could remove the daemon's audit store or pinned objects, move a denied
//! tree out of its rule's reach, or plant a file where a rule expects none.
//!
//! Each hook judges the name's full path (the directory's mount with the entry's dentry:
//! the same resolved path `file_open` sees) and, for a name that exists, the inode it
//! names (a hard link or bind mount of a denied file). The decision follows the
//! profile's file rules (`block` refuses, `kill` refuses and kills; monitor and alert
//! leave these calls alone), except the daemon's self-protection, refused in every mode,
//! and is recorded as a syscall decision of layer `lsm` under the call that reached the
//! hook.

use agent_common::{
    event::{KPath, KernelVerdict},
    policy::CATEGORY_FILE,
    stats::Stat,
    vocab::Action,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::{lsm, map},
    maps::PerCpuArray,
    programs::LsmContext,
};

use crate::{
    kernel::{self, off, read_ptr},
    maps::{count, current_session},
    path::resolve,
    pathrules::{lsm_decide_name, lsm_wanted},
    syscalls::record,
};

/// The resolved name being judged (too large for the stack).
#[map]
static NAME_SCRATCH: PerCpuArray<KPath> = PerCpuArray::with_max_entries(1, 0);

/// `orig_ax` in x86_64's `struct pt_regs` (an ABI): the number of the current syscall.
const ORIG_AX: usize = 120;
/// Past every x86_64 syscall number: a task that is not in a syscall (an io_uring
/// worker) reads as something else.
const NR_LIMIT: u64 = 1024;

/// The hooks' own calls, named when the current syscall cannot be read.
const NR_TRUNCATE: u32 = 76;
const NR_MKDIRAT: u32 = 258;
const NR_MKNODAT: u32 = 259;
const NR_UNLINKAT: u32 = 263;
const NR_LINKAT: u32 = 265;
const NR_SYMLINKAT: u32 = 266;
const NR_RENAMEAT2: u32 = 316;

/// The syscall the current task is in (`openat` for a create by `O_CREAT`, `rename` or
/// `renameat2`, io_uring's `io_uring_enter`), or `fallback`.
#[inline(always)]
fn current_nr(fallback: u32) -> u32 {
    // SAFETY: helpers on the current task; the registers are read through the faulting
    // copy, never dereferenced.
    let nr = unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u8;
        bpf_probe_read_kernel(regs.wrapping_add(ORIG_AX).cast::<u64>()).unwrap_or(u64::MAX)
    };
    if nr < NR_LIMIT { nr as u32 } else { fallback }
}

/// Judges the name `dentry` in the mount of `dir` (a `struct path *`), with the inode it
/// names when it exists; records and returns `-EPERM` when a rule refuses it.
#[inline(always)]
fn judge(dir: *const u8, dentry: *const u8, nr: u32) -> i32 {
    if !kernel::ready() {
        return 0;
    }
    let Some(entry) = current_session((bpf_get_current_pid_tgid() >> 32) as u32) else {
        return 0;
    };
    if !lsm_wanted(&entry, CATEGORY_FILE) {
        return 0;
    }
    let Some(mnt) = read_ptr(dir, off!(path_mnt)) else {
        return 0;
    };
    let Some(scratch) = NAME_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot, exclusively ours while the program runs.
    let path = unsafe { &mut *scratch };
    // A `struct path` of the entry itself: `{ mnt, dentry }` (the layout every kernel
    // has, checked by the daemon's offsets test), read by the walk like the kernel's own.
    let name: [*const u8; 2] = [mnt, dentry];
    resolve(name.as_ptr().cast(), path);
    let inode = read_ptr(dentry, off!(dentry_d_inode));
    let mut verdict = KernelVerdict::default();
    let ret = lsm_decide_name(path, inode, &entry, &mut verdict);
    if ret == 0 {
        return 0;
    }
    count(Stat::LsmFileDenied);
    let action = if verdict.action == Action::Killed as u8 {
        Action::Killed
    } else {
        Action::Blocked
    };
    record(
        &entry,
        current_nr(nr),
        verdict.rule_id,
        u64::MAX,
        i64::from(ret),
        action,
        agent_common::vocab::Layer::Lsm,
    );
    ret
}

/// `path_unlink(const struct path *dir, struct dentry *dentry)`.
#[lsm(hook = "path_unlink")]
pub fn path_unlink(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    judge(ctx.arg(0), ctx.arg(1), NR_UNLINKAT)
}

/// `path_rmdir(const struct path *dir, struct dentry *dentry)`.
#[lsm(hook = "path_rmdir")]
pub fn path_rmdir(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    judge(ctx.arg(0), ctx.arg(1), NR_UNLINKAT)
}

/// `path_mkdir(const struct path *dir, struct dentry *dentry, umode_t mode)`.
#[lsm(hook = "path_mkdir")]
pub fn path_mkdir(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    judge(ctx.arg(0), ctx.arg(1), NR_MKDIRAT)
}

/// `path_mknod(const struct path *dir, struct dentry *dentry, umode_t mode, unsigned int
/// dev)`: also every regular file an `open(O_CREAT)` creates, and a socket's `bind`.
#[lsm(hook = "path_mknod")]
pub fn path_mknod(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    judge(ctx.arg(0), ctx.arg(1), NR_MKNODAT)
}

/// `path_symlink(const struct path *dir, struct dentry *dentry, const char *old_name)`.
#[lsm(hook = "path_symlink")]
pub fn path_symlink(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    judge(ctx.arg(0), ctx.arg(1), NR_SYMLINKAT)
}

/// `path_link(struct dentry *old_dentry, const struct path *new_dir, struct dentry
/// *new_dentry)`: the new name, and the file linked (a link is on one mount).
#[lsm(hook = "path_link")]
pub fn path_link(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let ret = judge(ctx.arg(1), ctx.arg(2), NR_LINKAT);
    if ret != 0 {
        return ret;
    }
    judge(ctx.arg(1), ctx.arg(0), NR_LINKAT)
}

/// `path_rename(const struct path *old_dir, struct dentry *old_dentry, const struct path
/// *new_dir, struct dentry *new_dentry, unsigned int flags)`: both names (the new one
/// may exist and be replaced, or swapped with `RENAME_EXCHANGE`).
#[lsm(hook = "path_rename")]
pub fn path_rename(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(5);
    if previous != 0 {
        return previous;
    }
    let ret = judge(ctx.arg(0), ctx.arg(1), NR_RENAMEAT2);
    if ret != 0 {
        return ret;
    }
    judge(ctx.arg(2), ctx.arg(3), NR_RENAMEAT2)
}

/// `path_truncate(const struct path *path)`: `truncate(2)` by name (an open with
/// `O_TRUNC` meets `file_open` first).
#[lsm(hook = "path_truncate")]
pub fn path_truncate(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let path: *const u8 = ctx.arg(0);
    let Some(dentry) = read_ptr(path, off!(path_dentry)) else {
        return 0;
    };
    judge(path, dentry, NR_TRUNCATE)
}
