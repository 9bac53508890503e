//! Compiled profiles as the kernel sees them: per-profile settings and network rules.
//! The daemon compiles `rules/*.yaml` into these maps; the programs decide from them.

/// Profiles the kernel can hold (ids are indices into `PROFILES`).
pub const MAX_PROFILES: u32 = 256;
/// Network rule entries across all profiles, per trie.
pub const NET_RULES_MAX: u32 = 16_384;
/// Port ranges one network rule can carry (its own plus those of enclosing rules).
pub const MAX_PORT_RANGES: usize = 8;
/// `rule_id` of a decision taken by the category's default, not a listed rule.
pub const RULE_DEFAULT: u32 = u32::MAX;

/// Value of `PROFILES`, indexed by profile id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProfileConfig {
    /// [`crate::vocab::Mode`] as `u8`.
    pub mode: u8,
    /// 1 when the network default is deny.
    pub net_default_deny: u8,
    /// [`crate::vocab::OnViolation`] as `u8`.
    pub net_action: u8,
    /// 1 once the daemon filled the slot.
    pub loaded: u8,
    /// 1 when a denied exec kills the process (signal layer).
    pub exec_kill: u8,
    /// 1 when a denied file open kills the process (signal layer).
    pub file_kill: u8,
    /// 1 when a denied exec is refused with `EPERM` where the LSM layer runs; such a
    /// refusal never lets the exec happen, so `exec_kill` (a fallback) never fires.
    pub exec_block: u8,
    /// As `exec_block`, for file opens.
    pub file_block: u8,
    /// Bit d set when an exec deny tree is rooted d components deep: the kernel looks
    /// up directory prefixes only at those depths.
    pub exec_prefix_depths: u64,
    /// As `exec_prefix_depths`, for file deny trees.
    pub file_prefix_depths: u64,
    /// How an exec of a file with no name (memfd, `O_TMPFILE`, deleted) is met:
    /// `FILELESS_*`, already resolved against the mode and `on_violation`.
    pub fileless: u8,
    /// 1 when the kernel's file decision is the profile's whole decision on an allowed
    /// open (no allow list, no rule only the daemon matches): repeats of such an open
    /// are counted in the kernel instead of sent one by one.
    pub file_repeats: u8,
    /// The daemon's holding endpoint (`127.0.0.1:hold_port`), where a connect that a
    /// `network.on_violation: ask` profile denies waits for an answer; 0: none (such a
    /// connect is refused).
    pub hold_port: u16,
    /// The rule id of `exec.fileless`.
    pub fileless_rule: u32,
}
crate::assert_size!(ProfileConfig, 32);

/// `ProfileConfig::fileless`: let it run.
pub const FILELESS_ALLOW: u8 = 0;
/// Record it (`alerted`).
pub const FILELESS_ALERT: u8 = 1;
/// Refuse it with `EPERM` where BPF-LSM runs; elsewhere the tracepoint kills it.
pub const FILELESS_BLOCK: u8 = 2;
/// Refuse and kill.
pub const FILELESS_KILL: u8 = 3;

/// LPM-trie key data of `NET_ALLOW`/`NET_DENY`: the profile id (big-endian, matched in
/// full) then the address as IPv6, IPv4 as `::ffff:a.b.c.d` — so IPv4-mapped IPv6
/// destinations are judged as IPv4 by construction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetKey {
    pub profile_id: [u8; 4],
    pub addr: [u8; 16],
}
crate::assert_size!(NetKey, 20);

impl NetKey {
    /// Prefix length, in bits, of a key for `addr_prefix` bits of the IPv6 form.
    pub const fn prefix_len(addr_prefix: u32) -> u32 {
        32 + addr_prefix
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

/// Value of the network tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetRule {
    /// Index into the daemon's rule table (file and line), or [`RULE_DEFAULT`].
    pub rule_id: u32,
    pub nranges: u32,
    pub ranges: [PortRange; MAX_PORT_RANGES],
}
crate::assert_size!(NetRule, 8 + 4 * MAX_PORT_RANGES);

impl NetRule {
    #[inline(always)]
    pub fn has_port(&self, port: u16) -> bool {
        let mut i = 0;
        while i < MAX_PORT_RANGES {
            if (i as u32) < self.nranges && self.ranges[i].lo <= port && port <= self.ranges[i].hi {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// Value of `NET_REDIRECT`: which ports of the destination go where instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetRedirect {
    /// The rule and the ports it covers.
    pub rule: NetRule,
    /// The endpoint, as IPv6 (IPv4 as `::ffff:a.b.c.d`), network byte order.
    pub to_addr: [u8; 16],
    /// The endpoint's port, host byte order.
    pub to_port: u16,
    pub _pad: [u8; 6],
}
crate::assert_size!(NetRedirect, 8 + 4 * MAX_PORT_RANGES + 24);

/// Value of `ORIGINAL_DESTINATIONS`, by socket cookie: where a redirected socket was
/// addressed before the kernel sent it to the redirect endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OriginalDestination {
    pub session_id: u64,
    /// As IPv6 (IPv4 as `::ffff:a.b.c.d`), network byte order.
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    /// `AF_INET` or `AF_INET6`, as the process used it.
    pub family: u16,
    pub rule_id: u32,
    /// The process that connected.
    pub tgid: u32,
    /// 1 when the socket was sent to the daemon's holding endpoint (`ask`), 0 for a
    /// `network.redirect` endpoint.
    pub held: u32,
}
crate::assert_size!(OriginalDestination, 40);

/// Redirected sockets remembered (LRU: the oldest go first).
pub const ORIGINAL_DESTINATIONS_MAX: u32 = 16_384;

pub const CATEGORY_EXEC: u8 = 0;
pub const CATEGORY_FILE: u8 = 1;
/// The whole path.
pub const FORM_EXACT: u8 = 0;
/// A directory: the path and everything below it.
pub const FORM_PREFIX: u8 = 1;
/// The final path component, in any directory.
pub const FORM_NAME: u8 = 2;

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// One FNV-1a step. Path rules are keyed by the FNV-1a hash of the absolute path (or of
/// a directory, or of a file name); kernel and daemon hash with this one function.
#[inline(always)]
pub const fn fnv_step(h: u64, b: u8) -> u64 {
    (h ^ b as u64).wrapping_mul(FNV_PRIME)
}

/// FNV-1a of a whole string (daemon side).
pub const fn fnv(s: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    let mut i = 0;
    while i < s.len() {
        h = fnv_step(h, s[i]);
        i += 1;
    }
    h
}

/// Key of `PATH_RULES`: a deny rule on exec or file paths.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PathRuleKey {
    pub hash: u64,
    pub profile_id: u32,
    /// The session owner the rule was expanded for (every rule is, once per owner, so
    /// the kernel looks up one key).
    pub owner_uid: u32,
    /// `CATEGORY_*`.
    pub category: u8,
    /// `FORM_*`.
    pub form: u8,
    pub _pad: [u8; 6],
}
crate::assert_size!(PathRuleKey, 24);

/// Key of `INODE_RULES`: a deny rule bound to the file it named when the daemon
/// compiled it, so a hard link, a rename or a bind mount of that file is still denied.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InodeRuleKey {
    pub ino: u64,
    /// The kernel's `dev_t` (`major << 20 | minor`), as in `super_block.s_dev`.
    pub dev: u32,
    pub profile_id: u32,
    /// As in [`PathRuleKey::owner_uid`].
    pub owner_uid: u32,
    /// `CATEGORY_*`.
    pub category: u8,
    pub _pad: [u8; 3],
}
crate::assert_size!(InodeRuleKey, 24);

/// Value of `PATH_RULES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathRuleValue {
    pub rule_id: u32,
    /// `PATH_RULE_*`.
    pub flags: u32,
}
crate::assert_size!(PathRuleValue, 8);

/// Value of `INODE_RULES`: the rule, and which file of that inode number it was bound to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InodeRuleValue {
    pub rule_id: u32,
    /// `PATH_RULE_*`.
    pub flags: u32,
    /// The inode's `i_generation` when it was bound, as the kernel read it. A file made
    /// later with the same number (freed once nothing holds the bound one, which a
    /// killed daemon no longer does) has another, and is not the bound file.
    pub generation: u32,
    pub _pad: u32,
}
crate::assert_size!(InodeRuleValue, 16);

/// `PathRuleValue::flags`: the daemon's self-protection, refused (`block`) whatever the
/// profile's mode and `on_violation` say: a session in monitor mode is still watched by a
/// daemon it must not reach.
pub const PATH_RULE_ALWAYS: u32 = 1;

/// Syscall rule entries across all profiles.
pub const SYSCALL_RULES_MAX: u32 = 65_536;
/// Pids in `PROTECTED_PIDS`.
pub const PROTECTED_PIDS_MAX: u32 = 1024;

/// Key of `SYSCALL_RULES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SyscallKey {
    pub profile_id: u32,
    /// The syscall number (x86_64).
    pub nr: u32,
}
crate::assert_size!(SyscallKey, 8);

/// `SyscallRule::cond`: the rule matches every call.
pub const SYSCALL_COND_ALWAYS: u8 = 0;
/// Only calls whose argument `arg` is in `PROTECTED_PIDS` (a signal, trace or memory
/// access aimed at the daemon).
pub const SYSCALL_COND_PROTECTED_PID: u8 = 1;
/// Only calls whose argument `arg` has a bit of `mask` set (clone's namespace flags).
pub const SYSCALL_COND_ANY_BIT: u8 = 2;

/// Value of `SYSCALL_RULES`: how sessions under the profile meet the syscall.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallRule {
    pub rule_id: u32,
    /// What the syscall-entry program does in sessions without a seccomp filter
    /// (`attach`, or a rule seccomp does not carry): [`crate::vocab::OnViolation`] as
    /// `u8` (`Kill`: SIGKILL at entry; `Alert`: record), or [`SYSCALL_ENTRY_NONE`].
    pub entry: u8,
    /// 1 when the seccomp filter of `run` sessions refuses the call (`EPERM`): the exit
    /// program records the refusal.
    pub seccomp: u8,
    /// 1 when a refusal by seccomp is followed by SIGKILL (`on_violation: kill`).
    pub seccomp_kill: u8,
    /// `SYSCALL_COND_*`.
    pub cond: u8,
    /// Index of the argument `cond` judges (0..=5).
    pub arg: u32,
    pub _pad: u32,
    /// Bits for `SYSCALL_COND_ANY_BIT`.
    pub mask: u64,
}
crate::assert_size!(SyscallRule, 24);

/// `SyscallRule::entry`: nothing at entry.
pub const SYSCALL_ENTRY_NONE: u8 = 0xff;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C) integers, no padding.
    unsafe impl aya::Pod for super::SyscallKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SyscallRule {}
    // SAFETY: repr(C) integers and byte arrays, no padding.
    unsafe impl aya::Pod for super::PathRuleKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PathRuleValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InodeRuleKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InodeRuleValue {}
    // SAFETY: repr(C) integers and byte arrays, no padding.
    unsafe impl aya::Pod for super::ProfileConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NetKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NetRule {}
    // SAFETY: as above (the tail padding is an explicit field).
    unsafe impl aya::Pod for super::NetRedirect {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OriginalDestination {}
}
