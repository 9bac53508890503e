//! Container context in the daemon: the container a cgroup belongs to (asked of
//! containerd, cached by cgroup id once it answers), given to sessions; and the
//! container label selectors, judged when the kernel reports a new cgroup.
//!
//! A new cgroup is pending in the kernel while label selectors exist: a process that
//! execs in it is stopped there (held) until its container's labels are known. The
//! lookup runs off the core (`ctr` takes milliseconds on a quiet host and seconds on a
//! loaded one) and is asked again while containerd fails or does not answer, for at
//! most the daemon's lookup budget; only then do the held processes run with the
//! labels unjudged, counted and logged. A failed lookup is never taken for "no
//! container": that would let a labelled agent's container run unenrolled.

use std::time::Instant;

use agent_common::event::CgroupEvent;
use tracing::error;

use super::*;
use crate::containers::{ContainerInfo, Containerd, cgroup_of};

/// A cgroup whose container is to be looked up.
#[derive(Debug)]
pub(super) struct LookupRequest {
    cgroup_id: u64,
    path: String,
}

/// The lookups on their way, and the queue to the task that runs them.
pub(super) struct Lookups {
    tx: tokio::sync::mpsc::UnboundedSender<LookupRequest>,
    /// Taken by the task when the daemon starts serving.
    rx: Option<tokio::sync::mpsc::UnboundedReceiver<LookupRequest>>,
    in_flight: HashSet<u64>,
    /// How long a lookup is asked again before it is given up.
    pub(super) budget: Duration,
}

impl Lookups {
    pub(super) fn new(budget: Duration) -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            tx,
            rx: Some(rx),
            in_flight: HashSet::new(),
            budget,
        }
    }

    pub(super) fn take_queue(
        &mut self,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<LookupRequest>> {
        self.rx.take()
    }
}

/// The first pause between two tries of a lookup containerd did not answer; it doubles
/// up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Runs each requested lookup as its own task (a slow answer for one container holds
/// no other), asking again while containerd fails, until `budget` has passed.
pub(super) async fn look_up(
    shared: Arc<Shared>,
    queue: Option<(
        Containerd,
        tokio::sync::mpsc::UnboundedReceiver<LookupRequest>,
    )>,
    budget: Duration,
) {
    let Some((containerd, mut rx)) = queue else {
        return;
    };
    while let Some(req) = rx.recv().await {
        let shared = shared.clone();
        let containerd = containerd.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut pause = RETRY_FIRST;
            loop {
                let (c, path) = (containerd.clone(), req.path.clone());
                let answer = tokio::task::spawn_blocking(move || c.container_of_cgroup(&path))
                    .await
                    .unwrap_or_else(|e| Err(format!("the lookup's thread: {e}")));
                // Whether the lookup has ended (the guard must not live across a wait).
                let ended = {
                    let mut core = shared.core();
                    match answer {
                        Ok(found) => {
                            core.container_answered(req.cgroup_id, &req.path, Ok(found));
                            true
                        }
                        Err(why) => {
                            core.counters.container_lookup_failures += 1;
                            let last = start.elapsed() + pause >= budget;
                            if last {
                                core.container_answered(req.cgroup_id, &req.path, Err(why));
                            } else {
                                warn!(cgroup = %req.path, error = %why, retry_in = ?pause, "containerd did not answer a container's lookup: asking again (its new processes stay held)");
                            }
                            last
                        }
                    }
                };
                if ended {
                    break;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
            }
            shared.core().flush_sinks();
        });
    }
}

impl Core {
    /// The container of the cgroup `path` (id `cgroup_id`): asked once it answers, and
    /// asked again after a failure.
    fn container_of(&mut self, cgroup_id: u64, path: &str) -> Option<ContainerInfo> {
        if let Some(known) = self.containers.get(&cgroup_id) {
            return known.clone();
        }
        match self.containerd.container_of_cgroup(path) {
            Ok(found) => {
                self.containers.insert(cgroup_id, found.clone());
                found
            }
            Err(why) => {
                self.counters.container_lookup_failures += 1;
                warn!(cgroup = %path, error = %why, "containerd did not answer a container's lookup");
                None
            }
        }
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

    /// The kernel reports a cgroup created while selectors name container labels. A
    /// cgroup that may be a container's is looked up (it stays pending until then);
    /// any other gets its bits now.
    pub(super) fn cgroup_created(&mut self, e: &CgroupEvent) {
        let len = (e.path_len as usize).min(e.path.len());
        let path = String::from_utf8_lossy(&e.path[..len]).into_owned();
        if self.needs_lookup(e.cgroup_id, &path) {
            self.request_lookup(e.cgroup_id, path);
        } else {
            self.cgroup_classified(e.cgroup_id, &path);
        }
    }

    /// Whether the cgroup may be a container's not yet looked up.
    pub(super) fn needs_lookup(&self, cgroup_id: u64, path: &str) -> bool {
        self.containerd.present()
            && crate::containers::id_of_cgroup(path).is_some()
            && !self.containers.contains_key(&cgroup_id)
    }

    /// Asks for the container of a pending cgroup, once while a lookup is on its way.
    pub(super) fn request_lookup(&mut self, cgroup_id: u64, path: String) {
        if self.lookups.in_flight.insert(cgroup_id) {
            // The receiver lives as long as the daemon serves; a send after it stopped
            // leaves the cgroup pending, as a daemon that exits does.
            let _ = self.lookups.tx.send(LookupRequest { cgroup_id, path });
        }
    }

    /// Whether a lookup of the cgroup's container is on its way (its processes wait).
    pub(super) fn lookup_pending(&self, cgroup_id: u64) -> bool {
        self.lookups.in_flight.contains(&cgroup_id)
    }

    /// A lookup's end: containerd's answer is kept, or the lookup was given up (the
    /// cgroup is judged by its path alone). Either way the cgroup gets its bits, a
    /// container a label selector names has its running processes enrolled, and the
    /// processes held for this lookup are enrolled or not and resumed.
    pub(super) fn container_answered(
        &mut self,
        cgroup_id: u64,
        path: &str,
        answer: Result<Option<ContainerInfo>, String>,
    ) {
        self.lookups.in_flight.remove(&cgroup_id);
        match answer {
            Ok(found) => {
                if found.is_none() {
                    tracing::debug!(cgroup = %path, "not a container containerd has");
                }
                self.containers.insert(cgroup_id, found);
            }
            Err(why) => {
                self.counters.container_lookups_abandoned += 1;
                error!(cgroup = %path, error = %why, budget = ?self.lookups.budget, "a container's lookup was given up: its processes run with its labels unjudged (no label selector enrols them)");
            }
        }
        self.cgroup_classified(cgroup_id, path);
        for tgid in self.held_in(Some(cgroup_id)) {
            self.resume_held(tgid, cgroup_id);
        }
    }

    /// Gives a cgroup its bits from what is known of it and, where a label selector
    /// names its container, enrols the processes already running in it.
    fn cgroup_classified(&mut self, cgroup_id: u64, path: &str) {
        let bits = self.classify_cgroup(cgroup_id, path);
        if bits & self.selectors.config.label_selectors != 0 {
            self.enrol_running(path, bits & self.selectors.config.label_selectors);
        }
    }

    /// Gives a cgroup its selector bits (those of its path, kept, and those its
    /// container's labels satisfy, where its container is known); the cgroup is no
    /// longer pending. Its bits.
    pub(super) fn classify_cgroup(&mut self, cgroup_id: u64, path: &str) -> u32 {
        let cgroups = &self.kernel.selectors.cgroups;
        let old = cgroups.get(&cgroup_id, 0).unwrap_or(0) & !agent_common::selector::CGROUP_PENDING;
        let mut bits = old;
        if let Some(c) = self.containers.get(&cgroup_id).cloned().flatten() {
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
