//! The daemon's view of sessions: identity, live processes, lifetime.
//!
//! The kernel's `SESSIONS` map is the source of truth for membership; the registry
//! follows it through fork/exit events and is reconciled against the map periodically,
//! so a lost event cannot keep a session open forever or end it early.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

use crate::event::{SessionRef, rfc3339};

/// How a session came to be.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Enrolment {
    /// `agentwarden run`: the launcher enrolled itself, then exec'd the agent.
    Run,
    /// `agentwarden attach`: a running process tree was enrolled.
    Attach,
    /// The kernel enrolled a process a profile's `match:` selector names, at its exec.
    Selector,
}

impl Enrolment {
    /// The name used in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Enrolment::Run => "run",
            Enrolment::Attach => "attach",
            Enrolment::Selector => "selector",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Session {
    pub id: u64,
    pub name: String,
    pub profile: String,
    pub owner_uid: u32,
    pub owner_user: Option<String>,
    pub enrolment: Enrolment,
    pub root_pid: u32,
    pub started: SystemTime,
    pub ended: Option<SystemTime>,
    pub live: BTreeSet<u32>,
    pub events: u64,
    /// The selector that enrolled it (`file:line (match[i])`).
    pub selector: Option<String>,
    /// The container its first process ran in.
    pub container: Option<crate::containers::ContainerInfo>,
    /// `id` as every event's session reference writes it, made once.
    id_text: String,
}

/// What `agentwarden sessions` shows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionView {
    pub id: String,
    pub name: String,
    pub profile: String,
    pub owner_uid: u32,
    pub owner_user: Option<String>,
    pub enrolment: Enrolment,
    pub root_pid: u32,
    /// `active` or `ended`.
    pub state: String,
    pub started: String,
    pub ended: Option<String>,
    pub processes: usize,
    pub events: u64,
    /// The `match:` selector that enrolled it: `file:line (match[i])`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Its container (`namespace/pod/container`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

pub fn format_id(id: u64) -> String {
    format!("{id:016x}")
}

pub fn parse_id(s: &str) -> Option<u64> {
    u64::from_str_radix(s, 16).ok()
}

impl Session {
    pub fn reference(&self) -> SessionRef {
        SessionRef {
            id: self.id_text.clone(),
            name: self.name.clone(),
            profile: self.profile.clone(),
            container: self.container.as_ref().map(|c| c.reference()),
        }
    }

    pub fn view(&self) -> SessionView {
        SessionView {
            id: format_id(self.id),
            name: self.name.clone(),
            profile: self.profile.clone(),
            owner_uid: self.owner_uid,
            owner_user: self.owner_user.clone(),
            enrolment: self.enrolment,
            root_pid: self.root_pid,
            state: if self.ended.is_some() {
                "ended"
            } else {
                "active"
            }
            .to_owned(),
            started: rfc3339(self.started),
            ended: self.ended.map(rfc3339),
            processes: self.live.len(),
            events: self.events,
            selector: self.selector.clone(),
            container: self.container.as_ref().map(|c| c.reference()),
        }
    }
}

/// A new session's identity.
pub struct NewSession {
    pub name: Option<String>,
    pub profile: String,
    pub owner_uid: u32,
    pub owner_user: Option<String>,
    pub enrolment: Enrolment,
    pub root_pid: u32,
}

#[derive(Default)]
pub struct Registry {
    sessions: BTreeMap<u64, Session>,
    /// Executable per live tgid, for enrichment.
    exe: HashMap<u32, String>,
    /// Working directory per live tgid at its last exec (inherited at fork): makes a
    /// relative path absolute when the process is gone before its event is handled.
    cwd: HashMap<u32, String>,
}

impl Registry {
    /// Registers a session whose processes `tgids` are (about to be) in the kernel map.
    pub fn create(&mut self, id: u64, new: NewSession, tgids: &[u32]) -> &Session {
        let name = new
            .name
            .unwrap_or_else(|| format!("{}-{}", new.profile, &format_id(id)[8..]));
        let s = Session {
            id,
            name,
            profile: new.profile,
            owner_uid: new.owner_uid,
            owner_user: new.owner_user,
            enrolment: new.enrolment,
            root_pid: new.root_pid,
            started: SystemTime::now(),
            ended: None,
            live: tgids.iter().copied().collect(),
            events: 0,
            selector: None,
            container: None,
            id_text: format_id(id),
        };
        self.sessions.entry(id).or_insert(s)
    }

    /// Registers a session a previous daemon enrolled, with its processes still alive
    /// and its original start.
    pub fn adopt(&mut self, id: u64, new: NewSession, tgids: &[u32], started: SystemTime) {
        let s = self.create(id, new, tgids);
        let id = s.id;
        if let Some(s) = self.sessions.get_mut(&id) {
            s.started = started;
        }
    }

    /// Records the container session `id` runs in.
    pub fn set_container(&mut self, id: u64, container: crate::containers::ContainerInfo) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.container = Some(container);
        }
    }

    /// Records the selector that enrolled session `id`.
    pub fn set_selector(&mut self, id: u64, selector: String) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.selector = Some(selector);
        }
    }

    pub fn get(&self, id: u64) -> Option<&Session> {
        self.sessions.get(&id)
    }

    pub fn by_name(&self, name: &str) -> Option<&Session> {
        self.sessions.values().find(|s| s.name == name)
    }

    pub fn all(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    pub fn count_event(&mut self, id: u64) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.events += 1;
        }
    }

    pub fn on_fork(&mut self, id: u64, parent: u32, child: u32) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.live.insert(child);
        }
        if let Some(exe) = self.exe.get(&parent).cloned() {
            self.exe.insert(child, exe);
        }
        if let Some(cwd) = self.cwd.get(&parent).cloned() {
            self.cwd.insert(child, cwd);
        }
    }

    pub fn on_exec(&mut self, tgid: u32, exe: &str, cwd: &str) {
        self.exe.insert(tgid, exe.to_owned());
        self.cwd.insert(tgid, cwd.to_owned());
    }

    /// The working directory `tgid` had at its last exec.
    pub fn cwd_of(&self, tgid: u32) -> Option<&str> {
        self.cwd.get(&tgid).map(String::as_str)
    }

    pub fn exe_of(&self, tgid: u32) -> Option<&str> {
        self.exe.get(&tgid).map(String::as_str)
    }

    pub fn remember_exe(&mut self, tgid: u32, exe: String) {
        self.exe.insert(tgid, exe);
    }

    /// Records an exit; returns true when it ended the session.
    pub fn on_exit(&mut self, id: u64, tgid: u32, now: SystemTime) -> bool {
        self.exe.remove(&tgid);
        self.cwd.remove(&tgid);
        let Some(s) = self.sessions.get_mut(&id) else {
            return false;
        };
        s.live.remove(&tgid);
        if s.live.is_empty() && s.ended.is_none() {
            s.ended = Some(now);
            return true;
        }
        false
    }

    /// Aligns live sets with the kernel map (`tgid → session`); returns sessions that
    /// have no process left and were ended by this call.
    pub fn reconcile(&mut self, kernel: &HashMap<u32, u64>, now: SystemTime) -> Vec<u64> {
        let mut by_session: HashMap<u64, BTreeSet<u32>> = HashMap::new();
        for (tgid, id) in kernel {
            by_session.entry(*id).or_default().insert(*tgid);
        }
        let mut ended = Vec::new();
        for s in self.sessions.values_mut().filter(|s| s.ended.is_none()) {
            s.live = by_session.remove(&s.id).unwrap_or_default();
            if s.live.is_empty() {
                s.ended = Some(now);
                ended.push(s.id);
            }
        }
        self.exe.retain(|tgid, _| kernel.contains_key(tgid));
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(name: &str) -> NewSession {
        NewSession {
            name: Some(name.to_owned()),
            profile: "demo".to_owned(),
            owner_uid: 0,
            owner_user: Some("root".to_owned()),
            enrolment: Enrolment::Run,
            root_pid: 100,
        }
    }

    #[test]
    fn session_ends_with_its_last_process() {
        let mut r = Registry::default();
        r.create(1, new("a"), &[100]);
        r.on_fork(1, 100, 101);
        r.on_fork(1, 101, 102);
        let now = SystemTime::now();
        assert!(!r.on_exit(1, 100, now));
        assert!(!r.on_exit(1, 101, now));
        assert_eq!(r.get(1).map(|s| s.view().state), Some("active".to_owned()));
        assert!(r.on_exit(1, 102, now));
        let v = r.get(1).expect("session").view();
        assert_eq!((v.state.as_str(), v.processes), ("ended", 0));
        // A late duplicate exit does not end it twice.
        assert!(!r.on_exit(1, 102, now));
    }

    #[test]
    fn reconcile_follows_the_kernel_map() {
        let mut r = Registry::default();
        r.create(1, new("a"), &[100]);
        r.create(2, new("b"), &[200]);
        // The fork of 201 was lost; the kernel map still knows it, and 100 is gone.
        let kernel = HashMap::from([(200, 2), (201, 2)]);
        let ended = r.reconcile(&kernel, SystemTime::now());
        assert_eq!(ended, vec![1]);
        assert_eq!(r.get(2).expect("b").live, BTreeSet::from([200, 201]));
        assert!(r.reconcile(&kernel, SystemTime::now()).is_empty());
    }

    #[test]
    fn exe_and_cwd_are_inherited_at_fork_and_replaced_at_exec() {
        let mut r = Registry::default();
        r.create(1, new("a"), &[100]);
        r.on_exec(100, "/usr/bin/bash", "/home/a");
        r.on_fork(1, 100, 101);
        assert_eq!(r.exe_of(101), Some("/usr/bin/bash"));
        assert_eq!(r.cwd_of(101), Some("/home/a"));
        r.on_exec(101, "/usr/bin/cat", "/tmp");
        assert_eq!(r.exe_of(101), Some("/usr/bin/cat"));
        assert_eq!(r.cwd_of(101), Some("/tmp"));
        r.on_exit(1, 101, SystemTime::now());
        assert_eq!(r.cwd_of(101), None);
        assert_eq!(r.by_name("a").map(|s| s.id), Some(1));
        assert_eq!(parse_id(&format_id(0xdead_beef)), Some(0xdead_beef));
    }
}
