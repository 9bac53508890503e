//! Profiles → kernel map entries. Deny wins over allow because the kernel checks the deny
//! trie first; within a trie the longest prefix wins, so each entry also carries the port
//! ranges of the entries that enclose it (a /16 inside a /8 keeps the /8's ports).

use std::net::IpAddr;

use agent_common::policy::{
    CATEGORY_EXEC, CATEGORY_FILE, FORM_EXACT, FORM_NAME, FORM_PREFIX, InodeRuleKey, InodeRuleValue,
    MAX_PORT_RANGES, NetKey, NetRedirect, NetRule, PathRuleKey, PathRuleValue,
    PortRange as KPortRange, ProfileConfig, RULE_DEFAULT, SYSCALL_COND_ALWAYS,
    SYSCALL_COND_ANY_BIT, SYSCALL_COND_PROTECTED_PID, SYSCALL_ENTRY_NONE, SyscallKey, SyscallRule,
    fnv,
};
use anyhow::{Result, bail};

use super::{
    CompiledDestination, Fallback, Located, Mode, OnViolation, Profile, Target,
    net::Cidr,
    pattern::{KernelForm, Pattern},
};

/// `file:line` of each rule, indexed by the `rule_id` the kernel reports.
#[derive(Clone, Debug, Default)]
pub struct RuleTable {
    rules: Vec<String>,
}

impl RuleTable {
    pub(super) fn add(&mut self, profile: &Profile, field: &str, line: u64) -> u32 {
        self.add_builtin(format!("{}:{line} ({field})", profile.source))
    }

    /// A rule by its label (also one no profile file states: the daemon's own).
    fn add_builtin(&mut self, label: String) -> u32 {
        self.rules.push(label);
        (self.rules.len() - 1) as u32
    }

    /// The rule behind a kernel decision.
    pub fn describe(&self, rule_id: u32, category: &str) -> String {
        if rule_id == RULE_DEFAULT {
            return format!("{category}.default");
        }
        self.rules
            .get(rule_id as usize)
            .cloned()
            .unwrap_or_else(|| format!("rule #{rule_id}"))
    }
}

/// One trie entry: prefix length in bits, key, value.
pub type NetEntry = (u32, NetKey, NetRule);
/// One `NET_REDIRECT` entry.
pub type RedirectEntry = (u32, NetKey, NetRedirect);

/// A profile's kernel form.
#[derive(Clone, Debug)]
pub struct CompiledProfile {
    pub config: ProfileConfig,
    pub net_deny: Vec<NetEntry>,
    pub net_allow: Vec<NetEntry>,
    pub net_redirect: Vec<RedirectEntry>,
    /// Exec and file deny rules the kernel matches by path hash.
    pub path_rules: Vec<(PathRuleKey, PathRuleValue)>,
    /// Exact and directory deny rules as absolute paths, to be bound to the inodes of
    /// what they name on this host ([`bind_inodes`]).
    pub bound_paths: Vec<BoundPath>,
    /// `**/name` deny rules, bound to the files of that name found where sessions work
    /// ([`find_named`]).
    pub name_rules: Vec<NameRule>,
    /// Host names that resolved to nothing (reported, the rule is inactive until they do).
    pub unresolved: Vec<String>,
    /// The rule id of `exec.fileless` when it is not `allow`.
    pub fileless_rule: Option<u32>,
    /// `(profile id, syscall nr)` → how sessions meet the call: the profile's
    /// `syscalls.deny` and the daemon's self-protection.
    pub syscall_rules: Vec<(SyscallKey, SyscallRule)>,
}

/// The profile's word as the kernel's number.
fn action(v: OnViolation) -> u8 {
    use agent_common::vocab::OnViolation as Wire;
    let wire = match v {
        OnViolation::Block => Wire::Block,
        OnViolation::Kill => Wire::Kill,
        OnViolation::Alert => Wire::Alert,
        // Network only (`ask` of files and programs is the refusal layer's: their kernel
        // flags say record; syscalls refuse `ask` at lint): the connect is held.
        OnViolation::Ask => Wire::Ask,
    };
    wire as u8
}

/// The profile's mode as the kernel's number.
fn mode(m: Mode) -> u8 {
    use agent_common::vocab::Mode as Wire;
    let wire = match m {
        Mode::Monitor => Wire::Monitor,
        Mode::Enforce => Wire::Enforce,
    };
    wire as u8
}

/// Whether denials of a category kill: `kill`, or `block` with `fallback: kill`. The
/// kill of a fallback happens only where the LSM layer did not already refuse.
pub fn kills(mode: Mode, v: OnViolation, fallback: Option<Fallback>) -> u8 {
    u8::from(
        mode == Mode::Enforce
            && (v == OnViolation::Kill
                || (v == OnViolation::Block && fallback == Some(Fallback::Kill))),
    )
}

/// `resolve` maps a host name to its addresses (the daemon passes its DNS cache);
/// `owners` lists the session owners (uid, home if known) rules are expanded for.
// Long: one block per category of the profile (network, exec, files), each filling its own maps.
pub fn compile(
    p: &Profile,
    id: u32,
    rules: &mut RuleTable,
    resolve: &dyn Fn(&str) -> Vec<IpAddr>,
    owners: &[(u32, Option<String>)],
) -> Result<CompiledProfile> {
    let net = &p.file.network;
    let config = ProfileConfig {
        mode: mode(p.file.mode),
        net_default_deny: u8::from(net.default == super::Default::Deny),
        net_action: action(net.on_violation),
        loaded: 1,
        exec_kill: kills(p.file.mode, p.file.exec.on_violation, p.file.exec.fallback),
        file_kill: kills(
            p.file.mode,
            p.file.files.on_violation,
            p.file.files.fallback,
        ),
        exec_block: blocks(p.file.mode, p.file.exec.on_violation),
        file_block: blocks(p.file.mode, p.file.files.on_violation),
        exec_prefix_depths: 0,
        file_prefix_depths: 0,
        // Repeats of an allowed open are counted in the kernel only where its decision
        // is the whole decision (else the daemon judges every open again).
        file_repeats: u8::from(p.kernel_decides[1]),
        ..ProfileConfig::default()
    };
    let mut c = CompiledProfile {
        config,
        net_deny: Vec::new(),
        net_allow: Vec::new(),
        net_redirect: Vec::new(),
        path_rules: Vec::new(),
        bound_paths: Vec::new(),
        name_rules: Vec::new(),
        unresolved: Vec::new(),
        fileless_rule: None,
        syscall_rules: syscall_rules(p, id, rules),
    };
    for (category, field, list) in [
        (CATEGORY_EXEC, "exec.deny", &p.exec_deny),
        (CATEGORY_FILE, "files.deny", &p.files_deny),
    ] {
        for (i, l) in list.iter().enumerate() {
            let rule_id = rules.add(p, &format!("{field}[{i}]"), l.line);
            for (owner, form, text) in path_texts(&l.value, owners) {
                c.add_path_rule(id, owner, category, form, text, rule_id);
            }
        }
    }
    c.fileless_rule = (p.file.exec.fileless != super::Fileless::Allow)
        .then(|| rules.add(p, "exec.fileless", p.fileless_line));
    c.config.fileless = fileless(p);
    c.config.fileless_rule = c.fileless_rule.unwrap_or(RULE_DEFAULT);
    let mut ctx = Ctx {
        rules,
        unresolved: &mut c.unresolved,
        resolve,
    };
    c.net_deny = entries(p, id, "network.deny", &p.net_deny, &mut ctx)?;
    c.net_allow = entries(p, id, "network.allow", &p.net_allow, &mut ctx)?;
    c.net_redirect = redirect_entries(p, id, &mut ctx)?;
    Ok(c)
}

/// `network.redirect` entries as `NET_REDIRECT` holds them: each destination (a host's
/// every address) with its own ports and endpoint. Two entries for the same network
/// would overwrite each other in the trie: refused.
fn redirect_entries(p: &Profile, id: u32, ctx: &mut Ctx<'_>) -> Result<Vec<RedirectEntry>> {
    let mut out: Vec<RedirectEntry> = Vec::new();
    for (i, l) in p.net_redirect.iter().enumerate() {
        let (d, to) = &l.value;
        let rule_id = ctx.rules.add(p, &format!("network.redirect[{i}]"), l.line);
        let ports: Vec<KPortRange> = d
            .ports
            .iter()
            .map(|r| KPortRange { lo: r.lo, hi: r.hi })
            .collect();
        if ports.len() > MAX_PORT_RANGES {
            bail!(
                "{}: network.redirect[{i}] has {} port ranges; the kernel holds {MAX_PORT_RANGES}",
                p.source,
                ports.len()
            );
        }
        let cidrs: Vec<Cidr> = match &d.target {
            Target::Cidr(c) => vec![*c],
            Target::Nameservers => Vec::new(),
            Target::Host(h) => {
                let found = (ctx.resolve)(h);
                if found.is_empty() {
                    ctx.unresolved.push(h.clone());
                }
                found
                    .into_iter()
                    .map(|addr| Cidr {
                        addr,
                        prefix: if addr.is_ipv4() { 32 } else { 128 },
                    })
                    .collect()
            }
        };
        let to_addr = match to.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        for c in cidrs {
            let (addr, bits) = v6_form(&c);
            let key = NetKey {
                profile_id: id.to_be_bytes(),
                addr,
            };
            if out
                .iter()
                .any(|(b, k, _)| *b == NetKey::prefix_len(bits) && *k == key)
            {
                bail!(
                    "{}: network.redirect[{i}] names a network another redirect entry names",
                    p.source
                );
            }
            let mut rule = NetRule {
                rule_id,
                nranges: ports.len() as u32,
                ..NetRule::default()
            };
            rule.ranges[..ports.len()].copy_from_slice(&ports);
            out.push((
                NetKey::prefix_len(bits),
                key,
                NetRedirect {
                    rule,
                    to_addr,
                    to_port: to.port(),
                    _pad: [0; 6],
                },
            ));
        }
    }
    Ok(out)
}

/// The profile's syscall rules, then the daemon's self-protection for the calls the
/// profile does not refuse itself (its own rule names the refusal where it does: it is
/// what the profile's author wrote).
pub fn syscall_rules(
    p: &Profile,
    id: u32,
    rules: &mut RuleTable,
) -> Vec<(SyscallKey, SyscallRule)> {
    use super::syscalls::{self, Cond};
    let kernel_cond = |c: Cond| match c {
        Cond::Always => (SYSCALL_COND_ALWAYS, 0, 0),
        Cond::AnyBit { arg, mask } => (SYSCALL_COND_ANY_BIT, u32::from(arg), mask),
        Cond::ProtectedPid { arg, .. } => (SYSCALL_COND_PROTECTED_PID, u32::from(arg), 0),
    };
    let entry_of = |v: Option<OnViolation>| v.map_or(SYSCALL_ENTRY_NONE, action);
    let enf = syscalls::enforcement(p.file.mode, &p.file.syscalls);
    let mut out: Vec<(SyscallKey, SyscallRule)> = Vec::new();
    let mut ids: Vec<(String, u32)> = Vec::new();
    for d in &p.syscall_deny {
        let rule_id = match ids.iter().find(|(f, _)| *f == d.field) {
            Some((_, r)) => *r,
            None => {
                let r = rules.add(p, &d.field, d.line);
                ids.push((d.field.clone(), r));
                r
            }
        };
        let (cond, arg, mask) = kernel_cond(d.cond);
        out.push((
            SyscallKey {
                profile_id: id,
                nr: d.nr,
            },
            SyscallRule {
                rule_id,
                entry: entry_of(enf.entry),
                seccomp: u8::from(enf.seccomp),
                seccomp_kill: u8::from(enf.seccomp_kill),
                cond,
                arg,
                _pad: 0,
                mask,
            },
        ));
    }
    // An unconditional profile rule covers the call; a conditional one (clone with
    // namespace flags) leaves it to the profile, which is the rarer case here.
    let refused_by_profile = |nr: u32| enf.seccomp && out.iter().any(|(k, _)| k.nr == nr);
    let mut labels: Vec<(&str, u32)> = Vec::new();
    let mut protect = Vec::new();
    for (name, cond, label) in syscalls::self_protection() {
        let nr = syscalls::nr(name);
        if refused_by_profile(nr) {
            continue;
        }
        let rule_id = match labels.iter().find(|(l, _)| *l == label) {
            Some((_, r)) => *r,
            None => {
                let r = rules.add_builtin(format!("agentwarden self-protection: {label}"));
                labels.push((label, r));
                r
            }
        };
        let (cond, arg, mask) = kernel_cond(cond);
        protect.push((
            SyscallKey { profile_id: id, nr },
            SyscallRule {
                rule_id,
                entry: action(syscalls::self_protection_entry(p.file.mode)),
                seccomp: 1,
                seccomp_kill: 0,
                cond,
                arg,
                _pad: 0,
                mask,
            },
        ));
    }
    out.retain(|(k, _)| !protect.iter().any(|(pk, _)| pk.nr == k.nr));
    out.extend(protect);
    out
}

impl CompiledProfile {
    /// One exec or file deny rule in its kernel form for one owner: the path hash the
    /// kernel looks up (with the depth of a tree's root), and the inode binding of an
    /// exact or tree rule or the name rule of a `**/name` one.
    fn add_path_rule(
        &mut self,
        id: u32,
        owner: u32,
        category: u8,
        form: u8,
        text: String,
        rule_id: u32,
    ) {
        if form == FORM_PREFIX {
            // Depth of the tree's root: the kernel looks up prefixes only there.
            let depth = text.matches('/').count().min(63);
            let mask = if category == CATEGORY_EXEC {
                &mut self.config.exec_prefix_depths
            } else {
                &mut self.config.file_prefix_depths
            };
            *mask |= 1 << depth;
        }
        self.path_rules.push((
            PathRuleKey {
                hash: fnv(text.as_bytes()),
                profile_id: id,
                owner_uid: owner,
                category,
                form,
                _pad: [0; 6],
            },
            PathRuleValue { rule_id, flags: 0 },
        ));
        let key = InodeRuleKey {
            ino: 0,
            dev: 0,
            profile_id: id,
            owner_uid: owner,
            category,
            _pad: [0; 3],
        };
        if form == FORM_NAME {
            self.name_rules.push(NameRule {
                name: text,
                key,
                rule_id,
            });
        } else {
            self.bound_paths.push(BoundPath {
                path: text,
                tree: form == FORM_PREFIX,
                key,
                rule_id,
                no_follow: false,
            });
        }
    }
}

/// `exec.fileless` as the kernel's `FILELESS_*`, resolved against the mode and the
/// exec `on_violation`: `deny` acts only in enforce mode, and as the category acts.
pub fn fileless(p: &Profile) -> u8 {
    use agent_common::policy::{FILELESS_ALERT, FILELESS_ALLOW, FILELESS_BLOCK, FILELESS_KILL};
    let f = &p.file;
    match (f.exec.fileless, f.mode, f.exec.on_violation) {
        (super::Fileless::Allow, _, _) => FILELESS_ALLOW,
        (super::Fileless::Deny, Mode::Enforce, OnViolation::Block) => FILELESS_BLOCK,
        (super::Fileless::Deny, Mode::Enforce, OnViolation::Kill) => FILELESS_KILL,
        _ => FILELESS_ALERT,
    }
}

/// Whether denials of a category are refused before the operation where the LSM layer
/// runs.
pub fn blocks(mode: Mode, v: OnViolation) -> u8 {
    u8::from(mode == Mode::Enforce && v == OnViolation::Block)
}

/// An exact or directory deny rule, expanded to an absolute path.
#[derive(Clone, Debug)]
pub struct BoundPath {
    pub path: String,
    /// `/dir/**`: every file below `path`.
    pub tree: bool,
    /// The key to fill with each file's inode.
    pub key: InodeRuleKey,
    pub rule_id: u32,
    /// Found by a name rule: bound only while the path itself is a regular file (a
    /// symlink put in its place is not followed).
    pub no_follow: bool,
}

/// A `**/name` deny rule of one profile and owner.
#[derive(Clone, Debug)]
pub struct NameRule {
    pub name: String,
    pub key: InodeRuleKey,
    pub rule_id: u32,
}

/// Directory entries looked at per working directory for [`find_named`]; a larger tree
/// is searched in part and reported.
pub const MAX_NAME_SCAN: usize = 20_000;

/// Adds the daemon's own directories (`what`, absolute path) to a compiled profile's
/// file deny rules as trees, for every owner: no session opens, reads or writes them
/// (its audit store and event log), decided like the profile's own file rules, with a
/// rule id that says so
/// (`agentwarden self-protection: <what> (<dir>/**)`).
pub fn protect_daemon(
    c: &mut CompiledProfile,
    id: u32,
    rules: &mut RuleTable,
    owners: &[(u32, Option<String>)],
    dirs: &[(&str, std::path::PathBuf)],
) -> Vec<u32> {
    let mut ids = Vec::new();
    for (what, dir) in dirs {
        let text = dir.to_string_lossy().trim_end_matches('/').to_owned();
        if !text.starts_with('/') || text.len() < 2 {
            continue;
        }
        // A file is denied as itself (and its inode), a directory as a tree.
        let file = std::fs::metadata(dir).is_ok_and(|m| !m.is_dir());
        let (form, shown) = if file {
            (FORM_EXACT, text.clone())
        } else {
            (FORM_PREFIX, format!("{text}/**"))
        };
        let rule_id = rules.add_builtin(format!("agentwarden self-protection: {what} ({shown})"));
        ids.push(rule_id);
        for (owner, _) in owners {
            c.add_path_rule(id, *owner, CATEGORY_FILE, form, text.clone(), rule_id);
        }
        for (_, v) in c
            .path_rules
            .iter_mut()
            .filter(|(_, v)| v.rule_id == rule_id)
        {
            v.flags = agent_common::policy::PATH_RULE_ALWAYS;
        }
    }
    ids
}

/// Files bound per working directory by name rules; more are matched by name only.
pub const MAX_NAMED_FILES: usize = 256;

/// The files `**/name` rules name in and above a session's working directory `root`:
/// every file of such a name in the tree below it, breadth first (the files nearest the
/// directory first), on its filesystem only (no `/proc`, no mounted network or FUSE
/// filesystem), up to [`MAX_NAME_SCAN`] entries and [`MAX_NAMED_FILES`] files, symlinks
/// not followed; and in each directory above it (where agents look for their `.env` at
/// start-up). Returns them and whether the search stopped at a bound.
pub fn find_named(root: &std::path::Path, rules: &[NameRule]) -> (Vec<std::path::PathBuf>, bool) {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let names: std::collections::BTreeSet<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    let Ok(dev) = std::fs::metadata(root).map(|m| m.dev()) else {
        return (out, false);
    };
    if names.is_empty() {
        return (out, false);
    }
    for dir in root.ancestors().skip(1) {
        for n in &names {
            let p = dir.join(n);
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
                out.push(p);
            }
        }
    }
    let mut seen = 0;
    let mut queue = std::collections::VecDeque::from([root.to_path_buf()]);
    while let Some(dir) = queue.pop_front() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > MAX_NAME_SCAN || out.len() >= MAX_NAMED_FILES {
                return (out, true);
            }
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                if e.metadata().is_ok_and(|m| m.dev() == dev) {
                    queue.push_back(e.path());
                }
            } else if t.is_file() && e.file_name().to_str().is_some_and(|n| names.contains(n)) {
                out.push(e.path());
            }
        }
    }
    (out, false)
}

/// Each of `files` bound like an exact path by the name rules of one profile and owner
/// (the session's) that its name matches.
pub fn bind_named(
    files: &[std::path::PathBuf],
    rules: &[NameRule],
    profile_id: u32,
    owner_uid: u32,
) -> Vec<BoundPath> {
    let mut out = Vec::new();
    let ours = |r: &&NameRule| r.key.profile_id == profile_id && r.key.owner_uid == owner_uid;
    for f in files {
        let Some(name) = f.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        for r in rules.iter().filter(ours).filter(|r| r.name == name) {
            out.push(BoundPath {
                path: f.to_string_lossy().into_owned(),
                tree: false,
                key: r.key,
                rule_id: r.rule_id,
                no_follow: true,
            });
        }
    }
    out
}

/// A file as the kernel programs see it: `(ino, kernel dev, i_generation)`.
pub type FileIdentity = (u64, u32, u32);

/// Files bound per directory rule; a larger tree is bound in part and reported.
pub const MAX_BOUND_FILES: usize = 4_096;

/// Binds rules to the inodes of the files they name now, so that another name for the
/// same file (a hard link, a rename, a bind mount) is denied too. `identity` gives a
/// file's [`FileIdentity`] as the kernel programs see it. Returns the entries and, for
/// each directory rule that had more files than [`MAX_BOUND_FILES`], its path.
pub fn bind_inodes(
    bound: &[BoundPath],
    identity: &mut dyn FnMut(&std::path::Path) -> Option<FileIdentity>,
) -> (Vec<(InodeRuleKey, InodeRuleValue)>, Vec<String>) {
    let mut out = Vec::new();
    let mut partial = Vec::new();
    // A file several rules name (a program and its alias links, say /usr/bin/nc and
    // /usr/bin/netcat) is bound to the first of them, the rule a reader finds first.
    let mut taken = std::collections::HashSet::new();
    // Rules are expanded per owner: each file is asked about once.
    let mut seen_paths = std::collections::HashMap::new();
    let mut identity = |p: &std::path::Path| {
        *seen_paths
            .entry(p.to_path_buf())
            .or_insert_with(|| identity(p))
    };
    for b in bound {
        let mut push = |path: &std::path::Path, m: &std::fs::Metadata| {
            if !m.is_file() {
                return;
            }
            if let Some((ino, dev, generation)) = identity(path) {
                let key = InodeRuleKey { ino, dev, ..b.key };
                if taken.insert(key) {
                    out.push((
                        key,
                        InodeRuleValue {
                            rule_id: b.rule_id,
                            flags: 0,
                            generation,
                            _pad: 0,
                        },
                    ));
                }
            }
        };
        if !b.tree {
            let path = std::path::Path::new(&b.path);
            let m = if b.no_follow {
                std::fs::symlink_metadata(path)
            } else {
                std::fs::metadata(path)
            };
            if let Ok(m) = m {
                push(path, &m);
            }
            continue;
        }
        let mut seen = 0;
        let mut stack = vec![std::path::PathBuf::from(&b.path)];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                // Not following symlinks: a link's target is judged by its own path.
                let Ok(m) = e.metadata() else { continue };
                if m.is_dir() {
                    stack.push(e.path());
                } else if seen < MAX_BOUND_FILES {
                    seen += 1;
                    push(&e.path(), &m);
                } else {
                    partial.push(b.path.clone());
                    stack.clear();
                    break;
                }
            }
        }
    }
    (out, partial)
}

/// The kernel's `dev_t` (`major << 20 | minor`, as in `super_block.s_dev`) of a
/// `st_dev` from stat(2), which encodes major and minor differently. (On overlayfs stat
/// reports mapped numbers; the daemon asks the kernel instead.)
pub fn kernel_dev(st_dev: u64) -> u32 {
    let major = rustix::fs::major(st_dev);
    let minor = rustix::fs::minor(st_dev);
    (major << 20) | (minor & 0xf_ffff)
}

/// (owner, form, absolute text) of a pattern as the kernel matches it, once per session
/// owner so the kernel looks up one key per form (`~` patterns only for owners with a
/// home).
fn path_texts(p: &Pattern, owners: &[(u32, Option<String>)]) -> Vec<(u32, u8, String)> {
    let src = p.source();
    let (form, text) = match p.kernel_form() {
        KernelForm::Exact => (FORM_EXACT, src),
        KernelForm::Prefix => (FORM_PREFIX, src.strip_suffix("/**").unwrap_or("")),
        KernelForm::Basename => (FORM_NAME, src.trim_start_matches("**/")),
        KernelForm::UserspaceOnly => return Vec::new(),
    };
    if !p.is_home_relative() {
        return owners
            .iter()
            .map(|(uid, _)| (*uid, form, text.to_owned()))
            .collect();
    }
    let rest = text.strip_prefix('~').unwrap_or(text);
    owners
        .iter()
        .filter_map(|(uid, home)| {
            let home = home.as_deref()?;
            Some((*uid, form, format!("{}{rest}", home.trim_end_matches('/'))))
        })
        .collect()
}

/// The address as 16 bytes (IPv4 mapped) and the prefix length in that form.
fn v6_form(c: &Cidr) -> ([u8; 16], u32) {
    match c.addr {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), 96 + u32::from(c.prefix)),
        IpAddr::V6(v6) => (v6.octets(), u32::from(c.prefix)),
    }
}

/// What `resolve` is asked for the system's name servers: not a host name (no rule's
/// `host` can be it), so the daemon keeps the servers beside its host answers.
pub const NAMESERVERS: &str = "<nameservers>";

struct Ctx<'a> {
    rules: &'a mut RuleTable,
    unresolved: &'a mut Vec<String>,
    resolve: &'a dyn Fn(&str) -> Vec<IpAddr>,
}

fn entries(
    p: &Profile,
    id: u32,
    field: &str,
    list: &[Located<CompiledDestination>],
    ctx: &mut Ctx<'_>,
) -> Result<Vec<NetEntry>> {
    // (addr, prefix bits, ports, rule id)
    let mut raw: Vec<([u8; 16], u32, Vec<KPortRange>, u32)> = Vec::new();
    for (i, d) in list.iter().enumerate() {
        let rule_id = ctx.rules.add(p, &format!("{field}[{i}]"), d.line);
        let ports: Vec<KPortRange> = d
            .value
            .ports
            .iter()
            .map(|r| KPortRange { lo: r.lo, hi: r.hi })
            .collect();
        let ips = |ips: Vec<IpAddr>| -> Vec<Cidr> {
            ips.into_iter()
                .map(|addr| Cidr {
                    addr,
                    prefix: if addr.is_ipv4() { 32 } else { 128 },
                })
                .collect()
        };
        let cidrs: Vec<Cidr> = match &d.value.target {
            Target::Cidr(c) => vec![*c],
            // An empty list (no resolver configuration) leaves the rule inactive; the
            // daemon reports it when it reads the configuration.
            Target::Nameservers => ips((ctx.resolve)(NAMESERVERS)),
            Target::Host(h) => {
                let found = (ctx.resolve)(h);
                if found.is_empty() {
                    ctx.unresolved.push(h.clone());
                }
                ips(found)
            }
        };
        for c in cidrs {
            let (addr, bits) = v6_form(&c);
            match raw.iter_mut().find(|e| e.0 == addr && e.1 == bits) {
                Some(e) => e.2.extend(&ports),
                None => raw.push((addr, bits, ports.clone(), rule_id)),
            }
        }
    }
    let snapshot = raw.clone();
    let mut out = Vec::new();
    for (addr, bits, mut ports, rule_id) in raw {
        for (a2, b2, p2, _) in &snapshot {
            if *b2 < bits && prefix_eq(a2, &addr, *b2) {
                ports.extend(p2);
            }
        }
        ports.sort_by_key(|r| (r.lo, r.hi));
        ports.dedup();
        if ports.len() > MAX_PORT_RANGES {
            bail!(
                "{}: a {field} entry combines {} port ranges; the kernel holds {MAX_PORT_RANGES}",
                p.source,
                ports.len()
            );
        }
        let mut rule = NetRule {
            rule_id,
            nranges: ports.len() as u32,
            ..NetRule::default()
        };
        rule.ranges[..ports.len()].copy_from_slice(&ports);
        let key = NetKey {
            profile_id: id.to_be_bytes(),
            addr,
        };
        out.push((NetKey::prefix_len(bits), key, rule));
    }
    Ok(out)
}

fn prefix_eq(a: &[u8; 16], b: &[u8; 16], bits: u32) -> bool {
    let (a, b) = (u128::from_be_bytes(*a), u128::from_be_bytes(*b));
    let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
    a & mask == b & mask
}

/// Host names used by a profile's network rules.
pub fn host_names(p: &Profile) -> Vec<String> {
    p.net_allow
        .iter()
        .chain(&p.net_deny)
        .map(|d| &d.value)
        .chain(p.net_redirect.iter().map(|r| &r.value.0))
        .filter_map(|d| match &d.target {
            Target::Host(h) => Some(h.clone()),
            Target::Cidr(_) | Target::Nameservers => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse;

    const P: &str = "name: t\ndescription: d\nowners: { business: b, technical: t }\nmode: enforce\n\
network:\n  default: deny\n  allow:\n    - { cidr: 10.0.0.0/8, ports: \"443\" }\n    - { cidr: 10.1.0.0/16, ports: \"80\" }\n    - { cidr: \"::1\" }\n  deny:\n    - { cidr: 10.1.2.3 }\n";

    #[test]
    fn tries_hold_inherited_ports_and_mapped_ipv4() {
        let p = parse("t.yaml", P).unwrap();
        let mut rules = RuleTable::default();
        let c = compile(&p, 7, &mut rules, &|_| Vec::new(), &[]).unwrap();
        assert_eq!(
            (
                c.config.mode,
                c.config.net_default_deny,
                c.config.net_action
            ),
            (
                agent_common::vocab::Mode::Enforce as u8,
                1,
                agent_common::vocab::OnViolation::Block as u8
            )
        );
        assert_eq!(c.net_deny.len(), 1);
        let (bits, key, _) = c.net_deny[0];
        assert_eq!(bits, 32 + 128);
        assert_eq!(key.profile_id, 7u32.to_be_bytes());
        assert_eq!(&key.addr[10..], &[0xff, 0xff, 10, 1, 2, 3]);
        let inner = c.net_allow.iter().find(|e| e.0 == 32 + 96 + 16).unwrap().2;
        assert!(
            inner.has_port(80) && inner.has_port(443),
            "inherits the /8's ports"
        );
        assert!(!inner.has_port(22));
        let v6 = c.net_allow.iter().find(|e| e.0 == 32 + 128).unwrap().2;
        assert!(v6.has_port(1) && v6.has_port(65535));
        assert_eq!(
            rules.describe(inner.rule_id, "network"),
            "t.yaml:9 (network.allow[1])"
        );
        assert_eq!(rules.describe(RULE_DEFAULT, "network"), "network.default");
    }

    fn syscall_profile(mode: &str, section: &str) -> Profile {
        let text = format!(
            "name: t\ndescription: d\nowners: {{ business: b, technical: t }}\nmode: {mode}\n{section}"
        );
        parse("t.yaml", &text).unwrap()
    }

    /// The profile's rules carry its line and how each session kind meets them; the
    /// daemon's self-protection fills in what the profile does not refuse itself, under
    /// its own label, and conditional rules carry the argument they judge.
    #[test]
    fn syscall_rules_carry_the_profile_rule_or_self_protection() {
        use agent_common::vocab::OnViolation as Wire;
        let p = syscall_profile(
            "enforce",
            "syscalls:\n  deny: [\"@module\", \"@ns\"]\n  fallback: kill\n",
        );
        let mut rules = RuleTable::default();
        let c = syscall_rules(&p, 3, &mut rules);
        let rule = |nr: u32| {
            c.iter()
                .find(|(k, _)| k.nr == nr && k.profile_id == 3)
                .map(|(_, r)| *r)
                .unwrap_or_else(|| panic!("no rule for {nr}"))
        };
        // init_module: the profile's own rule wins over self-protection's.
        let init = rule(175);
        assert_eq!(
            rules.describe(init.rule_id, "syscalls"),
            "t.yaml:6 (syscalls.deny[0])"
        );
        assert_eq!(
            (init.seccomp, init.seccomp_kill, init.entry, init.cond),
            (1, 0, Wire::Kill as u8, SYSCALL_COND_ALWAYS)
        );
        let clone = rule(56);
        assert_eq!((clone.cond, clone.arg), (SYSCALL_COND_ANY_BIT, 0));
        assert_eq!(clone.mask, super::super::syscalls::CLONE_NS_FLAGS);
        let bpf = rule(321);
        assert_eq!(
            rules.describe(bpf.rule_id, "syscalls"),
            "agentwarden self-protection: bpf()"
        );
        assert_eq!((bpf.seccomp, bpf.entry), (1, Wire::Kill as u8));
        let ptrace = rule(101);
        assert_eq!((ptrace.cond, ptrace.arg), (SYSCALL_COND_PROTECTED_PID, 1));
        // One rule id per label: the five signal calls share theirs.
        assert_eq!(rule(62).rule_id, rule(200).rule_id);
        assert_eq!(c.iter().filter(|(k, _)| k.nr == 175).count(), 1);
    }

    /// Monitor mode: the profile's denials are recorded at entry and not refused;
    /// self-protection is refused all the same, and recorded (not killed) at entry.
    #[test]
    fn monitor_profiles_record_their_syscalls_and_keep_self_protection() {
        use agent_common::vocab::OnViolation as Wire;
        let p = syscall_profile("monitor", "syscalls:\n  deny: [mount, bpf]\n");
        let mut rules = RuleTable::default();
        let c = syscall_rules(&p, 0, &mut rules);
        let mount = c.iter().find(|(k, _)| k.nr == 165).unwrap().1;
        assert_eq!((mount.seccomp, mount.entry), (0, Wire::Alert as u8));
        let bpf = c.iter().find(|(k, _)| k.nr == 321).unwrap().1;
        assert_eq!((bpf.seccomp, bpf.entry), (1, Wire::Alert as u8));
        assert!(
            rules
                .describe(bpf.rule_id, "syscalls")
                .starts_with("agentwarden")
        );
        // A profile without the section still gets every self-protection rule.
        let bare = syscall_rules(&syscall_profile("enforce", ""), 0, &mut rules);
        assert_eq!(bare.len(), super::super::syscalls::self_protection().len());
        assert!(bare.iter().all(|(_, r)| r.seccomp == 1));
    }
}

#[cfg(test)]
mod path_tests {
    use std::os::unix::fs::MetadataExt;

    use agent_common::policy::{CATEGORY_FILE, FORM_EXACT, FORM_NAME, FORM_PREFIX, fnv};

    use super::*;
    use crate::policy::parse;

    #[test]
    fn path_rules_hash_what_the_kernel_hashes() {
        let text = "name: t\ndescription: d\nowners: { business: b, technical: t }\nmode: enforce\n\
files:\n  deny: [/etc/shadow, ~/.ssh/**, \"**/.env\", /**/*.pem]\n  fallback: kill\n";
        let p = parse("t.yaml", text).unwrap();
        let mut rules = RuleTable::default();
        let owners = [
            (1000, Some("/home/a".to_owned())),
            (0, Some("/root".to_owned())),
        ];
        let c = compile(&p, 3, &mut rules, &|_| Vec::new(), &owners).unwrap();
        assert_eq!((c.config.file_kill, c.config.exec_kill), (1, 0));
        let keys: Vec<(u32, u8, u64)> = c
            .path_rules
            .iter()
            .filter(|(k, _)| k.category == CATEGORY_FILE && k.profile_id == 3)
            .map(|(k, _)| (k.owner_uid, k.form, k.hash))
            .collect();
        for owner in [1000, 0] {
            assert!(keys.contains(&(owner, FORM_EXACT, fnv(b"/etc/shadow"))));
            assert!(keys.contains(&(owner, FORM_NAME, fnv(b".env"))));
        }
        assert!(keys.contains(&(1000, FORM_PREFIX, fnv(b"/home/a/.ssh"))));
        assert!(keys.contains(&(0, FORM_PREFIX, fnv(b"/root/.ssh"))));
        assert_eq!(keys.len(), 6, "the *.pem wildcard stays in userspace");
        // `/home/a/.ssh` and `/root/.ssh` are trees rooted at depths 3 and 2.
        assert_eq!(c.config.file_prefix_depths, (1 << 3) | (1 << 2));
    }

    #[test]
    fn rules_bind_to_the_inodes_of_the_files_they_name() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets");
        std::fs::create_dir_all(secrets.join("deep")).unwrap();
        std::fs::write(secrets.join("deep/key"), "k").unwrap();
        std::fs::write(dir.path().join("token"), "t").unwrap();
        let text = format!(
            "name: t\ndescription: d\nowners: {{ business: b, technical: t }}\nmode: enforce\n\
files:\n  deny: [{0}/token, {0}/secrets/**, {0}/missing]\n  on_violation: kill\n",
            dir.path().display()
        );
        let p = parse("t.yaml", &text).unwrap();
        let c = compile(
            &p,
            2,
            &mut RuleTable::default(),
            &|_| Vec::new(),
            &[(0, None)],
        )
        .unwrap();
        assert_eq!(c.bound_paths.len(), 3);
        let mut by_stat = |p: &std::path::Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.ino(), kernel_dev(m.dev()), 0))
        };
        let (inodes, partial) = bind_inodes(&c.bound_paths, &mut by_stat);
        assert!(partial.is_empty());
        let st = std::fs::metadata(secrets.join("deep/key")).unwrap();
        let key = inodes
            .iter()
            .find(|(k, _)| k.ino == st.ino())
            .expect("file below the directory rule bound");
        assert_eq!(key.0.dev, kernel_dev(st.dev()));
        assert_eq!((key.0.profile_id, key.0.category), (2, CATEGORY_FILE));
        assert_eq!(
            inodes.len(),
            2,
            "token and secrets/deep/key; nothing for missing"
        );
    }

    #[test]
    fn name_rules_find_their_files_in_and_above_the_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("work/project");
        std::fs::create_dir_all(root.join("svc/api")).unwrap();
        std::fs::create_dir_all(root.join(".env.d")).unwrap();
        std::fs::create_dir_all(dir.path().join("x")).unwrap();
        for f in [
            "work/.env",
            "work/project/.env",
            "work/project/svc/api/.env",
            "x/.env",
        ] {
            std::fs::write(dir.path().join(f), "S=1").unwrap();
        }
        std::fs::write(root.join(".env.example"), "S=").unwrap();
        std::os::unix::fs::symlink(dir.path().join("x/.env"), root.join("svc/.env")).unwrap();
        let text = "name: t\ndescription: d\nowners: { business: b, technical: t }\nmode: enforce\n\
files:\n  deny: [\"**/.env\"]\n  on_violation: block\n";
        let p = parse("t.yaml", text).unwrap();
        let c = compile(
            &p,
            2,
            &mut RuleTable::default(),
            &|_| Vec::new(),
            &[(0, None), (1000, None)],
        )
        .unwrap();
        assert_eq!(c.name_rules.len(), 2, "one per owner");
        let (files, partial) = find_named(&root, &c.name_rules);
        assert!(!partial);
        let found: Vec<BoundPath> = [0, 1000]
            .into_iter()
            .flat_map(|owner| bind_named(&files, &c.name_rules, 2, owner))
            .collect();
        assert!(
            bind_named(&files, &c.name_rules, 3, 0).is_empty(),
            "another profile's"
        );
        let mut paths: Vec<String> = found
            .iter()
            .map(|b| {
                b.path
                    .strip_prefix(&*dir.path().to_string_lossy())
                    .unwrap()
                    .to_owned()
            })
            .collect();
        paths.sort();
        paths.dedup();
        // Not the sibling tree, not `.env.example`, not a symlink named `.env` (its
        // target is judged by its own name).
        assert_eq!(
            paths,
            [
                "/work/.env",
                "/work/project/.env",
                "/work/project/svc/api/.env"
            ]
        );
        assert_eq!(found.len(), 6, "each file for both owners");
        assert!(
            found
                .iter()
                .all(|b| !b.tree && b.rule_id == c.name_rules[0].rule_id)
        );
    }

    #[test]
    fn a_file_several_rules_name_is_bound_to_the_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nc.openbsd"), "p").unwrap();
        for alias in ["nc", "netcat"] {
            std::os::unix::fs::symlink("nc.openbsd", dir.path().join(alias)).unwrap();
        }
        let text = format!(
            "name: t\ndescription: d\nowners: {{ business: b, technical: t }}\nmode: enforce\n\
exec:\n  deny: [{0}/nc, {0}/netcat]\n  on_violation: block\n",
            dir.path().display()
        );
        let p = parse("t.yaml", &text).unwrap();
        let mut table = RuleTable::default();
        let c = compile(&p, 2, &mut table, &|_| Vec::new(), &[(0, None)]).unwrap();
        let mut by_stat = |p: &std::path::Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.ino(), kernel_dev(m.dev()), 0))
        };
        let (inodes, _) = bind_inodes(&c.bound_paths, &mut by_stat);
        assert_eq!(inodes.len(), 1, "{inodes:?}");
        let first = c
            .bound_paths
            .iter()
            .find(|b| b.path.ends_with("/nc"))
            .unwrap();
        assert_eq!(inodes[0].1.rule_id, first.rule_id);
    }

    #[test]
    fn kernel_dev_encoding() {
        // 8:1 (sda1) is 0x801 in stat's encoding and 8 << 20 | 1 in the kernel's.
        assert_eq!(kernel_dev(0x801), (8 << 20) | 1);
        assert_eq!(
            kernel_dev(rustix::fs::makedev(259, 0x1_0003)),
            (259 << 20) | 0x1_0003
        );
    }
}
