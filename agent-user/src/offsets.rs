//! Kernel struct field offsets read from the running kernel's BTF, handed to the eBPF
//! programs at load time (aya's Rust eBPF has no CO-RE field relocations).
//!
//! The lookup reads the BTF type section directly: it needs the members of some dozen
//! structs, and indexing every name of vmlinux's ~100 000 types first (what btf-rs
//! does) was half of the daemon's start-up — 120 ms in a release build here, 0.5 s in a
//! debug build, 1–2 s under emulation in the VM tier. aya parses the same bytes for the
//! loader but keeps its type lookups private. A unit test checks every offset against
//! btf-rs on the running kernel.

use std::{collections::HashMap, path::Path};

use agent_common::config::KernelOffsets;
use anyhow::{Context as _, Result, anyhow, bail};

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The kernel's BTF, read once: the offsets and aya's loader both parse these bytes.
pub fn read_btf(btf_path: &Path) -> Result<Vec<u8>> {
    std::fs::read(btf_path).with_context(|| format!("reading kernel BTF {}", btf_path.display()))
}

/// The offsets the programs read, each field of [`KernelOffsets`] with its
/// `struct.member`, written once: the macro makes both the list of fields (what is
/// looked up, and what the unit test checks against btf-rs) and [`resolve`].
macro_rules! kernel_offsets {
    ($($field:ident: $s:ident . $m:ident),+ $(,)?) => {
        /// Every `(struct, member)` the programs read.
        const FIELDS: &[(&str, &str)] = &[$((stringify!($s), stringify!($m))),+];

        /// Resolves every offset the programs need; fails naming the first missing
        /// field.
        pub fn resolve(btf_bytes: &[u8]) -> Result<KernelOffsets> {
            let btf = RawBtf::parse(btf_bytes, FIELDS.iter().map(|(s, _)| *s))?;
            Ok(KernelOffsets {
                $($field: btf.offset_of(stringify!($s), stringify!($m))?,)+
                valid: 1,
            })
        }
    };
}

kernel_offsets! {
    task_pid: task_struct.pid,
    task_tgid: task_struct.tgid,
    task_real_parent: task_struct.real_parent,
    task_files: task_struct.files,
    task_fs: task_struct.fs,
    task_mm: task_struct.mm,
    task_signal: task_struct.signal,
    task_exit_code: task_struct.exit_code,
    signal_live: signal_struct.live,
    files_fdt: files_struct.fdt,
    fdtable_max_fds: fdtable.max_fds,
    fdtable_fd: fdtable.fd,
    file_f_path: file.f_path,
    path_mnt: path.mnt,
    path_dentry: path.dentry,
    dentry_d_parent: dentry.d_parent,
    dentry_d_name: dentry.d_name,
    qstr_len: qstr.len,
    qstr_name: qstr.name,
    vfsmount_mnt_root: vfsmount.mnt_root,
    mount_mnt: mount.mnt,
    mount_mnt_parent: mount.mnt_parent,
    mount_mnt_mountpoint: mount.mnt_mountpoint,
    fs_pwd: fs_struct.pwd,
    mm_arg_start: mm_struct.arg_start,
    mm_arg_end: mm_struct.arg_end,
    bprm_file: linux_binprm.file,
    file_f_inode: file.f_inode,
    file_f_flags: file.f_flags,
    inode_i_ino: inode.i_ino,
    inode_i_sb: inode.i_sb,
    super_block_s_dev: super_block.s_dev,
    inode_i_nlink: inode.i_nlink,
    inode_i_generation: inode.i_generation,
    dentry_d_inode: dentry.d_inode,
    cgroup_kn: cgroup.kn,
    kernfs_node_id: kernfs_node.id,
    cgroup_root: cgroup.root,
    cgroup_root_hierarchy_id: cgroup_root.hierarchy_id,
}

// BTF kinds (include/uapi/linux/btf.h).
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;
const BTF_MAGIC: u16 = 0xeb9f;
/// `struct btf_type`: name_off, info, size/type.
const TYPE_HEADER: usize = 12;

/// The type section of a BTF blob, indexed by type id, plus the wanted structs by name.
struct RawBtf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Byte position of each type id's record in `types` (id 0 is `void`).
    at: Vec<u32>,
    structs: HashMap<&'a str, u32>,
}

/// One `struct btf_type`.
struct TypeRecord<'a> {
    kind: u32,
    vlen: usize,
    kflag: bool,
    /// `size` or `type`, by kind.
    size_type: u32,
    /// What follows the header (members of a struct or union).
    rest: &'a [u8],
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl<'a> RawBtf<'a> {
    /// Indexes the type section and notes the first struct with members of each name
    /// in `wanted`.
    fn parse(b: &'a [u8], wanted: impl Iterator<Item = &'a str>) -> Result<Self> {
        let bad = || anyhow!("kernel BTF: truncated or malformed header");
        let magic = u16::from_ne_bytes(b.get(0..2).ok_or_else(bad)?.try_into()?);
        if magic != BTF_MAGIC {
            bail!("kernel BTF: bad magic {magic:#x} (not BTF, or another byte order)");
        }
        let field = |at| u32_at(b, at).map(|v| v as usize).ok_or_else(bad);
        let (hdr_len, type_off, type_len) = (field(4)?, field(8)?, field(12)?);
        let (str_off, str_len) = (field(16)?, field(20)?);
        let types = b
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or_else(bad)?;
        let strings = b
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or_else(bad)?;
        let mut wanted: HashMap<&str, Option<u32>> = wanted.map(|w| (w, None)).collect();
        let mut btf = RawBtf {
            types,
            strings,
            at: vec![0],
            structs: HashMap::new(),
        };
        let mut pos = 0usize;
        while pos < types.len() {
            let id = btf.at.len() as u32;
            btf.at.push(pos as u32);
            let t = btf.record(id)?;
            if t.kind == KIND_STRUCT
                && t.vlen > 0
                && let Some(slot) = btf
                    .name(u32_at(types, pos).unwrap_or(0))
                    .ok()
                    .and_then(|n| wanted.get_mut(n))
                && slot.is_none()
            {
                *slot = Some(id);
            }
            pos += TYPE_HEADER + extra_len(t.kind, t.vlen, id)?;
        }
        btf.structs = wanted
            .into_iter()
            .filter_map(|(n, id)| Some((n, id?)))
            .collect();
        Ok(btf)
    }

    fn record(&self, id: u32) -> Result<TypeRecord<'a>> {
        let types: &'a [u8] = self.types;
        let pos = *self
            .at
            .get(id as usize)
            .ok_or_else(|| anyhow!("kernel BTF: no type {id}"))? as usize;
        let bad = || anyhow!("kernel BTF: type {id} is truncated");
        let info = u32_at(types, pos + 4).ok_or_else(bad)?;
        let size_type = u32_at(types, pos + 8).ok_or_else(bad)?;
        Ok(TypeRecord {
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kflag: info >> 31 == 1,
            size_type,
            rest: types.get(pos + TYPE_HEADER..).ok_or_else(bad)?,
        })
    }

    fn name(&self, off: u32) -> Result<&'a str> {
        let strings: &'a [u8] = self.strings;
        let s = strings
            .get(off as usize..)
            .ok_or_else(|| anyhow!("kernel BTF: name offset {off} out of range"))?;
        let end = s.iter().position(|c| *c == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end])
            .map_err(|_| anyhow!("kernel BTF: name at {off} is not UTF-8"))
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous structs and
    /// unions (as `qstr.len` and `mm_struct.arg_start` need).
    fn offset_of(&self, name: &str, member: &str) -> Result<u32> {
        let id = *self
            .structs
            .get(name)
            .ok_or_else(|| anyhow!("BTF has no struct `{name}` with members"))?;
        let bits = self
            .find_member(id, member, 0)
            .with_context(|| format!("resolving `struct {name}.{member}` in kernel BTF"))?
            .ok_or_else(|| anyhow!("kernel BTF: `struct {name}` has no member `{member}`"))?;
        if bits % 8 != 0 {
            bail!("kernel BTF: `struct {name}.{member}` is a bitfield");
        }
        Ok(bits / 8)
    }

    /// Bit offset of `member` inside the struct or union `id`.
    fn find_member(&self, id: u32, member: &str, depth: u32) -> Result<Option<u32>> {
        if depth > 8 {
            bail!("anonymous members nested too deep");
        }
        let t = self.record(id)?;
        for i in 0..t.vlen {
            let m = i * 12;
            let bad = || anyhow!("kernel BTF: member {i} of type {id} is truncated");
            let name_off = u32_at(t.rest, m).ok_or_else(bad)?;
            let ty = u32_at(t.rest, m + 4).ok_or_else(bad)?;
            let raw = u32_at(t.rest, m + 8).ok_or_else(bad)?;
            // With kind_flag set, the top 8 bits hold a bitfield's size.
            let bit_offset = if t.kflag { raw & 0x00ff_ffff } else { raw };
            let name = self.name(name_off)?;
            if name == member {
                return Ok(Some(bit_offset));
            }
            if name.is_empty() {
                let inner = self.strip(ty)?;
                let k = self.record(inner)?.kind;
                if (k == KIND_STRUCT || k == KIND_UNION)
                    && let Some(off) = self.find_member(inner, member, depth + 1)?
                {
                    return Ok(Some(bit_offset + off));
                }
            }
        }
        Ok(None)
    }

    /// Skips typedefs and qualifiers.
    fn strip(&self, mut id: u32) -> Result<u32> {
        for _ in 0..16 {
            let t = self.record(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_type;
                }
                _ => return Ok(id),
            }
        }
        bail!("BTF type chain too deep")
    }
}

/// Bytes that follow a type's header, by kind.
fn extra_len(kind: u32, vlen: usize, id: u32) -> Result<usize> {
    Ok(match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
        KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG.
        2 | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | 12 | 16
        | KIND_TYPE_TAG => 0,
        other => bail!("kernel BTF: type {id} has unknown kind {other}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_btf() -> Option<Vec<u8>> {
        read_btf(Path::new(VMLINUX_BTF)).ok()
    }

    #[test]
    fn resolves_all_offsets_from_the_running_kernel() {
        let Some(bytes) = host_btf() else {
            return crate::skip::skip("kernel BTF not readable");
        };
        let o = resolve(&bytes).expect("offsets");
        assert_eq!(o.valid, 1);
        // `struct path { struct vfsmount *mnt; struct dentry *dentry; }` on every kernel.
        assert_eq!((o.path_mnt, o.path_dentry), (0, 8));
        // tgid directly follows pid in task_struct.
        assert_eq!(o.task_tgid, o.task_pid + 4);
        assert!(o.mm_arg_end > o.mm_arg_start);
    }

    /// Every offset agrees with btf-rs, an independent BTF reader, on the running kernel.
    #[test]
    fn every_offset_matches_btf_rs() {
        let Some(bytes) = host_btf() else {
            return crate::skip::skip("kernel BTF not readable");
        };
        let ours = RawBtf::parse(&bytes, FIELDS.iter().map(|(s, _)| *s)).expect("parse");
        let theirs = btf_rs::Btf::from_bytes(&bytes).expect("btf-rs");
        for (s, m) in FIELDS {
            assert_eq!(
                ours.offset_of(s, m).expect("ours"),
                btf_rs_offset(&theirs, s, m),
                "struct {s}.{m}"
            );
        }
    }

    fn btf_rs_offset(btf: &btf_rs::Btf, name: &str, member: &str) -> u32 {
        use btf_rs::Type;
        fn find(btf: &btf_rs::Btf, s: &btf_rs::Struct, member: &str) -> Option<u32> {
            for m in &s.members {
                let name = btf.resolve_name(m).unwrap_or_default();
                if name == member {
                    return Some(m.bit_offset());
                }
                if name.is_empty() {
                    let mut t = btf.resolve_chained_type(m).ok()?;
                    loop {
                        t = match &t {
                            Type::Typedef(x) => btf.resolve_chained_type(x).ok()?,
                            Type::Const(x) | Type::Volatile(x) => {
                                btf.resolve_chained_type(x).ok()?
                            }
                            _ => break,
                        };
                    }
                    if let Type::Struct(inner) | Type::Union(inner) = t
                        && let Some(off) = find(btf, &inner, member)
                    {
                        return Some(m.bit_offset() + off);
                    }
                }
            }
            None
        }
        let s = btf
            .resolve_types_by_name(name)
            .unwrap()
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .unwrap();
        find(btf, &s, member).unwrap() / 8
    }

    #[test]
    fn missing_member_and_struct_are_named() {
        let Some(bytes) = host_btf() else {
            return crate::skip::skip("kernel BTF not readable");
        };
        let btf = RawBtf::parse(&bytes, ["task_struct"].into_iter()).expect("parse");
        let err = btf.offset_of("task_struct", "no_such_field").unwrap_err();
        assert!(
            format!("{err:#}").contains("no member `no_such_field`"),
            "{err:#}"
        );
        let err = btf.offset_of("no_such_struct", "x").unwrap_err();
        assert!(
            format!("{err:#}").contains("no struct `no_such_struct`"),
            "{err:#}"
        );
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let err = resolve(b"not btf at all, just bytes").unwrap_err();
        assert!(format!("{err:#}").contains("bad magic"), "{err:#}");
        let Some(bytes) = host_btf() else {
            return crate::skip::skip("kernel BTF not readable");
        };
        // Cut in the middle of the type section: refused, never a panic.
        let cut = &bytes[..bytes.len() / 3];
        assert!(resolve(cut).is_err());
    }
}
