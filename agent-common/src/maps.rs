//! Names of the maps and globals the daemon reaches by name. aya names a map after its
//! `static` in `agent-ebpf`, which must be spelled as here; a unit test of the daemon
//! checks every map name against the object it embeds.

/// Session of each tracked process (tgid → `SessionEntry`).
pub const SESSIONS: &str = "SESSIONS";
/// The kernel-to-daemon ring buffer.
pub const EVENTS: &str = "EVENTS";
/// Per-CPU loss and activity counters (`stats::Stat`).
pub const STATS: &str = "STATS";
/// Compiled profiles by id.
pub const PROFILES: &str = "PROFILES";
pub const NET_ALLOW: &str = "NET_ALLOW";
pub const NET_DENY: &str = "NET_DENY";
/// `network.redirect` rules: destination → endpoint (`policy::NetRedirect`).
pub const NET_REDIRECT: &str = "NET_REDIRECT";
/// Socket cookie → where a redirected socket was addressed (`policy::OriginalDestination`).
pub const ORIGINAL_DESTINATIONS: &str = "ORIGINAL_DESTINATIONS";
pub const PATH_RULES: &str = "PATH_RULES";
pub const INODE_RULES: &str = "INODE_RULES";
/// The `(dev, ino)` the kernel saw for the daemon's own binding opens.
pub const BIND_RESULT: &str = "BIND_RESULT";
/// The daemon the programs answer to (`config::DaemonState`, one entry).
pub const DAEMON: &str = "DAEMON";

/// Syscall rules: `(profile id, syscall nr)` → rule (`policy::SyscallRule`).
pub const SYSCALL_RULES: &str = "SYSCALL_RULES";
/// Pids a session must not signal, trace or reach (the daemon's: its tgid, threads,
/// `-pgid`, `-1`), as the syscalls' argument is written (`i32`, sign-extended).
pub const PROTECTED_PIDS: &str = "PROTECTED_PIDS";

/// Selectors (`selector::SelectorEntry`, by index).
pub const SELECTORS: &str = "SELECTORS";
/// `selector::SelectorConfig`, one entry.
pub const SELECTOR_CONFIG: &str = "SELECTOR_CONFIG";
/// argv token hash → bits of the argv patterns it satisfies.
pub const SELECTOR_ARGV: &str = "SELECTOR_ARGV";
/// cgroup id → bits of the selectors whose cgroup (or labels) it satisfies.
pub const SELECTOR_CGROUPS: &str = "SELECTOR_CGROUPS";
/// Hash of a cgroup path not created yet → bits, for the creation hook.
pub const SELECTOR_CGROUP_PATHS: &str = "SELECTOR_CGROUP_PATHS";

/// tgid → cgroup id of processes held in a pending cgroup (`selector::CGROUP_PENDING`).
pub const SELECTOR_HELD: &str = "SELECTOR_HELD";

/// Every map the daemon takes by name.
pub const DAEMON_MAPS: &[&str] = &[
    SESSIONS,
    EVENTS,
    STATS,
    PROFILES,
    NET_ALLOW,
    NET_DENY,
    NET_REDIRECT,
    ORIGINAL_DESTINATIONS,
    PATH_RULES,
    INODE_RULES,
    BIND_RESULT,
    DAEMON,
    SYSCALL_RULES,
    PROTECTED_PIDS,
    SELECTORS,
    SELECTOR_CONFIG,
    SELECTOR_ARGV,
    SELECTOR_CGROUPS,
    SELECTOR_CGROUP_PATHS,
    SELECTOR_HELD,
];

/// Global: kernel struct offsets (`config::KernelOffsets`).
pub const OFFSETS: &str = "OFFSETS";
/// Global: the daemon's tgid, whose opens bind rules to inodes.
pub const BINDER_TGID: &str = "BINDER_TGID";
/// Global: the generation of this load's programs (`config::DaemonState::generation`).
pub const GENERATION: &str = "GENERATION";
