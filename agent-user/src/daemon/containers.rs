//! Container context in the daemon: the container a cgroup belongs to (asked of
//! containerd once per cgroup, cached by cgroup id), given to sessions; and the
//! container label selectors, judged when the kernel reports a new cgroup.

use agent_common::event::CgroupEvent;

use super::*;
use crate::containers::{ContainerInfo, cgroup_of};

impl Core {
    /// The container of the cgroup `path` (id `cgroup_id`), asked once.
    fn container_of(&mut self, cgroup_id: u64, path: &str) -> Option<ContainerInfo> {
        if let Some(known) = self.containers.get(&cgroup_id) {
            return known.clone();
        }
        let found = self.containerd.container_of_cgroup(path);
        self.containers.insert(cgroup_id, found.clone());
        found
    }

    /// The container process `pid` runs in, if any.
    pub(super) fn container_of_pid(&mut self, pid: u32) -> Option<ContainerInfo> {
        let path = cgroup_of(pid)?;
        crate::containers::id_of_cgroup(&path)?;
        let root = crate::probe::cgroup2_mount()?;
        let id = std::fs::metadata(root.join(path.trim_start_matches('/')))
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))?;
        self.container_of(id, &path)
    }

    /// Gives session `sid` the container its root process runs in (by the cgroup the
    /// kernel saw it in, where known: the process may be gone already).
    pub(super) fn set_session_container(
        &mut self,
        sid: u64,
        root_pid: u32,
        cgroup_id: Option<u64>,
    ) {
        let known = cgroup_id.and_then(|id| self.containers.get(&id).cloned().flatten());
        if let Some(c) = known.or_else(|| self.container_of_pid(root_pid)) {
            self.attribution.registry.set_container(sid, c);
        }
    }

    /// The kernel reports a cgroup created while selectors name container labels: its
    /// container's labels are looked up and, where they match a selector, the cgroup
    /// gets the selector's bits, so the container's entrypoint is enrolled at its exec.
    /// A container whose processes already run (the lookup lost the race with its
    /// start) has them enrolled now, counted as late.
    pub(super) fn cgroup_created(&mut self, e: &CgroupEvent) {
        let len = (e.path_len as usize).min(e.path.len());
        let path = String::from_utf8_lossy(&e.path[..len]).into_owned();
        let bits = self.classify_cgroup(e.cgroup_id, &path);
        if bits & self.selectors.config.label_selectors != 0 {
            self.enrol_running(&path, bits & self.selectors.config.label_selectors);
        }
    }

    /// Looks up the container of a new cgroup and gives the cgroup its selector bits
    /// (those of its path, kept, and those its container's labels satisfy); the
    /// cgroup is no longer pending. Its bits.
    pub(super) fn classify_cgroup(&mut self, cgroup_id: u64, path: &str) -> u32 {
        let cgroups = &self.kernel.selectors.cgroups;
        let old = cgroups.get(&cgroup_id, 0).unwrap_or(0) & !agent_common::selector::CGROUP_PENDING;
        let mut bits = old;
        if crate::containers::id_of_cgroup(path).is_some()
            && let Some(c) = self.container_of(cgroup_id, path)
        {
            self.container_labels.insert(cgroup_id, c.labels.clone());
            let labelled = self.selectors.label_bits(&c.labels);
            if labelled != 0 {
                info!(container = %c.reference(), cgroup = %path, "a container a label selector names: its processes are enrolled at their exec");
            }
            bits |= labelled;
        }
        let cgroups = &mut self.kernel.selectors.cgroups;
        let done = if bits == 0 {
            cgroups.remove(&cgroup_id).map_err(|e| e.to_string())
        } else {
            cgroups
                .insert(cgroup_id, bits, 0)
                .map_err(|e| e.to_string())
        };
        if let Err(err) = done {
            warn!(cgroup = %path, error = %err, "a new cgroup's selector bits could not be written");
        }
        bits
    }

    /// Processes of a container cgroup that run outside every session although a
    /// selector names the container (they exec'd before the cgroup got its bits): put
    /// into a session of the first selector, as the kernel would have.
    fn enrol_running(&mut self, path: &str, bits: u32) {
        let Some(root) = crate::probe::cgroup2_mount() else {
            return;
        };
        let procs =
            std::fs::read_to_string(root.join(path.trim_start_matches('/')).join("cgroup.procs"))
                .unwrap_or_default();
        let index = bits.trailing_zeros() as usize;
        let Some((profile, _)) = self.selectors.selectors.get(index).cloned() else {
            return;
        };
        for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            // In a session already, or held by the kernel for this lookup (its record
            // follows: it is enrolled and resumed then).
            if self.kernel.sessions.get(&pid, 0).is_ok()
                || self.kernel.selectors.held.get(&pid, 0).is_ok()
            {
                continue;
            }
            // The runtime's init (`runc:[2:INIT]`, run from a sealed copy of runc), still
            // to exec the entrypoint: the kernel enrols that at its exec.
            let proc = procfs::process::Process::new(pid as i32);
            let comm = proc
                .as_ref()
                .ok()
                .and_then(|p| p.stat().ok())
                .map(|s| s.comm)
                .unwrap_or_default();
            if comm.starts_with("runc") {
                continue;
            }
            let Some(p) = self.profiles.get(&profile) else {
                return;
            };
            let flags = crate::profiles::session_flags(p).0;
            let owner_uid = proc.and_then(|p| p.uid()).unwrap_or(0);
            let new = crate::session::NewSession {
                name: None,
                profile: profile.clone(),
                owner_uid,
                owner_user: self.attribution.users.name(owner_uid),
                enrolment: Enrolment::Selector,
                root_pid: pid,
            };
            match self.enroll(new, flags, None) {
                Ok((sid, _)) => {
                    self.counters.selector_late += 1;
                    if let Some((_, s)) = self.selectors.selectors.get(index) {
                        self.attribution
                            .registry
                            .set_selector(sid, format!("{} (late)", s.describe()));
                    }
                    warn!(
                        pid,
                        "a container's process started before its selector was applied: enrolled now"
                    );
                }
                Err(err) => {
                    warn!(pid, error = %format!("{err:#}"), "enrolling a container's running process")
                }
            }
        }
    }
}
