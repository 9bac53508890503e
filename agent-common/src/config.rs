//! Configuration handed to the kernel programs at load time (as a read-only global).
//!
//! Aya's Rust eBPF has no CO-RE field relocations, so the daemon reads the offsets of the
//! kernel struct fields it needs from `/sys/kernel/btf/vmlinux` at start and passes them
//! here. No offset of one particular kernel is compiled in.

/// Byte offsets of kernel struct fields, resolved from the running kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_real_parent: u32,
    pub task_files: u32,
    pub task_fs: u32,
    pub task_mm: u32,
    pub task_signal: u32,
    pub task_exit_code: u32,
    pub signal_live: u32,
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    pub file_f_path: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_d_parent: u32,
    pub dentry_d_name: u32,
    pub qstr_len: u32,
    pub qstr_name: u32,
    pub vfsmount_mnt_root: u32,
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    pub fs_pwd: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub bprm_file: u32,
    pub file_f_inode: u32,
    pub file_f_flags: u32,
    pub inode_i_ino: u32,
    pub inode_i_sb: u32,
    pub super_block_s_dev: u32,
    pub inode_i_nlink: u32,
    pub inode_i_generation: u32,
    pub dentry_d_inode: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    pub cgroup_root: u32,
    pub cgroup_root_hierarchy_id: u32,
    /// Non-zero once the daemon filled the struct; programs do nothing before that.
    pub valid: u32,
}
crate::assert_size!(KernelOffsets, 40 * 4);

#[cfg(feature = "user")]
// SAFETY: plain-old-data, all fields are u32, no padding.
unsafe impl aya::Pod for KernelOffsets {}

/// The one entry of the `DAEMON` map: which daemon the kernel side answers to. It lives
/// in a pinned map, so it outlives the daemon that wrote it.
///
/// - `generation`: the programs of one load carry its number as a global; only the
///   programs whose number is the map's act (a starting daemon attaches its programs,
///   then switches the generation in one write: no window with none acting, none with
///   two).
/// - `tgid`, `alive`: the daemon's process; the kernel clears `alive` when that process
///   exits (any way, `SIGKILL` included), and the programs then stand in for what only
///   the daemon could do (the fanotify refusal layer is gone: a `block` kills instead).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DaemonState {
    pub generation: u64,
    pub tgid: u32,
    pub alive: u32,
    /// `DAEMON_FLAG_*`.
    pub flags: u32,
    /// Bumped by the daemon whenever a rule the kernel judges opens by changes (a
    /// compilation, a binding of rules to inodes): an open the kernel counted as a
    /// repeat of an allowed one is judged again under rules that changed since.
    pub policy_epoch: u32,
}
crate::assert_size!(DaemonState, 24);

/// The period of the kernel's timer that reports counted repeats of opens (a software
/// perf event on one CPU, its link pinned like every other).
pub const REPEATS_TIMER_NS: u64 = 500_000_000;

/// `DaemonState::flags`: the BPF-LSM self-protection hooks (`task_kill`,
/// `ptrace_access_check`, `bpf`) are attached: they refuse what the syscall-entry
/// program would otherwise kill for after the fact.
pub const DAEMON_FLAG_LSM_SELF_PROTECTION: u32 = 1;

#[cfg(feature = "user")]
// SAFETY: repr(C) integers, no padding.
unsafe impl aya::Pod for DaemonState {}
