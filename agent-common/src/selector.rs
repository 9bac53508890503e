//! Enrolment by selector: a profile's `match:` entries, judged by the kernel at every
//! exec of a process outside every session. A match starts a new session before the
//! program runs its first instruction (`sched_process_exec` runs before the return to
//! user mode), so an agent launched by a shell, an IDE, a CI job or a pod entrypoint is
//! never unwatched.
//!
//! A selector is a conjunction of conditions, each compiled into a map whose value is a
//! bit set of the selectors (or argv patterns) it satisfies:
//! - the executable's resolved path (`PATH_RULES` with [`SELECTOR_PROFILE`]: exact or
//!   directory prefix), one bit per selector;
//! - argv tokens (`SELECTOR_ARGV`): an exact token, or a token ending in `/suffix`, one
//!   bit per pattern; a selector needs all of its patterns;
//! - the cgroup (`SELECTOR_CGROUPS`, by cgroup id): the process's cgroup or an ancestor,
//!   one bit per selector. The ids of cgroups that do not exist yet are added by the
//!   kernel when they are created (`SELECTOR_CGROUP_PATHS`, by path hash), so a systemd
//!   unit started after the daemon is covered from its first process.
//! - container labels: judged by the daemon, which writes the container's cgroup id into
//!   `SELECTOR_CGROUPS` with the bits of the selectors its labels satisfy.

/// Selectors across all profiles (bits of a `u32`; the top bit is [`CGROUP_PENDING`]).
pub const MAX_SELECTORS: u32 = 31;

/// `SELECTOR_CGROUPS` bit: a cgroup created while selectors name container labels,
/// not yet looked up by the daemon. A process outside every session that executes a
/// program in it is held (`SIGSTOP` before its first instruction, its pid in
/// `SELECTOR_HELD`) until the daemon has asked the runtime whose container it is and
/// enrolled it or not, then resumed: the entrypoint of a labelled container never runs
/// unwatched, whoever wins the race between the runtime's start and the lookup.
pub const CGROUP_PENDING: u32 = 1 << 31;

/// `EnrolEvent::selector` of a process held in a pending cgroup (no session yet).
pub const HELD: u32 = u32::MAX;
/// Argv patterns across all selectors (bits of a `u64`).
pub const MAX_ARGV_PATTERNS: u32 = 64;
/// Levels of the cgroup hierarchy looked at, from the root down.
pub const CGROUP_DEPTH_MAX: u32 = 16;

/// `profile_id` of the selectors' executable rules in `PATH_RULES` (no profile has it).
pub const SELECTOR_PROFILE: u32 = u32::MAX;

/// `SelectorEntry::needs`: the executable's path must match.
pub const NEEDS_EXE: u32 = 1;
/// All of `argv_mask`'s patterns must match some argv token.
pub const NEEDS_ARGV: u32 = 2;
/// The process's cgroup (or an ancestor) must be one of the selector's.
pub const NEEDS_CGROUP: u32 = 4;

/// One selector (the `SELECTORS` array, by index).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SelectorEntry {
    /// The profile a matched process's session runs under.
    pub profile_id: u32,
    /// `NEEDS_*`.
    pub needs: u32,
    /// The argv patterns it needs (`NEEDS_ARGV`).
    pub argv_mask: u64,
    /// `SessionEntry::flags` of the sessions it starts.
    pub session_flags: u32,
    pub _pad: u32,
}
crate::assert_size!(SelectorEntry, 24);

/// The one entry of `SELECTOR_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SelectorConfig {
    /// Selectors in `SELECTORS` (0: no exec outside a session is looked at).
    pub count: u32,
    /// Bits of the selectors with an executable condition (the path scan runs only for
    /// them).
    pub exe_selectors: u32,
    /// Bits of the selectors with a cgroup condition (or labels).
    pub cgroup_selectors: u32,
    /// Bits of the selectors with labels: every cgroup created is reported to the
    /// daemon, which looks up its container.
    pub label_selectors: u32,
    /// Bit d: an executable prefix is rooted d components deep.
    pub exe_prefix_depths: u64,
}
crate::assert_size!(SelectorConfig, 24);

/// `ArgvKey::form`: the whole token.
pub const ARGV_EXACT: u8 = 0;
/// The token is the suffix, or ends in `/` followed by it (`**/claude-code/cli.js`).
pub const ARGV_SUFFIX: u8 = 1;

/// Key of `SELECTOR_ARGV`. Hashes run backwards over the token (the kernel scans argv
/// from its end): [`argv_hash`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArgvKey {
    pub hash: u64,
    /// `ARGV_*`.
    pub form: u8,
    pub _pad: [u8; 7],
}
crate::assert_size!(ArgvKey, 16);

/// FNV-1a over the bytes of `s` from last to first, as the kernel hashes an argv token
/// while scanning backwards.
pub const fn argv_hash(s: &[u8]) -> u64 {
    let mut h = crate::policy::FNV_OFFSET;
    let mut i = s.len();
    while i > 0 {
        i -= 1;
        h = crate::policy::fnv_step(h, s[i]);
    }
    h
}

/// Bytes of a cgroup path the creation hook hashes (longer paths match no selector).
pub const CGROUP_PATH_MAX: usize = 256;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C) integers, no padding.
    unsafe impl aya::Pod for super::SelectorEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SelectorConfig {}
    // SAFETY: repr(C) integers and byte arrays, no padding.
    unsafe impl aya::Pod for super::ArgvKey {}
}
