//! Enrolment by selector, the daemon's part: the profiles' `match:` compiled into the
//! kernel's maps (the kernel judges every exec outside a session against them), the
//! cgroups they name resolved to ids, and the sessions the kernel starts registered
//! from its enrolment record.

use std::{collections::HashSet, os::unix::fs::MetadataExt as _};

use agent_common::{
    event::EnrolEvent,
    maps,
    selector::{ArgvKey, CGROUP_PENDING, SelectorConfig, SelectorEntry},
};
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData},
};

use super::*;
use crate::policy::selectors::{self, CheckedSelector};

/// The kernel's selector maps.
pub(super) struct SelectorMaps {
    entries: Array<MapData, SelectorEntry>,
    config: Array<MapData, SelectorConfig>,
    argv: BpfHashMap<MapData, ArgvKey, u64>,
    /// cgroup id → selector bits (paths resolved here, labels written by the daemon,
    /// cgroups created later added by the kernel).
    pub(super) cgroups: BpfHashMap<MapData, u64, u32>,
    cgroup_paths: BpfHashMap<MapData, u64, u32>,
    /// Processes the kernel held in a pending cgroup, with the cgroup's id.
    pub(super) held: BpfHashMap<MapData, u32, u64>,
}

impl SelectorMaps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("map {name} missing"))
        };
        Ok(Self {
            entries: Array::try_from(take(maps::SELECTORS)?)?,
            config: Array::try_from(take(maps::SELECTOR_CONFIG)?)?,
            argv: BpfHashMap::try_from(take(maps::SELECTOR_ARGV)?)?,
            cgroups: BpfHashMap::try_from(take(maps::SELECTOR_CGROUPS)?)?,
            cgroup_paths: BpfHashMap::try_from(take(maps::SELECTOR_CGROUP_PATHS)?)?,
            held: BpfHashMap::try_from(take(maps::SELECTOR_HELD)?)?,
        })
    }
}

impl Core {
    /// Compiles every profile's selectors into the kernel. The count goes to 0 first and
    /// to the new count last, so the kernel never judges a half-written table; an exec
    /// in between is judged by no selector (the window of one reload's few writes).
    pub(super) fn install_selectors(&mut self) -> Result<()> {
        let mut inputs: Vec<(String, u32, u32, Vec<CheckedSelector>)> = Vec::new();
        for name in self.profiles.names() {
            let Some(p) = self.profiles.get(&name) else {
                continue;
            };
            if p.selectors.is_empty() {
                continue;
            }
            let Some(id) = self.profile_ids.get(&name).copied() else {
                continue;
            };
            // A session the kernel starts is like an attached one: no seccomp filter, no
            // Landlock; its profile must be enforceable by the kernel's layers here.
            match control::enforceable_flags(&self.programs, p) {
                Ok(flags) => inputs.push((name.clone(), id, flags, p.selectors.clone())),
                Err(e) => {
                    warn!(profile = %name, error = %format!("{e:#}"), "the profile's `match:` selectors are not loaded");
                    self.selector_errors.push(format!("{name}: {e:#}"));
                }
            }
        }
        let compiled = selectors::compile(
            inputs
                .iter()
                .map(|(n, id, f, s)| (n.as_str(), *id, *f, s.as_slice())),
        );
        for why in &compiled.left_out {
            warn!(selector = %why, "selector not loaded");
        }
        let m = &mut self.kernel.selectors;
        m.config.set(0, SelectorConfig::default(), 0)?;
        for (i, e) in compiled.entries.iter().enumerate() {
            m.entries.set(i as u32, *e, 0)?;
        }
        let paths = &mut self.kernel.policy;
        let mut keep_exe = HashSet::new();
        for (k, v) in &compiled.exe_rules {
            paths.insert_path_rule(*k, *v)?;
            keep_exe.insert(*k);
        }
        paths.remove_selector_rules_except(&keep_exe);
        let m = &mut self.kernel.selectors;
        let stale: Vec<ArgvKey> = m
            .argv
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !compiled.argv.contains_key(k))
            .collect();
        for k in stale {
            let _ = m.argv.remove(&k);
        }
        for (k, bits) in &compiled.argv {
            m.argv.insert(k, bits, 0)?;
        }
        // Cgroups by path: those that exist by id, and every path for the creation hook
        // (a unit stopped and started again gets a new cgroup id).
        let cgroup_root = crate::probe::cgroup2_mount();
        let mut ids = HashMap::new();
        let mut hashes = HashMap::new();
        for (path, bits) in &compiled.cgroups {
            *hashes
                .entry(agent_common::policy::fnv(path.as_bytes()))
                .or_insert(0) |= *bits;
            if let Some(root) = &cgroup_root
                && let Ok(meta) = std::fs::metadata(root.join(path.trim_start_matches('/')))
            {
                // A cgroup v2 directory's inode number is the cgroup's id.
                *ids.entry(meta.ino()).or_insert(0) |= *bits;
            }
        }
        // Containers whose labels a selector names (looked up again for the new bits).
        for (id, labels) in &self.container_labels {
            let bits = compiled.label_bits(labels);
            if bits != 0 {
                *ids.entry(*id).or_insert(0) |= bits;
            }
        }
        // A cgroup whose container's lookup is on its way stays pending: its execs are
        // held until the lookup answers (a reload, as the DNS refresher's after a
        // container started, must not let its entrypoint run unjudged).
        let pending: HashSet<u64> = m
            .cgroups
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(_, bits)| bits & CGROUP_PENDING != 0)
            .map(|(id, _)| id)
            .collect();
        let stale: Vec<u64> = m.cgroups.keys().filter_map(|k| k.ok()).collect();
        for k in stale {
            if !ids.contains_key(&k) && !pending.contains(&k) {
                let _ = m.cgroups.remove(&k);
            }
        }
        for (id, bits) in &ids {
            let keep = if pending.contains(id) {
                CGROUP_PENDING
            } else {
                0
            };
            m.cgroups.insert(id, bits | keep, 0)?;
        }
        let stale: Vec<u64> = m.cgroup_paths.keys().filter_map(|k| k.ok()).collect();
        for k in stale {
            if !hashes.contains_key(&k) {
                let _ = m.cgroup_paths.remove(&k);
            }
        }
        for (h, bits) in &hashes {
            m.cgroup_paths.insert(h, bits, 0)?;
        }
        m.config.set(0, compiled.config, 0)?;
        if compiled.config.count > 0 {
            info!(
                selectors = compiled.config.count,
                "match: selectors loaded: execs outside a session are judged against them"
            );
        }
        self.selectors = compiled;
        // A session the kernel may start at any moment needs the syscall programs its
        // profile's sessions need, attached before it does.
        self.syscall_programs(None)
    }

    /// Whether a selector's sessions need the syscall-entry program.
    pub(super) fn selectors_need_syscall_entry(&self) -> bool {
        self.selectors
            .selectors
            .iter()
            .any(|(profile, _)| self.needs_syscall_entry(None, profile, Enrolment::Selector))
    }

    /// The kernel started a session for a process a selector named: registered like an
    /// enrolment, with the selector's place as how it came to be. The record itself
    /// becomes the session's `session_start` event.
    pub(super) fn selector_enrolled(&mut self, e: &EnrolEvent) {
        if e.selector == agent_common::selector::HELD {
            self.resume_held(e.header.tgid, e.header.cgroup_id);
            return;
        }
        let h = e.header;
        self.register_selector_session(
            h.session_id,
            h.tgid,
            h.uid,
            e.selector,
            e.profile_id,
            h.cgroup_id,
        );
    }

    /// Registers the session the kernel (or, for a held process, this daemon) started
    /// for `tgid` by selector `index`.
    fn register_selector_session(
        &mut self,
        session_id: u64,
        tgid: u32,
        uid: u32,
        index: u32,
        profile_id: u32,
        cgroup_id: u64,
    ) {
        let Some((profile, selector)) = self.selectors.selectors.get(index as usize).cloned()
        else {
            warn!(selector = index, "an enrolment by an unknown selector");
            return;
        };

        // The profile the kernel wrote is the one the selector table named when it was
        // compiled: a reload may have changed the table since.
        let profile = self
            .profile_ids
            .iter()
            .find(|(_, id)| **id == profile_id)
            .map_or(profile, |(n, _)| n.clone());
        if let Some(home) = self.attribution.users.home(uid) {
            self.homes.insert(uid, home);
        }
        if self.owners.insert(uid) {
            // A new owner: expand the `~` rules of every profile for this user's home.
            let set = self.profiles.clone();
            if let Err(e) = self.install_profiles(&set) {
                warn!(error = %format!("{e:#}"), "expanding `~` rules for a new owner");
            }
        }
        let new = crate::session::NewSession {
            name: None,
            profile,
            owner_uid: uid,
            owner_user: self.attribution.users.name(uid),
            enrolment: Enrolment::Selector,
            root_pid: tgid,
        };
        self.attribution.calls.session(session_id, tgid, false);
        let registry = &mut self.attribution.registry;
        registry.create(session_id, new, &[tgid]);
        registry.set_selector(session_id, selector.describe());
        self.set_session_container(session_id, tgid, Some(cgroup_id));
        self.record_session(session_id, tgid, None);
        self.save_manifest();
    }

    /// A process the kernel held in a new cgroup until its container was looked up:
    /// enrolled where a label selector names the container (its session started here,
    /// before it runs its first instruction), then resumed either way.
    pub(super) fn resume_held(&mut self, tgid: u32, cgroup_id: u64) {
        let mut bits = self
            .kernel
            .selectors
            .cgroups
            .get(&cgroup_id, 0)
            .unwrap_or(0);
        if bits & CGROUP_PENDING != 0 {
            // Its container's lookup is on its way: resumed when it answers.
            if self.lookup_pending(cgroup_id) {
                return;
            }
            // The cgroup's record was not handled (lost, or a predecessor's): now.
            let Some(path) = crate::containers::cgroup_of(tgid) else {
                // Gone (killed while held).
                let _ = self.kernel.selectors.held.remove(&tgid);
                return;
            };
            if self.needs_lookup(cgroup_id, &path) {
                self.request_lookup(cgroup_id, path);
                return;
            }
            bits = self.classify_cgroup(cgroup_id, &path);
        }
        let labels = bits & !CGROUP_PENDING & self.selectors.config.label_selectors;
        let proc = procfs::process::Process::new(tgid as i32);
        let uid = proc.as_ref().ok().and_then(|p| p.uid().ok()).unwrap_or(0);
        if labels != 0 && self.kernel.sessions.get(&tgid, 0).is_err() {
            let index = labels.trailing_zeros();
            if let Some(entry) = self.selectors.entries.get(index as usize).copied() {
                let session = SessionEntry {
                    session_id: super::enrolment::new_session_id().unwrap_or(1),
                    profile_id: entry.profile_id,
                    flags: entry.session_flags,
                    owner_uid: uid,
                    _pad: 0,
                };
                match self.kernel.sessions.insert(tgid, session, 0) {
                    Ok(()) => {
                        self.register_selector_session(
                            session.session_id,
                            tgid,
                            uid,
                            index,
                            entry.profile_id,
                            cgroup_id,
                        );
                        let started = self
                            .attribution
                            .registry
                            .get(session.session_id)
                            .map(|s| (s.reference(), s.started));
                        if let Some((sref, at)) = started {
                            let mut ev = Event::new(crate::event::Body::SessionStart, at, sref);
                            ev.process = self.attribution.process_info(tgid);
                            self.emit(ev);
                        }
                    }
                    Err(e) => warn!(pid = tgid, error = %e, "a held process could not be enrolled"),
                }
            }
        }
        if let Err(e) = rustix::process::kill_process(
            rustix::process::Pid::from_raw(tgid as i32).unwrap_or(rustix::process::Pid::INIT),
            rustix::process::Signal::CONT,
        ) {
            warn!(pid = tgid, error = %e, "a held process could not be resumed");
        }
        let _ = self.kernel.selectors.held.remove(&tgid);
        self.counters.selector_held += 1;
    }

    /// The processes the kernel holds for a container lookup (of cgroup `cgroup`, or
    /// of any).
    pub(super) fn held_in(&self, cgroup: Option<u64>) -> Vec<u32> {
        self.kernel
            .selectors
            .held
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(_, cg)| cgroup.is_none_or(|c| c == *cg))
            .map(|(tgid, _)| tgid)
            .collect()
    }

    /// Resumes every held process without judging it (the daemon unloads: no one
    /// would answer their lookups).
    pub(super) fn release_held(&mut self) {
        for tgid in self.held_in(None) {
            if let Some(pid) = rustix::process::Pid::from_raw(tgid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::CONT);
            }
            let _ = self.kernel.selectors.held.remove(&tgid);
            warn!(
                pid = tgid,
                "a process held for its container's lookup resumed unjudged: the daemon unloads"
            );
        }
    }

    /// Held processes a predecessor left (it died before resuming them): classified and
    /// resumed.
    pub(super) fn resume_all_held(&mut self) {
        let held: Vec<(u32, u64)> = self
            .kernel
            .selectors
            .held
            .iter()
            .filter_map(|r| r.ok())
            .collect();
        for (tgid, cgroup) in held {
            self.resume_held(tgid, cgroup);
        }
    }
}

impl Core {
    /// The processes that look like agents outside every session of this daemon, now.
    pub(super) fn unmanaged_now(&mut self) -> Vec<crate::unmanaged::UnmanagedProcess> {
        let sessions = &self.kernel.sessions;
        let mut found = crate::unmanaged::scan(&self.selectors.selectors, |pid| {
            sessions.get(&pid, 0).is_ok()
        });
        for p in &mut found {
            p.user = self.attribution.users.name(p.uid);
        }
        found
    }

    /// The periodic scan: each process that looks like an agent outside every session
    /// is raised as an event once (by pid and start time), and the gauge follows how
    /// many there are now.
    pub(super) fn scan_unmanaged(&mut self) {
        let found = self.unmanaged_now();
        let now: HashSet<(u32, u64)> = found.iter().map(|p| (p.pid, p.start_ticks)).collect();
        self.unmanaged_seen.retain(|k| now.contains(k));
        self.unmanaged_count = found.len();
        for p in found {
            if !self.unmanaged_seen.insert((p.pid, p.start_ticks)) {
                continue;
            }
            warn!(pid = p.pid, agent = %p.agent, matched = %p.matched, "an agent runs outside every session");
            let mut ev = Event::new(
                crate::event::Body::UnmanagedAgent(crate::event::UnmanagedInfo {
                    agent: p.agent.clone(),
                    matched: p.matched.clone(),
                    argv: p.argv.clone(),
                }),
                SystemTime::now(),
                crate::event::SessionRef::default(),
            );
            ev.process = self
                .attribution
                .process_info(p.pid)
                .or(Some(crate::event::ProcessInfo {
                    pid: p.pid,
                    tgid: p.pid,
                    ppid: 0,
                    uid: p.uid,
                    user: p.user.clone(),
                    gid: 0,
                    comm: String::new(),
                    cgroup_id: 0,
                    exe: Some(p.exe.clone()),
                }));
            if let Some(pi) = ev.process.as_mut()
                && pi.exe.is_none()
            {
                pi.exe = Some(p.exe.clone());
            }
            self.emit(ev);
        }
    }
}
