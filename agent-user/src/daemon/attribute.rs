//! Attribution: who did it. A decoded kernel record becomes an event tied to its
//! session, process, user and executable; the process table follows forks, execs and
//! exits, and tells when a session's last process is gone. No kernel handle here:
//! unit-tested on records built in memory.

use std::time::SystemTime;

use super::toolcalls::ToolCalls;
use crate::{
    event::{Clock, Event, ProcessInfo, Raw, SessionRef},
    policy::compile::RuleTable,
    session::{Registry, format_id},
    users::Users,
};

/// The sessions, their processes and the host's users, as the daemon knows them.
pub struct Attribution {
    pub registry: Registry,
    pub users: Users,
    pub clock: Clock,
    /// The tool call each process acts under.
    pub calls: ToolCalls,
    /// The path each process opened each file by, for the repeats the kernel counts.
    opened: OpenedPaths,
}

/// The path each process last opened each inode by, with the kernel allowing it: the
/// kernel counts repeats of such an open by inode, without the path, and the daemon
/// names them by this. Bounded per process (a process opening more files than that
/// forgets the oldest half), forgotten at exit.
#[derive(Default)]
struct OpenedPaths {
    by_process: foldhash::HashMap<u32, foldhash::HashMap<(u32, u64), String>>,
}

impl OpenedPaths {
    const PER_PROCESS: usize = 4096;

    fn remember(&mut self, tgid: u32, dev: u32, ino: u64, path: &str) {
        let files = self.by_process.entry(tgid).or_default();
        if files.get(&(dev, ino)).is_some_and(|p| p == path) {
            return;
        }
        if files.len() >= Self::PER_PROCESS {
            let half: Vec<_> = files.keys().take(Self::PER_PROCESS / 2).copied().collect();
            for k in half {
                files.remove(&k);
            }
        }
        files.insert((dev, ino), path.to_owned());
    }

    fn path(&self, tgid: u32, dev: u32, ino: u64) -> Option<&str> {
        self.by_process
            .get(&tgid)
            .and_then(|f| f.get(&(dev, ino)))
            .map(String::as_str)
    }

    fn forget(&mut self, tgid: u32) {
        self.by_process.remove(&tgid);
    }
}

impl Attribution {
    pub fn new(clock: Clock) -> Self {
        Self {
            registry: Registry::default(),
            users: Users::default(),
            clock,
            calls: ToolCalls::default(),
            opened: OpenedPaths::default(),
        }
    }

    /// The event of a kernel record, tied to its session and process; `rules` names the
    /// rule behind a kernel decision. The process table follows the fork, and the exec
    /// unless it was refused (the old program then still runs).
    pub fn event(&mut self, raw: &Raw, rules: &RuleTable) -> Event {
        let h = *raw.header();
        if let Raw::Fork(f) = raw {
            self.registry.on_fork(h.session_id, h.tgid, f.child_tgid);
            self.calls.on_fork(h.session_id, h.tgid, f.child_tgid);
        }
        let mut ev = Event::from_raw(
            raw,
            &self.clock,
            self.session_ref(h.session_id),
            &|id, c| rules.describe(id, c),
        );
        let refused = ev.decision.as_ref().is_some_and(|d| d.action.refused());
        if let Some(exec) = ev.exec()
            && !refused
        {
            self.registry.on_exec(h.tgid, &exec.path, &exec.cwd);
            self.calls
                .on_exec(h.session_id, h.tgid, &exec.path, &exec.argv);
        }
        ev.context = self.calls.context_of(h.session_id, h.tgid);
        match raw {
            Raw::Open(e) if e.ret >= 0 && e.verdict.denied == 0 && e.ino != 0 => {
                if let Some(o) = ev.open().filter(|o| o.path_resolved) {
                    self.opened.remember(h.tgid, e.dev, e.ino, &o.path);
                }
            }
            Raw::OpenRepeats(e) => {
                if let (Some(path), Some(o)) =
                    (self.opened.path(h.tgid, e.dev, e.ino), ev.open_mut())
                {
                    o.path = path.to_owned();
                    o.path_resolved = true;
                }
            }
            Raw::Exit(_) => {
                self.calls.on_exit(h.tgid);
                self.opened.forget(h.tgid);
            }
            _ => {}
        }
        if let Some(p) = ev.process.as_mut() {
            self.enrich(p, !matches!(raw, Raw::Exit(_)));
        }
        self.registry.count_event(h.session_id);
        ev
    }

    /// After a record's event: when it was the exit of its session's last process, the
    /// session id and the time the session ended.
    pub fn ended_by(&mut self, raw: &Raw) -> Option<(u64, SystemTime)> {
        let Raw::Exit(_) = raw else {
            return None;
        };
        let h = raw.header();
        let now = self.clock.wall(h.ktime_ns);
        self.registry
            .on_exit(h.session_id, h.tgid, now)
            .then_some((h.session_id, now))
    }

    pub fn session_ref(&self, sid: u64) -> SessionRef {
        self.registry
            .get(sid)
            .map(|s| s.reference())
            .unwrap_or_else(|| SessionRef {
                id: format_id(sid),
                ..SessionRef::default()
            })
    }

    /// Adds what the kernel record lacks: user name and executable (procfs if unknown).
    pub fn enrich(&mut self, p: &mut ProcessInfo, alive: bool) {
        p.user = self.users.name(p.uid);
        p.exe = match self.registry.exe_of(p.tgid) {
            Some(exe) => Some(exe.to_owned()),
            None if alive => procfs::process::Process::new(p.tgid as i32)
                .and_then(|pr| pr.exe())
                .ok()
                .map(|exe| {
                    let exe = exe.display().to_string();
                    self.registry.remember_exe(p.tgid, exe.clone());
                    exe
                }),
            None => None,
        };
    }

    /// A live process as procfs shows it (for the process that enrols a session).
    pub fn process_info(&mut self, tgid: u32) -> Option<ProcessInfo> {
        let mut p = live_process(tgid)?;
        p.user = self.users.name(p.uid);
        Some(p)
    }
}

/// A live process as procfs shows it, without its user name (no cache at hand: the
/// refusal layer's threads take it while the process waits for an answer).
pub fn live_process(tgid: u32) -> Option<ProcessInfo> {
    let p = procfs::process::Process::new(tgid as i32).ok()?;
    let stat = p.stat().ok()?;
    let status = p.status().ok()?;
    Some(ProcessInfo {
        pid: tgid,
        tgid,
        ppid: stat.ppid as u32,
        uid: status.ruid,
        user: None,
        gid: status.rgid,
        comm: stat.comm,
        cgroup_id: 0,
        exe: p.exe().ok().map(|e| e.display().to_string()),
    })
}

#[cfg(test)]
mod tests {
    use agent_common::{
        event::{EventKind, ExitEvent, ForkEvent, KernelVerdict},
        vocab::{Action, Layer},
    };

    use super::*;
    use crate::{
        event::{
            Body,
            test_records::{exec, header_of},
        },
        session::{Enrolment, NewSession},
    };

    const SID: u64 = 0x1234_5678_9abc_def0;
    /// Pids no process has (so procfs enrichment finds nothing, as for a gone process).
    const ROOT: u32 = 4_000_001;
    const CHILD: u32 = 4_000_002;

    fn attribution() -> Attribution {
        let mut a = Attribution::new(Clock::now());
        a.registry.create(
            SID,
            NewSession {
                name: Some("s1".into()),
                profile: "demo".into(),
                owner_uid: 0,
                owner_user: Some("root".into()),
                enrolment: Enrolment::Run,
                root_pid: ROOT,
            },
            &[ROOT],
        );
        a
    }

    fn fork(parent: u32, child: u32) -> Raw {
        Raw::Fork(ForkEvent {
            header: header_of(EventKind::Fork, SID, parent),
            child_tgid: child,
            _pad: 0,
        })
    }

    fn exit(tgid: u32) -> Raw {
        Raw::Exit(ExitEvent {
            header: header_of(EventKind::Exit, SID, tgid),
            exit_code: 0,
            _pad: 0,
        })
    }

    fn exec_of(tgid: u32, exe: &str, verdict: KernelVerdict) -> Raw {
        Raw::Exec(Box::new(exec(
            header_of(EventKind::Exec, SID, tgid),
            exe,
            "/work",
            verdict,
        )))
    }

    /// A fork, an exec and exits tie every event to the session, the child inherits
    /// its parent's program until its own exec, and the last exit ends the session.
    #[test]
    fn events_are_tied_to_their_session_and_the_last_exit_ends_it() {
        let mut a = attribution();
        let rules = RuleTable::default();
        let e = a.event(
            &exec_of(ROOT, "/usr/bin/bash", KernelVerdict::default()),
            &rules,
        );
        assert_eq!(
            (e.session.name.as_str(), e.session.profile.as_str()),
            ("s1", "demo")
        );
        let p = e.process.expect("process");
        // The user's name comes from the host's accounts (whatever uid 1000 is here).
        assert_eq!((p.tgid, p.uid), (ROOT, 1000));
        assert_eq!(p.user, a.users.name(1000));
        assert_eq!(p.exe.as_deref(), Some("/usr/bin/bash"));
        let e = a.event(&fork(ROOT, CHILD), &rules);
        assert_eq!(
            e.body,
            Body::Fork(crate::event::ForkInfo { child_tgid: CHILD })
        );
        // The child runs its parent's program until it execs its own.
        assert_eq!(a.registry.exe_of(CHILD), Some("/usr/bin/bash"));
        assert_eq!(a.registry.cwd_of(CHILD), Some("/work"));
        let e = a.event(
            &exec_of(CHILD, "/usr/bin/cat", KernelVerdict::default()),
            &rules,
        );
        assert_eq!(
            e.process.expect("process").exe.as_deref(),
            Some("/usr/bin/cat")
        );
        let root_exit = exit(ROOT);
        a.event(&root_exit, &rules);
        assert_eq!(a.ended_by(&root_exit), None, "the child still runs");
        let child_exit = exit(CHILD);
        a.event(&child_exit, &rules);
        let (sid, _) = a
            .ended_by(&child_exit)
            .expect("the last exit ends the session");
        assert_eq!(sid, SID);
        assert_eq!(a.registry.get(SID).expect("session").events, 5);
    }

    /// A refused exec left the old program running: the table keeps it.
    #[test]
    fn a_refused_exec_does_not_change_the_program() {
        let mut a = attribution();
        let rules = RuleTable::default();
        a.event(
            &exec_of(ROOT, "/usr/bin/bash", KernelVerdict::default()),
            &rules,
        );
        let refused = KernelVerdict {
            rule_id: 0,
            denied: 1,
            action: Action::Blocked as u8,
            enforced_by: Layer::Lsm as u8,
            _pad: 0,
        };
        let e = a.event(&exec_of(ROOT, "/usr/bin/nc", refused), &rules);
        let d = e.decision.expect("the kernel's decision");
        assert_eq!((d.action, d.enforced_by), (Action::Blocked, Layer::Lsm));
        assert_eq!(a.registry.exe_of(ROOT), Some("/usr/bin/bash"));
    }

    fn open_of(tgid: u32, path: &str, ino: u64, verdict: KernelVerdict) -> Raw {
        Raw::Open(Box::new(agent_common::event::OpenEvent {
            header: header_of(EventKind::Open, SID, tgid),
            syscall: agent_common::event::OpenSyscall::Openat as u32,
            flags: 0,
            ret: 3,
            verdict,
            dev: 7,
            _pad: 0,
            ino,
            path: crate::event::test_records::kpath(path, 0),
        }))
    }

    fn repeats_of(tgid: u32, ino: u64, count: u64) -> Raw {
        let mut header = header_of(EventKind::OpenRepeats, SID, tgid);
        header.ktime_ns = 1_000;
        Raw::OpenRepeats(agent_common::event::OpenRepeatEvent {
            header,
            syscall: agent_common::event::OpenSyscall::Openat as u32,
            flags: 0,
            dev: 7,
            _pad: 0,
            ino,
            count,
            first_ns: 2_000,
            last_ns: 3_000_000_000,
        })
    }

    /// The kernel counts repeats of an allowed open by inode, without the path: they
    /// are named by the path the process opened that inode by; a denied open names
    /// nothing (the kernel never counts those), and the names go with the process.
    #[test]
    fn counted_repeats_are_named_by_the_path_their_process_opened_them_by() {
        let mut a = attribution();
        let rules = RuleTable::default();
        a.event(
            &open_of(ROOT, "statm/self/proc/", 42, KernelVerdict::default()),
            &rules,
        );
        let denied = KernelVerdict {
            rule_id: 0,
            denied: 1,
            action: Action::Alerted as u8,
            enforced_by: Layer::None as u8,
            _pad: 0,
        };
        a.event(&open_of(ROOT, "key/secret/", 43, denied), &rules);
        let e = a.event(&repeats_of(ROOT, 42, 99), &rules);
        let o = e.open().expect("an open event");
        assert_eq!(
            (o.path.as_str(), o.path_resolved),
            ("/proc/self/statm", true)
        );
        let r = o.repeats.as_ref().expect("its count");
        assert_eq!(r.count, 99);
        // Dated by the last repeat, the first one kept beside it.
        assert_eq!(e.time, crate::event::rfc3339(a.clock.wall(3_000_000_000)));
        assert_eq!(r.first, crate::event::rfc3339(a.clock.wall(2_000)));
        // Another process's count of the same inode is not this one's name.
        let e = a.event(&repeats_of(CHILD, 42, 1), &rules);
        assert!(!e.open().unwrap().path_resolved);
        let e = a.event(&repeats_of(ROOT, 43, 1), &rules);
        assert!(
            !e.open().unwrap().path_resolved,
            "a denied open names nothing"
        );
        a.event(&exit(ROOT), &rules);
        let e = a.event(&repeats_of(ROOT, 42, 1), &rules);
        assert_eq!(e.open().unwrap().path, "", "forgotten at exit");
    }

    /// A record of a session the daemon does not know still names its id.
    #[test]
    fn an_unknown_session_is_named_by_its_id() {
        let a = attribution();
        let r = a.session_ref(0xfeed);
        assert_eq!((r.id.as_str(), r.name.as_str()), ("000000000000feed", ""));
    }
}
