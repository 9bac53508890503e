//! Syscall profiles: the `syscalls:` section of a profile, the groups it may name, the
//! names resolved to numbers, the daemon's own self-protection rules, and the seccomp
//! filter `agentwarden run` installs in itself before it executes the agent.
//!
//! The target is x86_64: names resolve to x86_64 numbers (`syscalls::x86_64`, generated
//! from the kernel's own table), and the filter kills a process that enters the kernel
//! through another ABI (i386 `int 0x80`) and refuses x32 numbers, so no second syscall
//! table slips past the names.
//!
//! One table of groups ([`GROUPS`]): systemd's `SystemCallFilter=` groups where systemd
//! has one (members as in systemd's `seccomp-util.c`, x86_64 names only), and groups of
//! our own for what agents must not reach (`@bpf`, `@io-uring`, `@ns`, `@handle`,
//! `@keyring`). systemd's `@privileged` is not offered: it holds `setuid`, `setgid`,
//! the `chown` family and `capset`, which every package manager, `sudo` and build tool
//! uses; a profile names the narrower groups instead.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use syscalls::x86_64::Sysno;

use super::{Default, Fallback, Mode, OnViolation};

/// The architecture syscall numbers are for.
pub const ARCH: &str = "x86_64";

fn default_allow() -> Spanned<Default> {
    Spanned::new(
        Default::Allow,
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

impl std::default::Default for SyscallRules {
    fn default() -> Self {
        Self {
            default: default_allow(),
            deny: Vec::new(),
            allow: Vec::new(),
            on_violation: OnViolation::default(),
            fallback: None,
        }
    }
}

/// Syscalls by name or group.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyscallRules {
    /// Only `allow` is supported: an agent's runtime (node, python, git, shells) uses
    /// hundreds of syscalls, and an allow list misses some in ways that look like bugs.
    #[serde(default = "default_allow")]
    #[schemars(with = "Default")]
    pub default: Spanned<Default>,
    /// Syscalls (`mount`) or groups (`@mount`) refused to the session.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub deny: Vec<Spanned<String>>,
    /// Exceptions to the groups `deny` names (`deny: [@debug]`, `allow: [ptrace]`).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub allow: Vec<Spanned<String>>,
    #[serde(default)]
    pub on_violation: OnViolation,
    /// What to do in sessions no seccomp filter can reach (`attach`): `kill` at the
    /// syscall's entry or `alert`. Without it a `block` profile cannot be attached.
    #[serde(default)]
    pub fallback: Option<Fallback>,
}

/// A group of syscalls a profile may name.
#[derive(Clone, Copy, Debug)]
pub struct Group {
    pub name: &'static str,
    pub members: &'static [&'static str],
    /// What the group is for (shown by `profile show`).
    pub about: &'static str,
    /// Whether systemd's `SystemCallFilter=` has a group of this name.
    pub systemd: bool,
}

/// Every group, systemd's first.
pub const GROUPS: &[Group] = &[
    Group {
        name: "@clock",
        members: &["adjtimex", "clock_adjtime", "clock_settime", "settimeofday"],
        about: "setting the system clock",
        systemd: true,
    },
    Group {
        name: "@cpu-emulation",
        members: &["modify_ldt"],
        about: "CPU emulation (x86_64 has modify_ldt only)",
        systemd: true,
    },
    Group {
        name: "@debug",
        members: &[
            "lookup_dcookie",
            "perf_event_open",
            "pidfd_getfd",
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
        ],
        about: "debugging, tracing, reading and writing other processes' memory",
        systemd: true,
    },
    Group {
        name: "@module",
        members: &["delete_module", "finit_module", "init_module"],
        about: "loading and unloading kernel modules",
        systemd: true,
    },
    Group {
        name: "@mount",
        members: &[
            "chroot",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "open_tree_attr",
            "pivot_root",
            "umount2",
        ],
        about: "mounting and unmounting file systems (open_tree_attr added: it mounts too)",
        systemd: true,
    },
    Group {
        name: "@obsolete",
        members: &[
            "_sysctl",
            "afs_syscall",
            "create_module",
            "get_kernel_syms",
            "getpmsg",
            "putpmsg",
            "query_module",
            "security",
            "sysfs",
            "tuxcall",
            "uselib",
            "ustat",
            "vserver",
        ],
        about: "unusual, obsolete or unimplemented syscalls",
        systemd: true,
    },
    Group {
        name: "@raw-io",
        members: &["ioperm", "iopl"],
        about: "raw I/O port access",
        systemd: true,
    },
    Group {
        name: "@reboot",
        members: &["kexec_file_load", "kexec_load", "reboot"],
        about: "rebooting and loading a new kernel (kexec)",
        systemd: true,
    },
    Group {
        name: "@swap",
        members: &["swapoff", "swapon"],
        about: "enabling and disabling swap devices",
        systemd: true,
    },
    Group {
        name: "@bpf",
        members: &["bpf"],
        about: "loading and reaching eBPF programs and maps",
        systemd: false,
    },
    Group {
        name: "@io-uring",
        members: &["io_uring_enter", "io_uring_register", "io_uring_setup"],
        about: "io_uring: operations that bypass per-syscall filters",
        systemd: false,
    },
    Group {
        name: "@ns",
        members: &["setns", "unshare"],
        about: "entering and making namespaces: setns, unshare, clone with a CLONE_NEW* flag \
                (clone3 gets ENOSYS, so libc falls back to clone, whose flags seccomp sees)",
        systemd: false,
    },
    Group {
        name: "@handle",
        members: &["name_to_handle_at", "open_by_handle_at"],
        about: "opening files by handle, past path-based rules",
        systemd: false,
    },
    Group {
        name: "@keyring",
        members: &["add_key", "keyctl", "request_key"],
        about: "the kernel keyring",
        systemd: false,
    },
];

/// systemd groups deliberately not offered, and why (the lint error says it).
const REFUSED_GROUPS: &[(&str, &str)] = &[(
    "@privileged",
    "systemd's @privileged holds setuid, setgid, the chown family and capset, which \
     package managers, sudo and build tools use; name the narrower groups (@module, \
     @mount, @raw-io, @reboot, @swap, @clock, @bpf …)",
)];

/// clone's namespace flags (`CLONE_NEWNS`, `NEWCGROUP`, `NEWUTS`, `NEWIPC`, `NEWUSER`,
/// `NEWPID`, `NEWNET`); `CLONE_NEWTIME` is clone3/unshare-only (its bit is CSIGNAL's in
/// clone).
pub const CLONE_NS_FLAGS: u64 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;

const EPERM: i32 = 1;
const ENOSYS: i32 = 38;

/// When a rule matches a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "when")]
pub enum Cond {
    Always,
    /// Argument `arg` has a bit of `mask` set.
    AnyBit {
        arg: u8,
        mask: u64,
    },
    /// Argument `arg` (as `i32`) is one of the daemon's pids (its tgid, its threads);
    /// with `groups`, also a process group holding it (`-1`, minus its group, and 0
    /// where that is the caller's group): for `kill(2)`, where a pid names groups.
    ProtectedPid {
        arg: u8,
        groups: bool,
    },
}

/// One syscall a profile denies, with the entry that named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeniedCall {
    pub name: &'static str,
    pub nr: u32,
    pub cond: Cond,
    /// The entry as written (`@mount`, `mount`).
    pub entry: String,
    /// `syscalls.deny[2]`.
    pub field: String,
    pub line: u64,
    pub column: u64,
}

/// A syscall name or group as written, and what went wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryError {
    pub message: String,
    pub hint: String,
}

/// The members of an entry: a group's, or one syscall's.
pub fn members(entry: &str) -> Result<Vec<(&'static str, u32)>, EntryError> {
    let entry = entry.trim();
    if let Some((_, why)) = REFUSED_GROUPS.iter().find(|(n, _)| *n == entry) {
        return Err(EntryError {
            message: format!("group `{entry}` is not supported"),
            hint: (*why).to_owned(),
        });
    }
    if entry.starts_with('@') {
        let Some(g) = GROUPS.iter().find(|g| g.name == entry) else {
            return Err(EntryError {
                message: format!("unknown syscall group `{entry}`"),
                hint: format!(
                    "groups: {}",
                    GROUPS.iter().map(|g| g.name).collect::<Vec<_>>().join(", ")
                ),
            });
        };
        return Ok(g
            .members
            .iter()
            .map(|m| {
                let s = sysno(m).unwrap_or_else(|| panic!("group member {m} is no {ARCH} syscall"));
                (s.name(), s.id() as u32)
            })
            .collect());
    }
    match sysno(entry) {
        Some(s) => Ok(vec![(s.name(), s.id() as u32)]),
        None => Err(EntryError {
            message: format!("unknown syscall `{entry}` ({ARCH})"),
            hint: match nearest(entry) {
                Some(n) => format!(
                    "did you mean `{n}`? (see `man 2 syscalls`, or a group such as `@mount`)"
                ),
                None => "a syscall name as in `man 2 syscalls` (e.g. `mount`), or a group \
                         such as `@mount`; see rules/README.md"
                    .to_owned(),
            },
        }),
    }
}

/// The x86_64 syscall nearest to a misspelt name (at most two edits away).
fn nearest(name: &str) -> Option<&'static str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let here = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != *cb))
                    .min(row[j] + 1)
                    .min(here + 1);
                prev = here;
            }
        }
        row[b.len()]
    }
    Sysno::iter()
        .map(|s| (distance(name, s.name()), s.name()))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

fn sysno(name: &str) -> Option<Sysno> {
    name.parse::<Sysno>().ok()
}

/// The name of a syscall number (for events), `syscall_N` for one this build lacks.
pub fn name_of(nr: u32) -> String {
    Sysno::new(nr as usize).map_or_else(|| format!("syscall_{nr}"), |s| s.name().to_owned())
}

/// The number of a syscall this module names (always present on x86_64: the unit tests
/// resolve every name the tables hold).
pub fn nr(name: &str) -> u32 {
    sysno(name)
        .unwrap_or_else(|| panic!("{name} is no {ARCH} syscall"))
        .id() as u32
}

/// An entry that did not resolve: its field (`syscalls.deny[1]`), line, column and why.
pub type LocatedError = (String, u64, u64, EntryError);

/// Resolves a profile's `syscalls:` entries. `deny` minus `allow`, in the order written;
/// a syscall two entries name is listed once, under the first. Errors are located by the
/// caller.
pub fn resolve(rules: &SyscallRules) -> (Vec<DeniedCall>, Vec<LocatedError>) {
    let mut errors = Vec::new();
    let mut allowed = Vec::new();
    for (i, a) in rules.allow.iter().enumerate() {
        match members(&a.value) {
            Ok(m) => allowed.extend(m.into_iter().map(|(_, nr)| nr)),
            Err(e) => errors.push((
                format!("syscalls.allow[{i}]"),
                a.referenced.line(),
                a.referenced.column(),
                e,
            )),
        }
    }
    let mut out: Vec<DeniedCall> = Vec::new();
    for (i, d) in rules.deny.iter().enumerate() {
        let (line, column) = (d.referenced.line(), d.referenced.column());
        let field = format!("syscalls.deny[{i}]");
        let m = match members(&d.value) {
            Ok(m) => m,
            Err(e) => {
                errors.push((field, line, column, e));
                continue;
            }
        };
        let mut calls: Vec<(&'static str, u32, Cond)> =
            m.into_iter().map(|(n, nr)| (n, nr, Cond::Always)).collect();
        if d.value.trim() == "@ns" {
            calls.push((
                "clone",
                nr("clone"),
                Cond::AnyBit {
                    arg: 0,
                    mask: CLONE_NS_FLAGS,
                },
            ));
        }
        for (name, nr, cond) in calls {
            if allowed.contains(&nr) || out.iter().any(|c| c.nr == nr) {
                continue;
            }
            out.push(DeniedCall {
                name,
                nr,
                cond,
                entry: d.value.trim().to_owned(),
                field: field.clone(),
                line,
                column,
            });
        }
    }
    (out, errors)
}

/// The daemon's self-protection that seccomp can express, in every profile: no `bpf()`,
/// `perf_event_open` or module loading, and no signal, trace, memory access, pidfd,
/// scheduling or limit change aimed at the daemon (argument checked against its pids).
/// `(syscall, condition, label)`.
pub fn self_protection() -> Vec<(&'static str, Cond, &'static str)> {
    let pid = |arg| Cond::ProtectedPid { arg, groups: false };
    vec![
        ("bpf", Cond::Always, "bpf()"),
        ("perf_event_open", Cond::Always, "perf_event_open()"),
        ("init_module", Cond::Always, "kernel module loading"),
        ("finit_module", Cond::Always, "kernel module loading"),
        ("delete_module", Cond::Always, "kernel module loading"),
        (
            "kill",
            Cond::ProtectedPid {
                arg: 0,
                groups: true,
            },
            "a signal to the daemon",
        ),
        ("tkill", pid(0), "a signal to the daemon"),
        ("tgkill", pid(0), "a signal to the daemon"),
        ("rt_sigqueueinfo", pid(0), "a signal to the daemon"),
        ("rt_tgsigqueueinfo", pid(0), "a signal to the daemon"),
        ("ptrace", pid(1), "ptrace of the daemon"),
        ("process_vm_readv", pid(0), "the daemon's memory"),
        ("process_vm_writev", pid(0), "the daemon's memory"),
        ("pidfd_open", pid(0), "a pidfd of the daemon"),
        ("prlimit64", pid(0), "the daemon's limits"),
        ("sched_setscheduler", pid(0), "the daemon's scheduling"),
        ("sched_setparam", pid(0), "the daemon's scheduling"),
        ("sched_setattr", pid(0), "the daemon's scheduling"),
        ("sched_setaffinity", pid(0), "the daemon's scheduling"),
        ("migrate_pages", pid(0), "the daemon's memory"),
        ("move_pages", pid(0), "the daemon's memory"),
    ]
    .into_iter()
    .map(|(n, c, l)| {
        let _ = nr(n);
        (n, c, l)
    })
    .collect()
}

/// Syscalls every `run` session gets `ENOSYS` for: `pidfd_send_signal` can aim at the
/// daemon through a descriptor of `/proc/<pid>`, which seccomp cannot see; without it
/// runtimes (Go, systemd's libraries) fall back to `kill(2)`, which the filter judges by
/// pid.
pub const SELF_PROTECTION_ENOSYS: &[&str] = &["pidfd_send_signal"];

/// The process the filter protects, as `run` and the kernel compare arguments with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protected {
    /// The daemon's tgid and its threads at enrolment.
    pub pids: Vec<i32>,
    /// `kill(2)`'s names of groups holding the daemon: `-1`, minus its process group,
    /// and 0 when the session shares the daemon's session id (a process group it joins
    /// could be the daemon's; only `kill` reads 0 as a group: elsewhere it is "self").
    pub groups: Vec<i32>,
}

/// The pids a session must not aim at (see [`Protected`]).
pub fn protected_pids(daemon: u32, threads: &[u32], pgid: u32, same_session: bool) -> Protected {
    let mut pids = vec![daemon as i32];
    pids.extend(threads.iter().map(|t| *t as i32));
    pids.sort_unstable();
    pids.dedup();
    let mut groups = vec![-1, -(pgid as i32)];
    if same_session {
        groups.push(0);
    }
    groups.sort_unstable();
    groups.dedup();
    Protected { pids, groups }
}

impl Protected {
    /// What the kernel's `PROTECTED_PIDS` holds to recognise refusals: every pid but 0,
    /// which most syscalls read as "self".
    pub fn kernel_pids(&self) -> Vec<i32> {
        self.pids
            .iter()
            .chain(&self.groups)
            .copied()
            .filter(|p| *p != 0)
            .collect()
    }
}

/// One syscall of a seccomp filter: the errno it returns and when (`any` of the
/// alternatives; an empty list matches every call).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterRule {
    pub nr: u32,
    pub errno: i32,
    /// Alternatives, each `(argument, mask, value)`: `arg & mask == value` on the low 32
    /// bits (`pid_t` and clone flags are ints).
    pub any: Vec<(u8, u64, u64)>,
}

/// The filter a `run` session installs before it executes the agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompPlan {
    pub arch: String,
    pub rules: Vec<FilterRule>,
}

/// How a profile's syscall denials are met, resolved against its mode (`monitor`
/// records only) and `on_violation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enforcement {
    /// The seccomp filter of `run` sessions refuses the call.
    pub seccomp: bool,
    /// A seccomp refusal is followed by SIGKILL at the syscall's exit.
    pub seccomp_kill: bool,
    /// In sessions without the filter (`attach`): what the syscall-entry program does.
    pub entry: Option<OnViolation>,
}

/// The profile's section, as enforced (see [`Enforcement`]).
pub fn enforcement(mode: Mode, r: &SyscallRules) -> Enforcement {
    match (mode, r.on_violation) {
        // `ask` is refused for syscalls when the profile is read; recorded if it came here.
        (Mode::Monitor, _) | (Mode::Enforce, OnViolation::Alert | OnViolation::Ask) => {
            Enforcement {
                seccomp: false,
                seccomp_kill: false,
                entry: Some(OnViolation::Alert),
            }
        }
        (Mode::Enforce, OnViolation::Kill) => Enforcement {
            seccomp: true,
            seccomp_kill: true,
            entry: Some(OnViolation::Kill),
        },
        (Mode::Enforce, OnViolation::Block) => Enforcement {
            seccomp: true,
            seccomp_kill: false,
            entry: match r.fallback {
                Some(Fallback::Kill) => Some(OnViolation::Kill),
                Some(Fallback::Alert) => Some(OnViolation::Alert),
                None => None,
            },
        },
    }
}

/// Self-protection in sessions without the filter: killed at entry in enforce mode
/// (the call still runs: a signal is delivered, but a `bpf()` descriptor or memory read
/// never reaches user mode), recorded in monitor mode.
pub fn self_protection_entry(mode: Mode) -> OnViolation {
    match mode {
        Mode::Enforce => OnViolation::Kill,
        Mode::Monitor => OnViolation::Alert,
    }
}

/// The seccomp filter for a `run` session of a profile whose denied calls are `denied`
/// (already resolved) under `enf`, protecting `protected`.
pub fn plan(denied: &[DeniedCall], enf: Enforcement, protected: &Protected) -> SeccompPlan {
    let pid_alts = |arg: u8, groups: bool| -> Vec<(u8, u64, u64)> {
        let g: &[i32] = if groups { &protected.groups } else { &[] };
        protected
            .pids
            .iter()
            .chain(g)
            .map(|p| (arg, 0xffff_ffff, u64::from(*p as u32)))
            .collect()
    };
    let mut calls: Vec<(u32, Cond)> = Vec::new();
    if enf.seccomp {
        calls.extend(denied.iter().map(|d| (d.nr, d.cond)));
    }
    calls.extend(self_protection().into_iter().map(|(n, c, _)| (nr(n), c)));
    let always: Vec<u32> = calls
        .iter()
        .filter(|(_, c)| *c == Cond::Always)
        .map(|(nr, _)| *nr)
        .collect();
    let mut by_nr: BTreeMap<u32, FilterRule> = BTreeMap::new();
    for (nr, cond) in calls {
        let r = by_nr.entry(nr).or_insert_with(|| FilterRule {
            nr,
            errno: EPERM,
            any: Vec::new(),
        });
        // A call some entry refuses always stays refused always: a conditional entry of
        // the same call must not narrow it.
        if always.contains(&nr) {
            continue;
        }
        match cond {
            Cond::Always => {}
            Cond::AnyBit { arg, mask } => r.any.extend(
                (0..64)
                    .filter(|b| mask & (1 << b) != 0)
                    .map(|b| (arg, 1u64 << b, 1u64 << b)),
            ),
            Cond::ProtectedPid { arg, groups } => r.any.extend(pid_alts(arg, groups)),
        }
        r.any.sort_unstable();
        r.any.dedup();
    }
    let mut enosys = |name: &str| {
        let nr = nr(name);
        by_nr.entry(nr).or_insert(FilterRule {
            nr,
            errno: ENOSYS,
            any: Vec::new(),
        });
    };
    for name in SELF_PROTECTION_ENOSYS {
        enosys(name);
    }
    if enf.seccomp && denied.iter().any(|d| d.nr == nr("clone")) {
        // clone3 passes its flags in memory seccomp cannot read: refused as absent, so
        // libc and runtimes fall back to clone(2).
        enosys("clone3");
    }
    SeccompPlan {
        arch: ARCH.to_owned(),
        rules: by_nr.into_values().collect(),
    }
}

/// Compiles the plan into seccomp programs (one per errno) with seccompiler.
pub fn compile_filters(plan: &SeccompPlan) -> anyhow::Result<Vec<seccompiler::BpfProgram>> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };
    anyhow::ensure!(
        plan.arch == ARCH,
        "the seccomp plan is for {}, this build filters {ARCH}",
        plan.arch
    );
    let mut by_errno: BTreeMap<i32, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
    for r in &plan.rules {
        let mut rules = Vec::new();
        for (arg, mask, value) in &r.any {
            let op = if *mask == 0xffff_ffff {
                SeccompCmpOp::Eq
            } else {
                SeccompCmpOp::MaskedEq(*mask)
            };
            let c = SeccompCondition::new(*arg, SeccompCmpArgLen::Dword, op, *value)?;
            rules.push(SeccompRule::new(vec![c])?);
        }
        by_errno
            .entry(r.errno)
            .or_default()
            .insert(i64::from(r.nr), rules);
    }
    let mut out = Vec::new();
    for (errno, rules) in by_errno {
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            TargetArch::x86_64,
        )?;
        let mut prog: seccompiler::BpfProgram = filter.try_into()?;
        if errno == EPERM {
            refuse_x32(&mut prog);
        }
        out.push(prog);
    }
    Ok(out)
}

/// x32 syscalls carry the x86_64 audit arch with bit 30 set in their number: refused
/// outright, so the names above cannot be reached by their x32 numbers. Inserted after
/// seccompiler's arch check (three instructions); every later jump is relative and
/// stays within the code after it, so the insertion moves none of their targets.
fn refuse_x32(prog: &mut seccompiler::BpfProgram) {
    use seccompiler::sock_filter;
    // BPF_LD (0x00) | BPF_W (0x00) | BPF_ABS (0x20).
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JGE_K: u16 = 0x05 | 0x30;
    const BPF_RET_K: u16 = 0x06;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    let insns = [
        // Load the syscall number (offset 0 of `seccomp_data`).
        sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        sock_filter {
            code: BPF_JGE_K,
            jt: 0,
            jf: 1,
            k: 0x4000_0000,
        },
        sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ERRNO | EPERM as u32,
        },
    ];
    let at = 3.min(prog.len());
    prog.splice(at..at, insns);
}

/// Installs the plan's filters in the calling thread (and so in everything it executes):
/// sets `no_new_privs` first, as seccomp requires of a process without
/// `CAP_SYS_ADMIN` (and Landlock already did).
pub fn apply(plan: &SeccompPlan) -> anyhow::Result<()> {
    for prog in compile_filters(plan)? {
        seccompiler::apply_filter(&prog)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse;

    fn profile(section: &str) -> Result<crate::policy::Profile, Vec<crate::policy::Diagnostic>> {
        let text = format!(
            "name: t\ndescription: d\nowners: {{ business: b, technical: t }}\nmode: enforce\n{section}"
        );
        parse("t.yaml", &text)
    }

    #[test]
    fn every_group_member_is_an_x86_64_syscall() {
        for g in GROUPS {
            let m = members(g.name).expect(g.name);
            assert_eq!(m.len(), g.members.len(), "{}", g.name);
        }
        assert_eq!(members("@module").unwrap().len(), 3);
        assert_eq!(members("mount").unwrap(), [("mount", 165)]);
        assert_eq!(
            members("io_uring_setup").unwrap(),
            [("io_uring_setup", 425)]
        );
        assert_eq!(self_protection().len(), 21);
    }

    #[test]
    fn groups_resolve_to_numbers_minus_allow() {
        let p = profile(
            "syscalls:\n  deny: [\"@mount\", \"@debug\", mount, init_module]\n  allow: [ptrace]\n",
        )
        .unwrap();
        let names: Vec<&str> = p.syscall_deny.iter().map(|d| d.name).collect();
        assert!(names.contains(&"mount") && names.contains(&"umount2"));
        assert!(names.contains(&"process_vm_readv"));
        assert!(!names.contains(&"ptrace"), "allow removes it from @debug");
        // Named twice: listed once, under the first entry that named it.
        let mount: Vec<_> = p
            .syscall_deny
            .iter()
            .filter(|d| d.name == "mount")
            .collect();
        assert_eq!(mount.len(), 1);
        assert_eq!(
            (mount[0].entry.as_str(), mount[0].field.as_str()),
            ("@mount", "syscalls.deny[0]")
        );
        assert_eq!((mount[0].line, mount[0].column), (6, 10));
        let init = p
            .syscall_deny
            .iter()
            .find(|d| d.name == "init_module")
            .unwrap();
        assert_eq!((init.field.as_str(), init.nr), ("syscalls.deny[3]", 175));
    }

    #[test]
    fn ns_group_covers_clone_with_namespace_flags() {
        let p = profile("syscalls:\n  deny: [\"@ns\"]\n").unwrap();
        let clone = p.syscall_deny.iter().find(|d| d.name == "clone").unwrap();
        assert_eq!(
            clone.cond,
            Cond::AnyBit {
                arg: 0,
                mask: CLONE_NS_FLAGS
            }
        );
        let enf = enforcement(Mode::Enforce, &p.file.syscalls);
        let plan = plan(
            &p.syscall_deny,
            enf,
            &protected_pids(100, &[101], 90, false),
        );
        let clone = plan.rules.iter().find(|r| r.nr == 56).unwrap();
        assert_eq!(clone.any.len(), 7, "one alternative per namespace flag");
        let clone3 = plan.rules.iter().find(|r| r.nr == 435).unwrap();
        assert_eq!((clone3.errno, clone3.any.len()), (ENOSYS, 0));
        assert!(
            plan.rules.iter().any(|r| r.nr == 272 && r.any.is_empty()),
            "unshare"
        );
    }

    #[test]
    fn unknown_names_and_groups_are_located_errors() {
        let errs = profile(
            "syscalls:\n  deny:\n    - mount\n    - mountt\n    - \"@mounts\"\n    - \"@privileged\"\n  allow: [nosuch]\n",
        )
        .unwrap_err();
        let got: Vec<(String, u64, u64)> = errs
            .iter()
            .map(|d| (d.field.clone(), d.line, d.column))
            .collect();
        assert_eq!(
            got,
            [
                ("syscalls.allow[0]".to_owned(), 11, 11),
                ("syscalls.deny[1]".to_owned(), 8, 7),
                ("syscalls.deny[2]".to_owned(), 9, 7),
                ("syscalls.deny[3]".to_owned(), 10, 7),
            ]
        );
        assert!(
            errs[1].message.contains("unknown syscall `mountt`"),
            "{}",
            errs[1]
        );
        assert!(errs[2].message.contains("unknown syscall group `@mounts`"));
        assert!(errs[2].hint.as_deref().unwrap_or("").contains("@mount"));
        assert!(errs[3].message.contains("`@privileged` is not supported"));
        assert!(
            errs[1]
                .to_string()
                .starts_with("t.yaml:8:7: error: syscalls.deny[1]")
        );
    }

    #[test]
    fn default_deny_is_refused() {
        let errs = profile("syscalls:\n  default: deny\n  allow: [read]\n").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(
            (errs[0].field.as_str(), errs[0].line),
            ("syscalls.default", 6)
        );
        assert!(errs[0].message.contains("not supported"), "{}", errs[0]);
    }

    /// A daemon whose ancestors never called setsid (under a container's or a minimal
    /// init's pid 1) is in process group 0: `kill(0)` by a process of that group reaches
    /// it, so 0 is protected even when the sessions are not known to be shared.
    #[test]
    fn a_daemon_in_process_group_zero_is_protected_from_kill_zero() {
        let prot = protected_pids(100, &[100], 0, false);
        assert_eq!(&prot.groups[..], &[-1, 0][..]);
        assert_eq!(prot.kernel_pids(), [100, -1]);
    }

    #[test]
    fn every_profile_carries_self_protection() {
        let p = profile("").unwrap();
        assert!(p.syscall_deny.is_empty());
        let prot = protected_pids(100, &[100, 102], 90, true);
        assert_eq!(
            (&prot.pids[..], &prot.groups[..]),
            (&[100, 102][..], &[-90, -1, 0][..])
        );
        assert_eq!(prot.kernel_pids(), [100, 102, -90, -1]);
        let plan = plan(
            &p.syscall_deny,
            enforcement(Mode::Enforce, &p.file.syscalls),
            &prot,
        );
        let rule = |nr: u32| plan.rules.iter().find(|r| r.nr == nr).cloned().unwrap();
        assert!(rule(321).any.is_empty(), "bpf always");
        assert!(rule(175).any.is_empty(), "init_module always");
        let kill = rule(62);
        assert_eq!(kill.errno, EPERM);
        assert!(kill.any.contains(&(0, 0xffff_ffff, 0xffff_ffff)), "-1");
        assert!(
            kill.any.contains(&(0, 0xffff_ffff, (-90i32) as u32 as u64)),
            "-pgid"
        );
        assert!(kill.any.contains(&(0, 0xffff_ffff, 102)), "a thread");
        assert!(kill.any.contains(&(0, 0xffff_ffff, 0)), "0: same session");
        let ptrace = rule(101);
        assert_eq!(ptrace.any[0].0, 1, "ptrace judges its pid argument");
        assert!(
            !ptrace.any.iter().any(|a| a.2 == 0),
            "ptrace(PTRACE_TRACEME, 0) is fine"
        );
        assert_eq!(
            rule(203).any.len(),
            2,
            "sched_setaffinity: the daemon's pids only"
        );
        assert_eq!(rule(424).errno, ENOSYS, "pidfd_send_signal");
        assert!(
            !plan.rules.iter().any(|r| r.nr == 435),
            "clone3 untouched without @ns"
        );
        // Monitor mode: the profile's own denials are not in the filter, self-protection is.
        let m = profile("syscalls:\n  deny: [mount]\n").unwrap();
        let mon = plan_for(&m, Mode::Monitor);
        assert!(!mon.rules.iter().any(|r| r.nr == 165));
        assert!(mon.rules.iter().any(|r| r.nr == 321));
        assert!(
            plan_for(&m, Mode::Enforce)
                .rules
                .iter()
                .any(|r| r.nr == 165)
        );
    }

    fn plan_for(p: &crate::policy::Profile, mode: Mode) -> SeccompPlan {
        plan(
            &p.syscall_deny,
            enforcement(mode, &p.file.syscalls),
            &protected_pids(1, &[], 1, false),
        )
    }

    #[test]
    fn a_profile_denial_wins_over_a_conditional_self_protection() {
        let p = profile("syscalls:\n  deny: [kill]\n").unwrap();
        let plan = plan_for(&p, Mode::Enforce);
        assert!(
            plan.rules
                .iter()
                .find(|r| r.nr == 62)
                .unwrap()
                .any
                .is_empty()
        );
    }

    #[test]
    fn plans_compile_to_filters_with_the_x32_refusal() {
        let p = profile("syscalls:\n  deny: [\"@ns\", \"@mount\"]\n").unwrap();
        let progs = compile_filters(&plan_for(&p, Mode::Enforce)).unwrap();
        assert_eq!(progs.len(), 2, "EPERM and ENOSYS");
        let x32 = &progs[0][3..6];
        assert_eq!((x32[1].k, x32[2].k), (0x4000_0000, 0x0005_0001));
        let wrong = SeccompPlan {
            arch: "aarch64".into(),
            rules: vec![],
        };
        assert!(compile_filters(&wrong).is_err());
    }

    #[test]
    fn enforcement_follows_mode_and_on_violation() {
        let r = |v: &str| {
            profile(&format!("syscalls:\n  deny: [mount]\n  {v}\n"))
                .unwrap()
                .file
                .syscalls
        };
        let e = enforcement(Mode::Enforce, &r("on_violation: block"));
        assert_eq!((e.seccomp, e.seccomp_kill, e.entry), (true, false, None));
        let e = enforcement(Mode::Enforce, &r("fallback: kill"));
        assert_eq!(e.entry, Some(OnViolation::Kill));
        let e = enforcement(Mode::Enforce, &r("on_violation: kill"));
        assert_eq!(
            (e.seccomp, e.seccomp_kill, e.entry),
            (true, true, Some(OnViolation::Kill))
        );
        let e = enforcement(Mode::Monitor, &r("on_violation: kill"));
        assert_eq!((e.seccomp, e.entry), (false, Some(OnViolation::Alert)));
        assert_eq!(name_of(165), "mount");
        assert_eq!(name_of(9999), "syscall_9999");
    }
}
