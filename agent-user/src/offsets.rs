//! Kernel struct field offsets read from the running kernel's BTF, handed to the eBPF
//! programs at load time (aya's Rust eBPF has no CO-RE field relocations).

use std::path::Path;

use agent_common::config::KernelOffsets;
use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Btf, Type};

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The kernel's BTF, read once: the offsets and aya's loader both parse it from these
/// bytes. (btf-rs's own file reader goes through an 8 KiB buffer, one sysfs read each:
/// the larger part of a daemon's start-up, seconds of it under emulation.)
pub fn read_btf(btf_path: &Path) -> Result<Vec<u8>> {
    std::fs::read(btf_path).with_context(|| format!("reading kernel BTF {}", btf_path.display()))
}

/// Resolves every offset the programs need; fails naming the first missing field.
pub fn resolve(btf_bytes: &[u8]) -> Result<KernelOffsets> {
    let btf = Btf::from_bytes(btf_bytes).map_err(|e| anyhow!("parsing kernel BTF: {e}"))?;
    let f = |s: &str, m: &str| offset_of(&btf, s, m);
    Ok(KernelOffsets {
        task_pid: f("task_struct", "pid")?,
        task_tgid: f("task_struct", "tgid")?,
        task_real_parent: f("task_struct", "real_parent")?,
        task_files: f("task_struct", "files")?,
        task_fs: f("task_struct", "fs")?,
        task_mm: f("task_struct", "mm")?,
        task_signal: f("task_struct", "signal")?,
        task_exit_code: f("task_struct", "exit_code")?,
        signal_live: f("signal_struct", "live")?,
        files_fdt: f("files_struct", "fdt")?,
        fdtable_max_fds: f("fdtable", "max_fds")?,
        fdtable_fd: f("fdtable", "fd")?,
        file_f_path: f("file", "f_path")?,
        path_mnt: f("path", "mnt")?,
        path_dentry: f("path", "dentry")?,
        dentry_d_parent: f("dentry", "d_parent")?,
        dentry_d_name: f("dentry", "d_name")?,
        qstr_len: f("qstr", "len")?,
        qstr_name: f("qstr", "name")?,
        vfsmount_mnt_root: f("vfsmount", "mnt_root")?,
        mount_mnt: f("mount", "mnt")?,
        mount_mnt_parent: f("mount", "mnt_parent")?,
        mount_mnt_mountpoint: f("mount", "mnt_mountpoint")?,
        fs_pwd: f("fs_struct", "pwd")?,
        mm_arg_start: f("mm_struct", "arg_start")?,
        mm_arg_end: f("mm_struct", "arg_end")?,
        bprm_file: f("linux_binprm", "file")?,
        file_f_inode: f("file", "f_inode")?,
        file_f_flags: f("file", "f_flags")?,
        inode_i_ino: f("inode", "i_ino")?,
        inode_i_sb: f("inode", "i_sb")?,
        super_block_s_dev: f("super_block", "s_dev")?,
        valid: 1,
    })
}

/// Byte offset of `member` in `struct name`, looking through anonymous structs and
/// unions (as `qstr.len` and `mm_struct.arg_start` need).
pub fn offset_of(btf: &Btf, name: &str, member: &str) -> Result<u32> {
    let types = btf
        .resolve_types_by_name(name)
        .map_err(|e| anyhow!("BTF has no type `{name}`: {e}"))?;
    let s = types
        .iter()
        .find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => Some(s),
            _ => None,
        })
        .ok_or_else(|| anyhow!("BTF has no struct `{name}` with members"))?;
    let bits = find_member(btf, s, member)
        .with_context(|| format!("resolving `struct {name}.{member}` in kernel BTF"))?
        .ok_or_else(|| anyhow!("kernel BTF: `struct {name}` has no member `{member}`"))?;
    if bits % 8 != 0 {
        bail!("kernel BTF: `struct {name}.{member}` is a bitfield");
    }
    Ok(bits / 8)
}

fn find_member(btf: &Btf, s: &btf_rs::Struct, member: &str) -> Result<Option<u32>> {
    for m in &s.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == member {
            return Ok(Some(m.bit_offset()));
        }
        if name.is_empty() {
            // Anonymous struct/union: search inside and add its own offset.
            if let Type::Struct(inner) | Type::Union(inner) =
                strip(btf, btf.resolve_chained_type(m)?)?
                && let Some(off) = find_member(btf, &inner, member)?
            {
                return Ok(Some(m.bit_offset() + off));
            }
        }
    }
    Ok(None)
}

/// Skips typedefs and qualifiers.
fn strip(btf: &Btf, mut t: Type) -> Result<Type> {
    for _ in 0..16 {
        t = match &t {
            Type::Typedef(x) => btf.resolve_chained_type(x)?,
            Type::Const(x) | Type::Volatile(x) | Type::Restrict(x) => {
                btf.resolve_chained_type(x)?
            }
            Type::TypeTag(x) => btf.resolve_chained_type(x)?,
            _ => return Ok(t),
        };
    }
    bail!("BTF type chain too deep")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_btf() -> Option<Btf> {
        Btf::from_file(VMLINUX_BTF).ok()
    }

    #[test]
    fn resolves_all_offsets_from_the_running_kernel() {
        let Some(_) = host_btf() else {
            return crate::skip::skip("kernel BTF not readable");
        };
        let bytes = read_btf(Path::new(VMLINUX_BTF)).expect("btf");
        let o = resolve(&bytes).expect("offsets");
        assert_eq!(o.valid, 1);
        // `struct path { struct vfsmount *mnt; struct dentry *dentry; }` on every kernel.
        assert_eq!((o.path_mnt, o.path_dentry), (0, 8));
        // tgid directly follows pid in task_struct.
        assert_eq!(o.task_tgid, o.task_pid + 4);
        assert!(o.mm_arg_end > o.mm_arg_start);
    }

    #[test]
    fn missing_member_is_named() {
        let Some(btf) = host_btf() else {
            return crate::skip::skip("kernel BTF not readable");
        };
        let err = offset_of(&btf, "task_struct", "no_such_field").unwrap_err();
        assert!(
            format!("{err:#}").contains("no member `no_such_field`"),
            "{err:#}"
        );
    }
}
