//! What the host offers: probed at daemon start and shown by `agentwarden status`.

use std::{fs, path::PathBuf};

use aya::{
    maps::MapType,
    programs::{LsmAttachType, ProgramType},
    sys,
};
use serde::{Deserialize, Serialize};

use crate::offsets::VMLINUX_BTF;

/// Host capabilities relevant to agentwarden's layers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostProbe {
    pub kernel_release: String,
    /// `/sys/kernel/btf/vmlinux` present (needed for offsets and BTF tracepoints).
    pub btf: bool,
    pub ringbuf: bool,
    /// The `bpf` LSM is in the active LSM list (`/sys/kernel/security/lsm`).
    pub bpf_lsm_active: bool,
    /// The kernel can load BPF-LSM programs at all.
    pub bpf_lsm_program_type: bool,
    pub active_lsms: String,
    /// Landlock ABI version, if Landlock is enabled.
    pub landlock_abi: Option<i32>,
    /// Mount point of the cgroup v2 hierarchy (from `/proc/self/mountinfo`).
    pub cgroup2_mount: Option<PathBuf>,
    pub cgroup_sock_addr: bool,
}

impl HostProbe {
    pub fn run() -> Self {
        let active_lsms = fs::read_to_string("/sys/kernel/security/lsm")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        Self {
            kernel_release: rustix::system::uname()
                .release()
                .to_string_lossy()
                .into_owned(),
            btf: fs::metadata(VMLINUX_BTF).is_ok(),
            ringbuf: sys::is_map_supported(MapType::RingBuf).unwrap_or(false),
            bpf_lsm_active: active_lsms.split(',').any(|l| l == "bpf"),
            bpf_lsm_program_type: sys::is_program_supported(ProgramType::Lsm(LsmAttachType::Mac))
                .unwrap_or(false),
            active_lsms,
            landlock_abi: landlock_abi(),
            cgroup2_mount: cgroup2_mount(),
            cgroup_sock_addr: sys::is_program_supported(ProgramType::CgroupSockAddr)
                .unwrap_or(false),
        }
    }
}

/// `landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)`.
fn landlock_abi() -> Option<i32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_long = 1;
    // SAFETY: the version query takes no pointers.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (v > 0).then_some(v as i32)
}

/// The cgroup v2 mount point, found in mountinfo (never assumed).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_cgroup2_mount(&text)
}

fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_among_v1_mounts() {
        let mi = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            parse_cgroup2_mount(mi),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            parse_cgroup2_mount("32 31 0:29 / /x rw - cgroup cgroup rw"),
            None
        );
    }
}
