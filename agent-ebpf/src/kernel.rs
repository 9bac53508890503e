//! Reads of kernel structs at offsets resolved from BTF by the daemon (see
//! `agent_common::config`).

use agent_common::config::KernelOffsets;
use aya_ebpf::helpers::bpf_probe_read_kernel;

/// Filled by the daemon before load (`EbpfLoader::set_global`).
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets {
    task_pid: 0,
    task_tgid: 0,
    task_real_parent: 0,
    task_files: 0,
    task_fs: 0,
    task_mm: 0,
    task_signal: 0,
    task_exit_code: 0,
    signal_live: 0,
    files_fdt: 0,
    fdtable_max_fds: 0,
    fdtable_fd: 0,
    file_f_path: 0,
    path_mnt: 0,
    path_dentry: 0,
    dentry_d_parent: 0,
    dentry_d_name: 0,
    qstr_len: 0,
    qstr_name: 0,
    vfsmount_mnt_root: 0,
    mount_mnt: 0,
    mount_mnt_parent: 0,
    mount_mnt_mountpoint: 0,
    fs_pwd: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    bprm_file: 0,
    file_f_inode: 0,
    file_f_flags: 0,
    inode_i_ino: 0,
    inode_i_sb: 0,
    super_block_s_dev: 0,
    inode_i_nlink: 0,
    inode_i_generation: 0,
    dentry_d_inode: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    cgroup_root: 0,
    cgroup_root_hierarchy_id: 0,
    valid: 0,
};

/// Reads one offset. Volatile so the compiler cannot fold the zero initialiser.
macro_rules! off {
    ($field:ident) => {
        // SAFETY: reading a field of a static.
        unsafe { core::ptr::read_volatile(&$crate::kernel::offsets().$field) }
    };
}
pub(crate) use off;

#[inline(always)]
pub fn offsets() -> &'static KernelOffsets {
    &OFFSETS
}

/// True once the daemon supplied offsets.
#[inline(always)]
pub fn ready() -> bool {
    off!(valid) != 0
}

/// Reads a `T` at `base + offset` from kernel memory.
#[inline(always)]
pub fn read<T: Copy>(base: *const u8, offset: u32) -> Option<T> {
    if base.is_null() {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel tolerates any address (it fails instead of faulting).
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()).ok() }
}

/// Reads a pointer field.
#[inline(always)]
pub fn read_ptr(base: *const u8, offset: u32) -> Option<*const u8> {
    read::<*const u8>(base, offset).filter(|p| !p.is_null())
}

/// tgid of `task->real_parent`.
#[inline(always)]
pub fn parent_tgid(task: *const u8) -> u32 {
    read_ptr(task, off!(task_real_parent))
        .and_then(|parent| read::<u32>(parent, off!(task_tgid)))
        .unwrap_or(0)
}
