//! Enrolment: a process (and, for attach, its descendants) put into a new session in
//! the kernel's session map, and the session's context recorded in the audit trail.

use super::*;

impl Core {
    /// Puts `root` and all its descendants into a new session. Children forked by an
    /// enrolled process are inherited in the kernel; the rescans catch those forked by
    /// a process before it was enrolled.
    pub(super) fn enroll(
        &mut self,
        new: NewSession,
        flags: u32,
        environment: Option<&crate::policy::environment::EnvChange>,
    ) -> Result<(u64, Vec<u32>)> {
        let root = new.root_pid;
        let id = new_session_id()?;
        // Before the first process is in the map: its first syscall is judged.
        self.syscall_programs(Some((&new.profile, new.enrolment)))?;
        let profile_id = *self
            .profile_ids
            .get(&new.profile)
            .ok_or_else(|| anyhow!("profile `{}` is not compiled into the kernel", new.profile))?;
        if let Some(home) = self.attribution.users.home(new.owner_uid) {
            self.homes.insert(new.owner_uid, home);
        }
        if self.owners.insert(new.owner_uid) {
            // A new owner: expand the `~` rules of every profile for this user's home.
            let set = self.profiles.clone();
            self.install_profiles(&set)?;
        }
        // The files name rules deny where the session works (its `.env`), bound before
        // the agent starts: refused, not killed, where BPF-LSM cannot match names.
        if let Ok(cwd) = procfs::process::Process::new(root as i32).and_then(|p| p.cwd())
            && let Err(e) = self
                .kernel
                .policy
                .bind_names_under(cwd, profile_id, new.owner_uid)
        {
            warn!(error = %format!("{e:#}"), "binding name rules under the session's directory failed");
        }
        let entry = SessionEntry {
            session_id: id,
            profile_id,
            flags,
            owner_uid: new.owner_uid,
            _pad: 0,
        };
        self.kernel
            .sessions
            .insert(root, entry, 0)
            .map_err(|e| anyhow!("adding pid {root} to the kernel session map: {e}"))?;
        let mut tgids = vec![root];
        if new.enrolment != Enrolment::Run {
            for _ in 0..16 {
                let added = self.enroll_descendants(&mut tgids, entry);
                if added == 0 {
                    break;
                }
            }
            // A descendant read from /proc may have exited before its entry was in the
            // map: the kernel saw its exit with no entry to remove, and the entry would
            // keep the session open for ever. Checked after the insert: one alive now has
            // its exit seen by the kernel.
            let stale: Vec<u32> = tgids
                .iter()
                .copied()
                .filter(|t| *t != root && !super::adopt::running(*t))
                .collect();
            for t in &stale {
                let _ = self.kernel.sessions.remove(t);
            }
            tgids.retain(|t| !stale.contains(t));
        }
        // A `run` session whose profile wires the agent's hooks infers no calls.
        let hooked = self.hooks_wired(&new.profile, new.enrolment);
        self.attribution.calls.session(id, root, hooked);
        self.attribution.registry.create(id, new, &tgids);
        self.set_session_container(id, root, None);
        let Some(s) = self.attribution.registry.get(id) else {
            bail!("session {id:016x} vanished");
        };
        let (sref, started) = (s.reference(), s.started);
        for t in &tgids {
            if let Ok(exe) = procfs::process::Process::new(*t as i32).and_then(|p| p.exe()) {
                self.attribution
                    .registry
                    .remember_exe(*t, exe.display().to_string());
            }
        }
        self.record_session(id, root, environment);
        let mut ev = Event::new(Body::SessionStart, started, sref);
        ev.process = self.attribution.process_info(root);
        self.emit(ev);
        Ok((id, tgids))
    }

    /// Expands the `~` deny rules for the host's local accounts before any session: the
    /// refusal layer can only ask about reads of a descriptor whose file was marked when
    /// it was opened (the kernel fixes that at open since 6.17), so the marks must be in
    /// place before an agent's launcher opens anything, not only from its enrolment on.
    pub(super) fn bind_for_local_accounts(&mut self) {
        for (uid, home) in crate::users::local_accounts(MAX_PREBOUND_ACCOUNTS) {
            self.owners.insert(uid);
            self.homes.insert(uid, home);
        }
    }

    fn enroll_descendants(&mut self, tgids: &mut Vec<u32>, entry: SessionEntry) -> usize {
        let Ok(all) = procfs::process::all_processes() else {
            return 0;
        };
        let parents: Vec<(u32, u32)> = all
            .filter_map(|p| p.ok()?.stat().ok())
            .map(|s| (s.pid as u32, s.ppid as u32))
            .collect();
        let mut added = 0;
        loop {
            let mut progress = false;
            for (pid, ppid) in &parents {
                if tgids.contains(ppid) && !tgids.contains(pid) {
                    if self.kernel.sessions.insert(*pid, entry, 0).is_ok() {
                        tgids.push(*pid);
                        added += 1;
                        progress = true;
                    } else {
                        warn!(pid, "could not add descendant to the session map");
                    }
                }
            }
            if !progress {
                return added;
            }
        }
    }

    /// The session's execution context, recorded once in the audit trail: the profile
    /// as it was (name, source, content hash), its owners, the principal, the host.
    pub(super) fn record_session(
        &mut self,
        id: u64,
        root: u32,
        environment: Option<&crate::policy::environment::EnvChange>,
    ) {
        let Some(s) = self.attribution.registry.get(id) else {
            return;
        };
        let p = self.profiles.get(&s.profile);
        let time_ns = s
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let rec = SessionRecord {
            session_id: format_id(id),
            name: s.name.clone(),
            agent: s.profile.clone(),
            profile_source: p.map(|p| p.source.clone()).unwrap_or_default(),
            profile_sha256: p.map(|p| p.sha256.clone()).unwrap_or_default(),
            mode: p
                .map(|p| p.file.mode.as_str().to_owned())
                .unwrap_or_default(),
            business_owner: p
                .map(|p| p.file.owners.business.clone())
                .unwrap_or_default(),
            technical_owner: p
                .map(|p| p.file.owners.technical.clone())
                .unwrap_or_default(),
            principal_uid: s.owner_uid,
            principal_user: s.owner_user.clone(),
            enrolment: s.enrolment.as_str().to_owned(),
            host: self.host.clone(),
            root_pid: root,
            time_ns,
            time: event::rfc3339(s.started),
            environment: environment.and_then(|e| serde_json::to_string(e).ok()),
            selector: s.selector.clone(),
            container: s
                .container
                .as_ref()
                .and_then(|c| serde_json::to_string(c).ok()),
        };
        self.sinks.session(rec);
    }
}

/// Local accounts whose rules are bound from the start; more are bound at their first
/// session.
const MAX_PREBOUND_ACCOUNTS: usize = 16;

pub(super) fn new_session_id() -> Result<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| anyhow!("random session id: {e}"))?;
    // Never 0: the kernel side treats 0 as "no session".
    Ok(u64::from_ne_bytes(b).max(1))
}
