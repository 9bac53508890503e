//! A daemon's succession. The kernel side is pinned (see [`crate::pins`]); what only
//! userspace knows — which profile id is which profile, who each session is, which
//! losses were reported — is kept beside the audit store in `kernel-state.json`,
//! rewritten whenever it changes. A starting daemon that finds pinned state adopts it:
//! the same profile ids (the sessions' entries in the kernel name them), the sessions
//! still alive (reconciled with `/proc`), the loss counters already reported; its
//! records continue the audit chain of the same store.

use std::{
    collections::{BTreeMap, HashMap},
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use super::*;

/// The file in the state directory.
pub const MANIFEST: &str = "kernel-state.json";

/// What the next daemon needs to adopt the pinned kernel side.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct Manifest {
    /// The generation of the programs that wrote it.
    pub generation: u64,
    pub profile_ids: BTreeMap<String, u32>,
    /// Session owners whose `~` rules are compiled in.
    pub owners: Vec<u32>,
    pub sessions: Vec<AdoptedSession>,
    /// Kernel loss counters already raised as events.
    pub reported_losses: BTreeMap<String, u64>,
    /// Sessions whose `run` client restricted itself with Landlock.
    pub landlocked: Vec<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct AdoptedSession {
    pub id: u64,
    pub name: String,
    pub profile: String,
    pub owner_uid: u32,
    pub owner_user: Option<String>,
    pub enrolment: Enrolment,
    pub root_pid: u32,
    /// Nanoseconds since the epoch.
    pub started_ns: u64,
}

impl AdoptedSession {
    /// The session as the registry takes it, and when it started.
    fn into_new(self) -> (NewSession, SystemTime) {
        let started = SystemTime::UNIX_EPOCH + Duration::from_nanos(self.started_ns);
        let new = NewSession {
            name: Some(self.name),
            profile: self.profile,
            owner_uid: self.owner_uid,
            owner_user: self.owner_user,
            enrolment: self.enrolment,
            root_pid: self.root_pid,
        };
        (new, started)
    }
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Option<Self>> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("reading {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow!(e).context(format!("reading {}", path.display()))),
        }
    }

    /// Replaces the file in one rename: a daemon killed while writing leaves the last
    /// whole version.
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec(self)?)?;
        f.sync_data()?;
        fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
        Ok(())
    }
}

/// The sessions to adopt: the kernel map's entries grouped by session, without the
/// processes that no longer exist (their exit was not seen, or was lost).
pub(super) fn live_sessions(
    kernel: &HashMap<u32, SessionEntry>,
    exists: &dyn Fn(u32) -> bool,
) -> (BTreeMap<u64, Vec<u32>>, Vec<u32>) {
    let mut sessions: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    let mut gone = Vec::new();
    for (tgid, e) in kernel {
        if exists(*tgid) {
            sessions.entry(e.session_id).or_default().push(*tgid);
        } else {
            gone.push(*tgid);
        }
    }
    for tgids in sessions.values_mut() {
        tgids.sort_unstable();
    }
    gone.sort_unstable();
    (sessions, gone)
}

/// Whether process `tgid` exists and has not exited (a zombie's exit was seen by the
/// kernel already: its session entry, if any, is stale).
pub(super) fn running(tgid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{tgid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| !matches!(state, 'Z' | 'X' | 'x'))
    })
}

/// What an adoption found, for the log and the status.
#[derive(Clone, Debug, Default)]
pub(super) struct Adoption {
    pub previous_generation: u64,
    pub sessions: usize,
    pub processes: usize,
    pub gone: usize,
    /// Sessions whose last process exited while no daemon ran.
    pub ended_in_gap: usize,
}

impl Core {
    pub(super) fn manifest_path(&self) -> PathBuf {
        self.state_dir.join(MANIFEST)
    }

    /// The manifest of the state now.
    fn manifest(&self) -> Manifest {
        Manifest {
            generation: self.generation,
            profile_ids: self
                .profile_ids
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            owners: self.owners.iter().copied().collect(),
            sessions: self
                .attribution
                .registry
                .all()
                .filter(|s| s.ended.is_none())
                .map(|s| AdoptedSession {
                    id: s.id,
                    name: s.name.clone(),
                    profile: s.profile.clone(),
                    owner_uid: s.owner_uid,
                    owner_user: s.owner_user.clone(),
                    enrolment: s.enrolment,
                    root_pid: s.root_pid,
                    started_ns: s
                        .started
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64),
                })
                .collect(),
            reported_losses: self
                .reported_losses
                .iter()
                .filter(|(k, _)| Stat::ALL.iter().any(|s| s.name() == k.as_str()))
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            landlocked: self.landlocked.iter().copied().collect(),
        }
    }

    /// Writes the manifest when it changed; a failure is logged (the kernel side keeps
    /// working; only a successor's adoption would miss the latest change).
    pub(super) fn save_manifest(&mut self) {
        let m = self.manifest();
        if self.saved_manifest.as_ref() == Some(&m) {
            return;
        }
        match m.write(&self.manifest_path()) {
            Ok(()) => self.saved_manifest = Some(m),
            Err(e) => warn!(error = %format!("{e:#}"), "could not save the state for a successor"),
        }
    }

    /// Pins again what was removed behind the daemon's back (it holds every object, so
    /// nothing detached meanwhile; a successor would not have found it).
    pub(super) fn keep_pins(&mut self) {
        let (restored, failed) = self.keeper.restore();
        for p in &restored {
            warn!(pin = %p.display(), "a pin of the kernel side was removed: pinned again");
        }
        for f in &failed {
            warn!(error = %f, "a pin of the kernel side was removed and could not be pinned again");
        }
        self.counters.pins_restored += restored.len() as u64;
        // An enrolment that failed after attaching them leaves no session to end.
        if let Err(e) = self.syscall_programs(None) {
            warn!(error = %format!("{e:#}"), "the syscall programs");
        }
    }

    /// Whether a session of `profile` enrolled `how` needs the syscall-entry program:
    /// an attached one (no seccomp filter), or a `run` one whose profile's syscall rules
    /// the filter does not carry (monitor mode, `alert`). Every session needs the exit
    /// program, which records the filter's refusals.
    /// A `run` session adopted from a predecessor needs it too: its filter protects the
    /// predecessor's pids, and this daemon's are judged at the calls' entry.
    pub(super) fn needs_syscall_entry(
        &self,
        session: Option<u64>,
        profile: &str,
        how: Enrolment,
    ) -> bool {
        how != Enrolment::Run
            || session.is_some_and(|s| self.inherited_filters.contains(&s))
            || self.profiles.get(profile).is_some_and(|p| {
                !p.syscall_deny.is_empty()
                    && !policy::syscalls::enforcement(p.file.mode, &p.file.syscalls).seccomp
            })
    }

    /// Attaches the on-demand programs that the live sessions (and `enrolling`, a session
    /// about to be) need and detaches the others (their pins go, and the daemon's hold:
    /// they detach). A session is never enrolled without them: attaching fails its
    /// enrolment.
    pub(super) fn syscall_programs(&mut self, enrolling: Option<(&str, Enrolment)>) -> Result<()> {
        let mut exit = enrolling.is_some();
        let mut entry = enrolling.is_some_and(|(p, how)| self.needs_syscall_entry(None, p, how))
            || self.selectors_need_syscall_entry();
        for s in self
            .attribution
            .registry
            .all()
            .filter(|s| s.ended.is_none())
        {
            exit = true;
            entry = entry || self.needs_syscall_entry(Some(s.id), &s.profile, s.enrolment);
        }
        self.on_demand_program("sys_exit", exit)?;
        self.on_demand_program("sys_enter", entry)
    }

    fn on_demand_program(&mut self, name: &'static str, wanted: bool) -> Result<()> {
        if wanted == self.on_demand.contains_key(name) {
            return Ok(());
        }
        if wanted {
            let dir = self.pins.links(self.generation);
            if let Some(pin) = crate::loader::attach_on_demand(&mut self.ebpf, name, &dir)? {
                self.keeper.hold_path(&pin)?;
                info!(program = name, "attached while sessions need it");
                self.on_demand.insert(name, pin);
            }
        } else if let Some(pin) = self.on_demand.remove(name) {
            self.keeper.release(&pin);
            let _ = fs::remove_file(&pin);
            info!(program = name, "detached: no session needs it");
        }
        Ok(())
    }

    /// Takes over what the previous daemon left: profile ids, owners, the sessions the
    /// kernel still tracks, the losses already reported. Before profiles are compiled.
    pub(super) fn adopt(&mut self, manifest: Option<Manifest>, previous: u64) -> Adoption {
        let m = manifest.unwrap_or_default();
        if m.generation != previous && m.generation != 0 {
            warn!(
                manifest = m.generation,
                kernel = previous,
                "the saved state is from another generation than the pinned one; adopting it anyway"
            );
        }
        self.profile_ids = m.profile_ids.into_iter().collect();
        for uid in m.owners {
            if let Some(home) = self.attribution.users.home(uid) {
                self.homes.insert(uid, home);
            }
            self.owners.insert(uid);
        }
        self.reported_losses = m.reported_losses.into_iter().collect();
        let kernel: HashMap<u32, SessionEntry> =
            self.kernel.sessions.iter().filter_map(|r| r.ok()).collect();
        let (live, gone) = live_sessions(&kernel, &|tgid| {
            Path::new(&format!("/proc/{tgid}")).exists()
        });
        for tgid in &gone {
            let _ = self.kernel.sessions.remove(tgid);
        }
        let saved: HashMap<u64, AdoptedSession> =
            m.sessions.into_iter().map(|s| (s.id, s)).collect();
        let names: HashMap<u32, String> = self
            .profile_ids
            .iter()
            .map(|(name, id)| (*id, name.clone()))
            .collect();
        let mut adoption = Adoption {
            previous_generation: previous,
            gone: gone.len(),
            ..Adoption::default()
        };
        for (sid, tgids) in &live {
            // A session enrolled after the last save is still adopted, by what the
            // kernel knows of it.
            let s = saved.get(sid).cloned().unwrap_or_else(|| {
                let e = kernel.get(&tgids[0]).copied().unwrap_or_default();
                AdoptedSession {
                    id: *sid,
                    name: format!("adopted-{}", &format_id(*sid)[8..]),
                    profile: names.get(&e.profile_id).cloned().unwrap_or_default(),
                    owner_uid: e.owner_uid,
                    owner_user: None,
                    enrolment: Enrolment::Attach,
                    root_pid: tgids[0],
                    started_ns: 0,
                }
            });
            let (new, started) = s.into_new();
            if new.enrolment == Enrolment::Run {
                self.inherited_filters.insert(*sid);
            }
            let hooked = self.hooks_wired(&new.profile, new.enrolment);
            self.attribution.calls.session(*sid, new.root_pid, hooked);
            self.attribution.registry.adopt(*sid, new, tgids, started);
            for t in tgids {
                if let Ok(exe) = procfs::process::Process::new(*t as i32).and_then(|p| p.exe()) {
                    self.attribution
                        .registry
                        .remember_exe(*t, exe.display().to_string());
                }
            }
            if m.landlocked.contains(sid) {
                self.landlocked.insert(*sid);
            }
            adoption.sessions += 1;
            adoption.processes += tgids.len();
        }
        // Sessions that were live at the last save and have no process left ended in the
        // gap: adopted with none, so the first reconciliation (after the ring's records
        // of their last moments are read) ends them with a `session_end` of their own.
        for (sid, s) in saved.into_iter().filter(|(sid, _)| !live.contains_key(sid)) {
            let (new, started) = s.into_new();
            self.attribution.calls.session(sid, new.root_pid, false);
            self.attribution.registry.adopt(sid, new, &[], started);
            adoption.ended_in_gap += 1;
        }
        adoption
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(session_id: u64) -> SessionEntry {
        SessionEntry {
            session_id,
            ..SessionEntry::default()
        }
    }

    /// A zombie's exit was seen already, a reaped process is gone: neither is running.
    #[test]
    fn zombies_and_reaped_processes_are_not_running() {
        assert!(running(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = std::time::Instant::now();
        while running(pid) {
            assert!(start.elapsed() < Duration::from_secs(10), "never exited");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Not reaped yet: a zombie.
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        child.wait().unwrap();
        assert!(!running(pid));
    }

    #[test]
    fn processes_that_are_gone_are_not_adopted() {
        let kernel = HashMap::from([
            (10, entry(1)),
            (11, entry(1)),
            (20, entry(2)),
            (30, entry(3)),
        ]);
        let (live, gone) = live_sessions(&kernel, &|tgid| tgid != 11 && tgid != 30);
        assert_eq!(live, BTreeMap::from([(1, vec![10]), (2, vec![20])]));
        assert_eq!(gone, vec![11, 30]);
    }

    #[test]
    fn the_manifest_survives_a_round_trip_and_a_torn_write_leaves_the_last_one() {
        let dir = std::env::temp_dir().join(format!("aw-manifest-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(MANIFEST);
        let m = Manifest {
            generation: 7,
            profile_ids: BTreeMap::from([("demo".to_owned(), 0)]),
            owners: vec![1000],
            sessions: vec![AdoptedSession {
                id: 0xabc,
                name: "s".to_owned(),
                profile: "demo".to_owned(),
                owner_uid: 1000,
                owner_user: Some("u".to_owned()),
                enrolment: Enrolment::Run,
                root_pid: 42,
                started_ns: 1,
            }],
            reported_losses: BTreeMap::from([("ringbuf_drops".to_owned(), 3)]),
            landlocked: vec![0xabc],
        };
        m.write(&path).unwrap();
        // A temporary file left by a writer that died is not what is read.
        fs::write(path.with_extension("json.tmp"), b"{ torn").unwrap();
        assert_eq!(Manifest::read(&path).unwrap(), Some(m));
        assert_eq!(Manifest::read(&dir.join("none.json")).unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
