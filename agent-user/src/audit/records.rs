//! What the daemon hands to the audit store, and how each becomes table rows.

use std::sync::Arc;

use rusqlite::types::Value;
use serde::{Deserialize, Serialize};

use crate::event::Event;

/// A session's execution context, recorded once at enrolment.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionRecord {
    pub session_id: String,
    pub name: String,
    /// The profile's name: which agent this is.
    pub agent: String,
    /// Where the profile came from (file path or `embedded:NAME`).
    pub profile_source: String,
    pub profile_sha256: String,
    pub mode: String,
    pub business_owner: String,
    pub technical_owner: String,
    /// The principal: who the agent runs as.
    pub principal_uid: u32,
    pub principal_user: Option<String>,
    /// `run` or `attach`.
    pub enrolment: String,
    pub host: String,
    pub root_pid: u32,
    pub time_ns: i64,
    pub time: String,
}

/// One item for the store.
#[derive(Clone, Debug)]
pub enum Item {
    Session(Box<SessionRecord>),
    Event(Arc<Event>),
}

/// What makes two opens the same action: the same process opening the same file the
/// same way with the same outcome and decision (the fd number aside). Within one commit
/// such repeats are stored as one row with a count (`repeats`) and the last time.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct RepeatKey<'a> {
    session: &'a str,
    tgid: u32,
    path: &'a str,
    flags: u32,
    /// 0 for success, the errno otherwise.
    error: i64,
    outcome: Option<&'a str>,
    rule: Option<&'a str>,
}

pub fn repeat_key(ev: &Event) -> Option<RepeatKey<'_>> {
    let o = ev.open.as_ref()?;
    Some(RepeatKey {
        session: &ev.session.id,
        tgid: ev.process.as_ref()?.tgid,
        path: &o.path,
        flags: o.flags_raw,
        error: o.result.min(0),
        outcome: ev.decision.as_ref().map(|d| d.action.as_str()),
        rule: ev.decision.as_ref().map(|d| d.rule.as_str()),
    })
}

/// Counts one more repeat into an `actions` row made by [`event_rows`].
pub fn add_repeat(action: &mut [Value], time_ns: i64) {
    let at = |c: &str| {
        super::schema::ACTIONS
            .columns
            .iter()
            .position(|x| *x == c)
            .expect("a column of actions")
    };
    if let Value::Integer(n) = &mut action[at("repeats")] {
        *n += 1;
    }
    action[at("last_time_ns")] = Value::Integer(time_ns);
}

/// Nanoseconds since the epoch of an RFC 3339 time (0 when it does not parse).
pub fn time_ns(t: &str) -> i64 {
    humantime::parse_rfc3339(t)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64)
}

fn text(s: impl Into<String>) -> Value {
    Value::Text(s.into())
}

fn opt_text(s: Option<&str>) -> Value {
    s.map_or(Value::Null, |s| Value::Text(s.to_owned()))
}

fn int(i: impl Into<i64>) -> Value {
    Value::Integer(i.into())
}

fn opt_int(i: Option<impl Into<i64>>) -> Value {
    i.map_or(Value::Null, |i| Value::Integer(i.into()))
}

fn session_id(ev: &Event) -> Value {
    if ev.session.id.is_empty() {
        Value::Null
    } else {
        text(ev.session.id.clone())
    }
}

impl SessionRecord {
    /// Content of its `sessions` row.
    pub fn row(&self) -> Vec<Value> {
        vec![
            text(self.session_id.clone()),
            text(self.name.clone()),
            text(self.agent.clone()),
            text(self.profile_source.clone()),
            text(self.profile_sha256.clone()),
            text(self.mode.clone()),
            text(self.business_owner.clone()),
            text(self.technical_owner.clone()),
            int(self.principal_uid),
            opt_text(self.principal_user.as_deref()),
            text(self.enrolment.clone()),
            text(self.host.clone()),
            int(self.root_pid),
            int(self.time_ns),
            text(self.time.clone()),
        ]
    }
}

/// The rows one event becomes: its action (with the decision, if any), and a process
/// row where the event starts a process or an image.
pub struct EventRows {
    pub action: Vec<Value>,
    pub process: Option<Vec<Value>>,
}

pub fn event_rows(ev: &Event) -> EventRows {
    let t = if ev.time_ns != 0 {
        ev.time_ns
    } else {
        time_ns(&ev.time)
    };
    let p = ev.process.as_ref();
    let mut extra = serde_json::Map::new();
    let (mut path, mut path_resolved, mut argv, mut cwd, mut flags) =
        (None, None, None, None, None);
    let (mut address, mut port, mut protocol, mut op, mut result) = (None, None, None, None, None);
    let (mut exit_code, mut exit_signal) = (None, None);
    if let Some(x) = &ev.exec {
        path = Some(x.path.clone());
        path_resolved = Some(1);
        argv = serde_json::to_string(&x.argv).ok();
        cwd = Some(x.cwd.clone());
        if x.path_truncated {
            extra.insert("path_truncated".into(), true.into());
        }
        if x.argv_truncated {
            extra.insert("argv_truncated".into(), true.into());
        }
    }
    if let Some(o) = &ev.open {
        path = Some(o.path.clone());
        path_resolved = Some(i64::from(o.path_resolved));
        // The raw flags: their names are derived when read.
        flags = Some(i64::from(o.flags_raw));
        op = Some(o.syscall.clone());
        result = Some(o.result);
        if o.path_truncated {
            extra.insert("path_truncated".into(), true.into());
        }
    }
    if let Some(c) = &ev.connect {
        address = Some(c.address.clone());
        port = Some(i64::from(c.port));
        op = Some("connect".to_owned());
        result = Some(c.result);
        extra.insert("family".into(), c.family.clone().into());
        extra.insert("fd".into(), c.fd.into());
    }
    if let Some(n) = &ev.net {
        address = Some(n.address.clone());
        port = Some(i64::from(n.port));
        protocol = Some(n.protocol.clone());
        op = Some(n.op.clone());
        extra.insert("family".into(), n.family.clone().into());
    }
    if let Some(x) = &ev.exit {
        exit_code = x.code;
        exit_signal = x.signal;
        if x.core_dumped {
            extra.insert("core_dumped".into(), true.into());
        }
    }
    if let Some(f) = &ev.fork {
        extra.insert("child_tgid".into(), f.child_tgid.into());
    }
    if let Some(l) = &ev.loss {
        extra.insert("counter".into(), l.counter.clone().into());
        extra.insert("delta".into(), l.delta.into());
        extra.insert("total".into(), l.total.into());
    }
    let action = vec![
        int(ev.seq as i64),
        int(t),
        session_id(ev),
        text(ev.kind.clone()),
        opt_int(p.map(|p| p.pid)),
        opt_int(p.map(|p| p.tgid)),
        opt_int(p.map(|p| p.ppid)),
        opt_int(p.map(|p| p.uid)),
        opt_text(p.and_then(|p| p.user.as_deref())),
        opt_int(p.map(|p| p.gid)),
        opt_text(p.map(|p| p.comm.as_str())),
        opt_text(p.and_then(|p| p.exe.as_deref())),
        opt_text(path.as_deref()),
        opt_int(path_resolved),
        opt_text(argv.as_deref()),
        opt_text(cwd.as_deref()),
        opt_int(flags),
        opt_text(address.as_deref()),
        opt_int(port),
        opt_text(protocol.as_deref()),
        opt_text(op.as_deref()),
        opt_int(result),
        opt_int(exit_code),
        opt_int(exit_signal),
        if extra.is_empty() {
            Value::Null
        } else {
            text(serde_json::Value::Object(extra).to_string())
        },
        int(1),
        Value::Null,
    ];
    let d = ev.decision.as_ref();
    let mut action = action;
    action.extend([
        opt_text(d.map(|d| d.decision.as_str())),
        opt_text(d.map(|d| d.action.as_str())),
        opt_text(d.map(|d| d.rule.as_str())),
        opt_text(d.map(|d| d.enforced_by.as_str())),
    ]);
    // A refused exec left the old image running.
    let refused = ev.decision.as_ref().is_some_and(|d| d.action.refused());
    let process = match (ev.kind.as_str(), p) {
        ("exec", Some(p)) if !refused => ev.exec.as_ref().map(|x| {
            process_row(
                ev,
                t,
                p.tgid,
                p.ppid,
                "exec",
                Some(&x.path),
                argv.as_deref(),
                Some(&x.cwd),
            )
        }),
        ("fork", Some(p)) => ev.fork.as_ref().map(|f| {
            process_row(
                ev,
                t,
                f.child_tgid,
                p.tgid,
                "fork",
                p.exe.as_deref(),
                None,
                None,
            )
        }),
        ("session_start", Some(p)) => Some(process_row(
            ev,
            t,
            p.tgid,
            p.ppid,
            "root",
            p.exe.as_deref(),
            None,
            None,
        )),
        _ => None,
    };
    EventRows { action, process }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one argument per column of the row"
)]
fn process_row(
    ev: &Event,
    t: i64,
    tgid: u32,
    ppid: u32,
    origin: &str,
    exe: Option<&str>,
    argv: Option<&str>,
    cwd: Option<&str>,
) -> Vec<Value> {
    let p = ev.process.as_ref();
    vec![
        session_id(ev),
        int(tgid),
        int(ppid),
        text(origin),
        opt_text(exe),
        opt_text(argv),
        opt_text(cwd),
        opt_int(p.map(|p| p.uid)),
        opt_text(p.and_then(|p| p.user.as_deref())),
        int(t),
    ]
}
