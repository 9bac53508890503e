//! Compiled profiles into the kernel's rule maps. New entries go in before stale ones go
//! out, so a reload never opens a window without the rules that stay.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::{fd::AsFd as _, unix::fs::OpenOptionsExt},
    path::Path,
};

use agent_common::{
    maps,
    policy::{
        CATEGORY_EXEC, InodeRuleKey, InodeRuleValue, MAX_PROFILES, NetKey, NetRule, PathRuleKey,
        PathRuleValue, ProfileConfig, SyscallKey, SyscallRule,
    },
    selector::SELECTOR_PROFILE,
};
use anyhow::{Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, LpmTrie, MapData, lpm_trie::Key},
};
use tracing::warn;

use super::{
    Core,
    refusal::{self, Act, Binding, MAX_TREE_DIRS, Object, Refusal, Table},
};
use crate::{
    policy::compile::{self, BoundPath, RuleTable},
    profiles::ProfileSet,
};

/// Working directories whose files `**/name` rules are bound to (the latest sessions').
pub(super) const MAX_NAME_ROOTS: usize = 16;

/// A session's working directory and the files name rules of its profile and owner
/// found in and above it.
struct NameRoot {
    dir: std::path::PathBuf,
    profile_id: u32,
    owner_uid: u32,
    files: Vec<std::path::PathBuf>,
}

/// The kernel maps profiles compile into.
pub(super) struct PolicyMaps {
    profiles: Array<MapData, ProfileConfig>,
    net_allow: LpmTrie<MapData, NetKey, NetRule>,
    net_deny: LpmTrie<MapData, NetKey, NetRule>,
    net_redirect: LpmTrie<MapData, NetKey, agent_common::policy::NetRedirect>,
    /// Where redirected sockets were addressed, by socket cookie.
    pub(super) original_destinations:
        BpfHashMap<MapData, u64, agent_common::policy::OriginalDestination>,
    path_rules: BpfHashMap<MapData, PathRuleKey, PathRuleValue>,
    inode_rules: BpfHashMap<MapData, InodeRuleKey, InodeRuleValue>,
    /// The kernel's `(ino, dev)` of the daemon's own last open, per thread.
    bind_result: BpfHashMap<MapData, u64, [u64; 2]>,
    /// Syscall rules by `(profile id, nr)`.
    syscall_rules: BpfHashMap<MapData, SyscallKey, SyscallRule>,
    /// The daemon's pids, which sessions must not signal, trace or reach.
    protected_pids: BpfHashMap<MapData, i32, u8>,
    /// Rules to bind to inodes again when files appear or are replaced.
    bound: Vec<BoundPath>,
    /// `**/name` rules, and the files of those names found in and above the working
    /// directories of the latest sessions (most recent first), bound like exact rules:
    /// the refusal layer refuses them where BPF-LSM cannot match names.
    name_rules: Vec<compile::NameRule>,
    /// The ids of the daemon's own rules (self-protection).
    protect_rules: HashSet<u32>,
    name_roots: std::collections::VecDeque<NameRoot>,
    /// An open descriptor of every bound file, by `(ino, dev)`: it keeps the inode number
    /// from being reused, and tells whether the file still exists once its rule's path
    /// names another file or none (renamed, or linked elsewhere and unlinked).
    held: HashMap<(u64, u32), File>,
    /// The fanotify refusal layer (`None` where the host cannot give permission events).
    pub(super) refusal: Option<Refusal>,
    /// Per profile id, how the refusal layer meets its exec and file denials.
    acts: HashMap<u32, [Option<Act>; 2]>,
    /// Per profile id, how it meets an exec from memory, and the rule's id.
    fileless: HashMap<u32, (Act, u32)>,
    /// Digests of the denied programs by identity and modification: a binding every
    /// 10 s does not read them again.
    digests: HashMap<refusal::DigestKey, refusal::Digest>,
    /// The `DAEMON` map, for its `policy_epoch` (set by `KernelMaps::take`).
    pub(super) epoch: Option<Array<MapData, agent_common::config::DaemonState>>,
}

impl PolicyMaps {
    /// Says the rules the kernel judges opens by changed: an open the kernel counted as
    /// a repeat of an allowed one is judged (and sent) again from now on. Called after
    /// every change to the rule maps.
    pub(super) fn bump_policy_epoch(&mut self) -> Result<()> {
        let Some(daemon) = self.epoch.as_mut() else {
            return Ok(());
        };
        let mut state = daemon
            .get(&0, 0)
            .map_err(|e| anyhow!("reading the DAEMON map: {e}"))?;
        state.policy_epoch = state.policy_epoch.wrapping_add(1);
        daemon
            .set(0, state, 0)
            .map_err(|e| anyhow!("writing the DAEMON map: {e}"))
    }

    /// One path rule (the selectors' executables use the profiles' table).
    pub(super) fn insert_path_rule(
        &mut self,
        key: PathRuleKey,
        value: PathRuleValue,
    ) -> Result<()> {
        Ok(self.path_rules.insert(key, value, 0)?)
    }

    /// Removes the selectors' executable rules not in `keep`.
    pub(super) fn remove_selector_rules_except(&mut self, keep: &HashSet<PathRuleKey>) {
        let stale: Vec<_> = self
            .path_rules
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.profile_id == SELECTOR_PROFILE && !keep.contains(k))
            .collect();
        for k in stale {
            let _ = self.path_rules.remove(&k);
        }
    }

    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("map {name} missing"))
        };
        Ok(Self {
            profiles: Array::try_from(take(maps::PROFILES)?)?,
            net_allow: LpmTrie::try_from(take(maps::NET_ALLOW)?)?,
            net_deny: LpmTrie::try_from(take(maps::NET_DENY)?)?,
            net_redirect: LpmTrie::try_from(take(maps::NET_REDIRECT)?)?,
            original_destinations: BpfHashMap::try_from(take(maps::ORIGINAL_DESTINATIONS)?)?,
            path_rules: BpfHashMap::try_from(take(maps::PATH_RULES)?)?,
            inode_rules: BpfHashMap::try_from(take(maps::INODE_RULES)?)?,
            bind_result: BpfHashMap::try_from(take(maps::BIND_RESULT)?)?,
            syscall_rules: BpfHashMap::try_from(take(maps::SYSCALL_RULES)?)?,
            protected_pids: BpfHashMap::try_from(take(maps::PROTECTED_PIDS)?)?,
            bound: Vec::new(),
            name_rules: Vec::new(),
            protect_rules: HashSet::new(),
            name_roots: std::collections::VecDeque::new(),
            held: HashMap::new(),
            refusal: None,
            acts: HashMap::new(),
            fileless: HashMap::new(),
            digests: HashMap::new(),
            epoch: None,
        })
    }

    /// Sets the daemon's pids the kernel judges syscall arguments against (new ones in
    /// before stale ones out: no window where a pid the daemon still has is missing).
    pub(super) fn protect_pids(&mut self, pids: &[i32]) -> Result<()> {
        for p in pids {
            self.protected_pids.insert(*p, 1, 0)?;
        }
        let stale: Vec<i32> = self
            .protected_pids
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !pids.contains(k))
            .collect();
        for k in stale {
            let _ = self.protected_pids.remove(&k);
        }
        Ok(())
    }

    /// Binds the deny rules to the inodes of the files they name now (a file created or
    /// replaced since the last binding is picked up here; the daemon calls this at every
    /// compilation and periodically).
    pub(super) fn rebind_inodes(&mut self) -> Result<()> {
        let results = &mut self.bind_result;
        let mut opened = HashMap::new();
        let mut all = self.bound.clone();
        for r in &self.name_roots {
            all.extend(compile::bind_named(
                &r.files,
                &self.name_rules,
                r.profile_id,
                r.owner_uid,
            ));
        }
        let (entries, partial) = compile::bind_inodes(&all, &mut |p| {
            let ((ino, dev), generation, file) = kernel_identity(results, p)?;
            opened.insert((ino, dev), file);
            Some((ino, dev, generation))
        });
        for dir in partial {
            warn!(
                directory = %dir,
                limit = compile::MAX_BOUND_FILES,
                "deny rule's directory holds more files than are bound by inode; \
                 the rest are denied by path only"
            );
        }
        let mut keep = HashSet::new();
        let mut failed = None;
        for (key, mut value) in entries {
            if self.protect_rules.contains(&value.rule_id) {
                value.flags = agent_common::policy::PATH_RULE_ALWAYS;
            }
            // A full map leaves the rest to path and name matching; the stale entries
            // below still go, and the refusal layer is still told what is bound.
            match self.inode_rules.insert(key, value, 0) {
                Ok(()) => {
                    keep.insert(key);
                }
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            warn!(error = %e, "not every file deny rules name could be bound by inode; the rest are denied by path only");
        }
        // A file bound earlier that its rule's path no longer names stays denied while it
        // exists under any name: renaming a denied program must not free it. Its binding
        // goes with its rule, or once its last link is gone.
        let rule = |k: &InodeRuleKey| InodeRuleKey {
            ino: 0,
            dev: 0,
            ..*k
        };
        // Only exact and tree rules keep a moved file: a file found by its name is bound
        // while it is found (its directory among the latest, its rule in force).
        let rules: HashSet<_> = self.bound.iter().map(|b| rule(&b.key)).collect();
        let mut held = std::mem::take(&mut self.held);
        let mut stale = Vec::new();
        let mut still_linked = Vec::new();
        for k in self.inode_rules.keys().filter_map(|k| k.ok()) {
            if keep.contains(&k) {
                continue;
            }
            let id = (k.ino, k.dev);
            let linked = held
                .get(&id)
                .and_then(|f| rustix::fs::fstat(f).ok())
                .is_some_and(|st| st.st_nlink > 0);
            if linked && rules.contains(&rule(&k)) {
                // Moved after the loop: the same file is bound once per owner and
                // profile, and every one of those keys must find it.
                still_linked.push(id);
            } else {
                stale.push(k);
            }
        }
        for id in still_linked {
            if let Some(f) = held.remove(&id) {
                opened.entry(id).or_insert(f);
            }
        }
        for k in stale {
            let _ = self.inode_rules.remove(&k);
        }
        self.held = opened;
        self.mark_denied_objects();
        self.bump_policy_epoch()
    }

    /// Binds the `**/name` rules of a session's profile and owner to the files of those
    /// names in and above `dir`, its working directory, searched at each enrolment there
    /// (the binding is redone only when what is found changed). The latest
    /// [`MAX_NAME_ROOTS`] directories stay bound; a file of such a name made after the
    /// session started is matched by name only (BPF-LSM, or the fallback).
    pub(super) fn bind_names_under(
        &mut self,
        dir: std::path::PathBuf,
        profile_id: u32,
        owner_uid: u32,
    ) -> Result<()> {
        let rules: Vec<compile::NameRule> = self
            .name_rules
            .iter()
            .filter(|r| r.key.profile_id == profile_id && r.key.owner_uid == owner_uid)
            .cloned()
            .collect();
        if rules.is_empty() {
            return Ok(());
        }
        let (files, partial) = compile::find_named(&dir, &rules);
        if partial {
            warn!(
                directory = %dir.display(),
                entries = compile::MAX_NAME_SCAN,
                files = compile::MAX_NAMED_FILES,
                "stopped searching the session's directory for files name rules deny; \
                 the rest are matched by name only"
            );
        }
        let same =
            |r: &NameRoot| r.dir == dir && r.profile_id == profile_id && r.owner_uid == owner_uid;
        let unchanged = self.name_roots.iter().any(|r| same(r) && r.files == files);
        self.name_roots.retain(|r| !same(r));
        self.name_roots.push_front(NameRoot {
            dir,
            profile_id,
            owner_uid,
            files,
        });
        let evicted = self.name_roots.len() > MAX_NAME_ROOTS;
        self.name_roots.truncate(MAX_NAME_ROOTS);
        if unchanged && !evicted {
            return Ok(());
        }
        self.rebind_inodes()
    }

    /// Hands the refusal layer every bound file and every directory of a tree rule of the
    /// profiles it acts for (enforce mode, `block` or `kill`).
    fn mark_denied_objects(&mut self) {
        let Some(refusal) = self.refusal.as_mut() else {
            return;
        };
        let acts = &self.acts;
        let protect = &self.protect_rules;
        // The daemon's self-protection is refused in every mode.
        let acted = |profile_id: u32, category: u8, rule_id: u32| {
            protect.contains(&rule_id)
                || acts
                    .get(&profile_id)
                    .is_some_and(|a| a[refusal::category_index(category)].is_some())
        };
        let mut table = Table {
            acts: acts.clone(),
            always: protect.clone(),
            fileless: self.fileless.clone(),
            ..Table::default()
        };
        let mut digests = HashMap::new();
        let mut objects = Vec::new();
        // A file bound for several profiles and owners is marked once (one descriptor).
        let mut marked = std::collections::HashSet::new();
        for (k, v) in self.inode_rules.iter().filter_map(|r| r.ok()) {
            if !acted(k.profile_id, k.category, v.rule_id) {
                continue;
            }
            let Some(file) = self.held.get(&(k.ino, k.dev)) else {
                continue;
            };
            let Ok(st) = rustix::fs::fstat(file) else {
                continue;
            };
            let binding = Binding {
                profile_id: k.profile_id,
                owner_uid: k.owner_uid,
                category: k.category,
                rule_id: v.rule_id,
            };
            table
                .by_inode
                .entry((st.st_dev, st.st_ino))
                .or_default()
                .push(binding);
            if k.category == CATEGORY_EXEC {
                let key = refusal::digest_key(&st);
                let digest = match self.digests.get(&key) {
                    Some(d) => Some(*d),
                    None => refusal::digest_of(file.as_fd()),
                };
                if let Some(d) = digest {
                    digests.insert(key, d);
                    table
                        .digests
                        .entry(st.st_size as u64)
                        .or_default()
                        .push((d, binding));
                }
            }
            if marked.insert((st.st_dev, st.st_ino))
                && let Ok(fd) = file.try_clone()
            {
                objects.push(Object {
                    fd: fd.into(),
                    dir: false,
                    opens_only: self.protect_rules.contains(&v.rule_id),
                });
            }
        }
        let mut walked = std::collections::HashSet::new();
        for b in self.bound.iter().filter(|b| b.tree) {
            if !acted(b.key.profile_id, b.key.category, b.rule_id) {
                continue;
            }
            let binding = Binding {
                profile_id: b.key.profile_id,
                owner_uid: b.key.owner_uid,
                category: b.key.category,
                rule_id: b.rule_id,
            };
            // Judged on the resolved path the kernel reports: a symlink in the rule's
            // path must not hide the files added below it.
            let resolved = std::fs::canonicalize(&b.path)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| b.path.clone());
            if resolved != b.path {
                table.trees.push((resolved.clone(), binding));
            }
            table.trees.push((b.path.clone(), binding));
            // The same tree named by several profiles is walked and marked once.
            if !walked.insert(resolved) {
                continue;
            }
            let dirs = tree_dirs(Path::new(&b.path));
            if dirs.len() >= MAX_TREE_DIRS {
                warn!(directory = %b.path, limit = MAX_TREE_DIRS, "deny rule's tree has more directories than are marked for refusal; the rest are met by the kill backstop");
            }
            let opens_only = self.protect_rules.contains(&b.rule_id);
            objects.extend(dirs.into_iter().map(|fd| Object {
                fd,
                dir: true,
                opens_only,
            }));
        }
        self.digests = digests;
        refusal.watch_execs(!table.digests.is_empty() || !table.fileless.is_empty());
        refusal.update(table, objects);
    }
}

/// Descriptors of `root` and the directories below it (not following symlinks below
/// the root), up to [`MAX_TREE_DIRS`].
fn tree_dirs(root: &Path) -> Vec<std::os::fd::OwnedFd> {
    let open = |p: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(p)
            .ok()
    };
    let mut out = Vec::new();
    let Some(first) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(root)
        .ok()
    else {
        return out;
    };
    out.push(first.into());
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if out.len() >= MAX_TREE_DIRS {
                return out;
            }
            if e.file_type().is_ok_and(|t| t.is_dir())
                && let Some(f) = open(&e.path())
            {
                out.push(f.into());
                stack.push(e.path());
            }
        }
    }
    out
}

/// `(ino, dev)` and `i_generation` of the file at `path` as the kernel programs see it:
/// the daemon opens it and the `openat` exit program records the opened file for this
/// thread. Not a bpffs
/// object (the daemon's own pins, under its protected pin directory): those cannot be
/// opened, and the attempt would fail the refusal layer's read of its event.
fn kernel_identity(
    results: &mut BpfHashMap<MapData, u64, [u64; 2]>,
    path: &Path,
) -> Option<((u64, u32), u32, File)> {
    let key = (u64::from(rustix::process::getpid().as_raw_nonzero().get() as u32) << 32)
        | u64::from(rustix::thread::gettid().as_raw_nonzero().get() as u32);
    if crate::pins::on_bpffs(path) {
        return None;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags())
        .open(path)
        .ok()?;
    let got = results.get(&key, 0).ok();
    let _ = results.remove(&key);
    // The second word: the device, and the inode's generation above it.
    got.map(|[ino, word]| ((ino, word as u32), (word >> 32) as u32, file))
}

/// Opening never blocks (a FIFO) nor takes a terminal.
fn libc_flags() -> i32 {
    (rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY).bits() as i32
}

impl Core {
    /// Compiles every profile and replaces the kernel's rule maps.
    pub(super) fn install_profiles(&mut self, set: &ProfileSet) -> Result<()> {
        let mut rules = RuleTable::default();
        let mut compiled = Vec::new();
        let mut protect_rules = HashSet::new();
        for name in set.names() {
            let next = self.profile_ids.len() as u32;
            let id = *self.profile_ids.entry(name.clone()).or_insert(next);
            if id >= MAX_PROFILES {
                bail!("more than {MAX_PROFILES} profiles");
            }
            let p = set
                .get(&name)
                .ok_or_else(|| anyhow!("profile {name} vanished"))?;
            let dns = &self.dns;
            let owners: Vec<(u32, Option<String>)> = self
                .owners
                .iter()
                .map(|uid| (*uid, self.homes.get(uid).cloned()))
                .collect();
            let mut c = compile::compile(
                p,
                id,
                &mut rules,
                &|h| dns.get(h).cloned().unwrap_or_default(),
                &owners,
            )?;
            protect_rules.extend(compile::protect_daemon(
                &mut c,
                id,
                &mut rules,
                &owners,
                &self.protected,
            ));
            for h in c.unresolved.iter().filter(|h| dns.contains_key(*h)) {
                warn!(profile = %name, host = %h, "host name does not resolve; its rule is inactive");
            }
            let acts = refusal::acts_of(&c.config, p);
            compiled.push((id, c, acts));
        }
        let m = &mut self.kernel.policy;
        // Profiles a reload removed leave no acts behind (ids are never reused).
        m.acts.clear();
        m.fileless.clear();
        let (mut deny, mut allow, mut paths) = (Vec::new(), Vec::new(), HashSet::new());
        let mut redirect = Vec::new();
        let mut bound = Vec::new();
        let mut name_rules = Vec::new();
        let mut syscalls = HashSet::new();
        for (id, c, acts) in compiled {
            for (key, rule) in c.syscall_rules {
                m.syscall_rules.insert(key, rule, 0)?;
                syscalls.insert(key);
            }
            let fileless = refusal::fileless_act(&c.config);
            // `alert` is recorded by the kernel's exec tracepoint; this layer (and its
            // watch of every exec) is for refusing.
            if let (Some(act), Some(rule)) = (fileless, c.fileless_rule)
                && act != Act::Alert
            {
                m.fileless.insert(id, (act, rule));
            }
            for (bits, key, rule) in c.net_deny {
                m.net_deny.insert(&Key::new(bits, key), rule, 0)?;
                deny.push((bits, key));
            }
            for (bits, key, rule) in c.net_allow {
                m.net_allow.insert(&Key::new(bits, key), rule, 0)?;
                allow.push((bits, key));
            }
            for (bits, key, r) in c.net_redirect {
                m.net_redirect.insert(&Key::new(bits, key), r, 0)?;
                redirect.push((bits, key));
            }
            for (key, value) in c.path_rules {
                m.path_rules.insert(key, value, 0)?;
                paths.insert(key);
            }
            bound.extend(c.bound_paths);
            name_rules.extend(c.name_rules);
            m.acts.insert(id, acts);
            let mut config = c.config;
            config.hold_port = self.hold_port;

            m.profiles.set(id, config, 0)?;
        }
        m.bound = bound;
        // The files found are bound again under the new rules (ids change with each
        // compilation; a rule the reload removed binds nothing); a name a reload adds is
        // searched for at the next enrolment.
        m.name_rules = name_rules;
        m.protect_rules = protect_rules;
        m.rebind_inodes()?;
        for (trie, keep) in [(&mut m.net_allow, &allow), (&mut m.net_deny, &deny)] {
            let stale: Vec<_> = trie
                .keys()
                .filter_map(|k| k.ok())
                .filter(|k| !keep.contains(&(k.prefix_len(), k.data())))
                .collect();
            for k in stale {
                let _ = trie.remove(&k);
            }
        }
        let stale: Vec<_> = m
            .net_redirect
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !redirect.contains(&(k.prefix_len(), k.data())))
            .collect();
        for k in stale {
            let _ = m.net_redirect.remove(&k);
        }
        // The selectors' executable rules are the selectors' own (`install_selectors`).
        let stale: Vec<_> = m
            .path_rules
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !paths.contains(k) && k.profile_id != SELECTOR_PROFILE)
            .collect();
        for k in stale {
            let _ = m.path_rules.remove(&k);
        }
        let stale: Vec<_> = m
            .syscall_rules
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !syscalls.contains(k))
            .collect();
        for k in stale {
            let _ = m.syscall_rules.remove(&k);
        }
        self.kernel.policy.bump_policy_epoch()?;
        self.rules = rules;
        self.profiles = set.clone();
        self.install_selectors()?;
        self.save_manifest();
        Ok(())
    }
}
