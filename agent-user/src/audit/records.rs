//! What the daemon hands to the audit store, and how each becomes table rows.

use std::sync::Arc;

use rusqlite::types::Value;
use serde::{Deserialize, Serialize};

use crate::event::{Body, Event};

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
    /// Schema 3: the environment `run` changed before the agent started, by name
    /// (`{"removed": [...], "replaced": [...], "added": [...], "applied": bool}`).
    pub environment: Option<String>,
    /// Schema 4: the `match:` selector that enrolled the session (`file:line (field)`).
    pub selector: Option<String>,
    /// Schema 4: the container and pod it ran in (`containers::ContainerInfo`, JSON).
    pub container: Option<String>,
}

/// A behaviour baseline as the drift analyser learned it (schema 5).
#[derive(Clone, Debug, PartialEq)]
pub struct BaselineRecord {
    pub time_ns: i64,
    pub agent: String,
    pub principal: Option<String>,
    pub sessions: u64,
    pub through_seq: i64,
    /// `drift::Baseline`, JSON.
    pub content: String,
}

impl BaselineRecord {
    pub fn row(&self) -> Vec<Value> {
        vec![
            int(self.time_ns),
            text(self.agent.clone()),
            opt_text(self.principal.as_deref()),
            int(self.sessions as i64),
            int(self.through_seq),
            text(self.content.clone()),
        ]
    }
}

/// One item for the store.
#[derive(Clone, Debug)]
pub enum Item {
    Session(Box<SessionRecord>),
    Event(Arc<Event>),
    Baseline(Box<BaselineRecord>),
}

/// What makes two opens the same action: the same process opening the same file the
/// same way with the same outcome and decision (the fd number aside). Within one commit
/// such repeats are stored as one row with a count (`repeats`) and the last time; the
/// repeats the kernel counted itself (`OpenInfo::repeats`) add their count.
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
    let o = ev.open()?;
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

/// How many actions `ev` stands for: the kernel's count for its counted repeats of an
/// open, else one.
pub fn opens_of(ev: &Event) -> u64 {
    ev.open()
        .and_then(|o| o.repeats.as_ref())
        .map_or(1, |r| r.count.max(1))
}

/// Counts `ev`, a repeat of the action of an `actions` row made by [`event_rows`], into
/// that row.
pub fn add_repeat(action: &mut [Value], ev: &Event) {
    let time_ns = ev.time_ns;
    let at = |c: &str| {
        super::schema::ACTIONS
            .columns
            .iter()
            .position(|x| *x == c)
            .expect("a column of actions")
    };
    if let Value::Integer(n) = &mut action[at("repeats")] {
        *n += opens_of(ev) as i64;
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
            opt_text(self.environment.as_deref()),
            opt_text(self.selector.as_deref()),
            opt_text(self.container.as_deref()),
        ]
    }
}

/// The rows one event becomes: its action (with the decision, if any), and a process
/// row where the event starts a process or an image.
pub struct EventRows {
    pub action: Vec<Value>,
    pub process: Option<Vec<Value>>,
}

/// The kind-specific columns of an `actions` row (`extra` holds what has no column).
#[derive(Default)]
struct BodyColumns {
    path: Option<String>,
    path_resolved: Option<i64>,
    argv: Option<String>,
    cwd: Option<String>,
    flags: Option<i64>,
    address: Option<String>,
    port: Option<i64>,
    protocol: Option<String>,
    op: Option<String>,
    result: Option<i64>,
    exit_code: Option<i32>,
    exit_signal: Option<i32>,
    extra: serde_json::Map<String, serde_json::Value>,
}

fn body_columns(body: &Body) -> BodyColumns {
    let mut c = BodyColumns::default();
    match body {
        Body::Exec(x) => {
            c.path = Some(x.path.clone());
            c.path_resolved = Some(1);
            c.argv = serde_json::to_string(&x.argv).ok();
            c.cwd = Some(x.cwd.clone());
            if x.path_truncated {
                c.extra.insert("path_truncated".into(), true.into());
            }
            if x.argv_truncated {
                c.extra.insert("argv_truncated".into(), true.into());
            }
        }
        Body::Open(o) => {
            c.path = Some(o.path.clone());
            c.path_resolved = Some(i64::from(o.path_resolved));
            // The raw flags: their names are derived when read.
            c.flags = Some(i64::from(o.flags_raw));
            c.op = Some(o.syscall.to_string());
            c.result = Some(o.result);
            if o.path_truncated {
                c.extra.insert("path_truncated".into(), true.into());
            }
            if let Some(r) = &o.repeats {
                c.extra.insert("repeats".into(), r.count.into());
                c.extra
                    .insert("repeats_first".into(), r.first.clone().into());
            }
        }
        Body::Connect(x) => {
            c.address = Some(x.address.clone());
            c.port = Some(i64::from(x.port));
            c.op = Some("connect".to_owned());
            c.result = Some(x.result);
            c.extra.insert("family".into(), x.family.clone().into());
            c.extra.insert("fd".into(), x.fd.into());
        }
        Body::NetDecision(n) => {
            c.address = Some(n.address.clone());
            c.port = Some(i64::from(n.port));
            c.protocol = Some(n.protocol.clone());
            c.op = Some(n.op.clone());
            c.extra.insert("family".into(), n.family.clone().into());
        }
        Body::SyscallDecision(s) => {
            c.op = Some(s.name.clone());
            c.result = Some(s.result);
            c.extra.insert("nr".into(), s.nr.into());
            c.extra.insert("at".into(), s.at.clone().into());
            if let Some(a) = s.arg {
                c.extra.insert("arg".into(), a.into());
            }
        }
        Body::Exit(x) => {
            c.exit_code = x.code;
            c.exit_signal = x.signal;
            if x.core_dumped {
                c.extra.insert("core_dumped".into(), true.into());
            }
        }
        Body::Fork(f) | Body::SessionMapFull(f) => {
            c.extra.insert("child_tgid".into(), f.child_tgid.into());
        }
        Body::Loss(l) => {
            c.extra.insert("counter".into(), l.counter.clone().into());
            c.extra.insert("delta".into(), l.delta.into());
            c.extra.insert("total".into(), l.total.into());
        }
        // The agent's report, whole, under `agent`; the tool's name in `op`.
        Body::Prompt(x) => {
            c.extra
                .insert("agent".into(), serde_json::to_value(x).unwrap_or_default());
        }
        Body::ToolCall(x) => {
            c.op = Some(x.tool.clone());
            c.extra
                .insert("agent".into(), serde_json::to_value(x).unwrap_or_default());
        }
        Body::ToolResult(x) => {
            c.op = Some(x.tool.clone());
            c.extra
                .insert("agent".into(), serde_json::to_value(x).unwrap_or_default());
        }
        // The held object in `path`, what was held in `op`, the answer whole (who, when,
        // note, scope) under `approval`.
        Body::Approval(x) => {
            c.path = Some(x.path.clone());
            c.op = Some(x.access.clone());
            c.extra.insert(
                "approval".into(),
                serde_json::to_value(x).unwrap_or_default(),
            );
        }
        // What it looks like in `op`, the command line in `argv`, the match under
        // `unmanaged`.
        Body::UnmanagedAgent(x) => {
            c.op = Some(x.agent.clone());
            c.argv = serde_json::to_string(&x.argv).ok();
            c.extra.insert("matched".into(), x.matched.clone().into());
        }
        // The finding in `op`, its object in `path`, the whole of it (severity,
        // evidence, baseline, whom to tell) under `drift`.
        Body::Drift(x) => {
            c.op = Some(x.finding.as_str().to_owned());
            c.path = Some(x.object.clone());
            c.extra
                .insert("drift".into(), serde_json::to_value(x).unwrap_or_default());
        }
        Body::SessionStart | Body::SessionEnd => {}
    }
    c
}

// Long: one line per column of the `actions` row, in schema order.
pub fn event_rows(ev: &Event) -> EventRows {
    let t = if ev.time_ns != 0 {
        ev.time_ns
    } else {
        time_ns(&ev.time)
    };
    let p = ev.process.as_ref();
    let mut c = body_columns(&ev.body);
    let d = ev.decision.as_ref();
    // The call a tool row is, or the call an action happened under (how: `extra`).
    let tool_call = match &ev.body {
        Body::ToolCall(x) => Some(x.id.clone()),
        Body::ToolResult(x) => Some(x.id.clone()),
        _ => ev.context.as_ref().map(|x| x.tool_call.clone()),
    };
    if !ev.shadow.is_empty() {
        c.extra.insert(
            "shadow".into(),
            serde_json::to_value(&ev.shadow).unwrap_or_default(),
        );
    }
    if let Some(x) = &ev.context {
        c.extra.insert(
            "context".into(),
            serde_json::to_value(x).unwrap_or_default(),
        );
    }
    let action = vec![
        int(ev.seq as i64),
        int(t),
        session_id(ev),
        text(ev.kind().as_str().to_owned()),
        opt_int(p.map(|p| p.pid)),
        opt_int(p.map(|p| p.tgid)),
        opt_int(p.map(|p| p.ppid)),
        opt_int(p.map(|p| p.uid)),
        opt_text(p.and_then(|p| p.user.as_deref())),
        opt_int(p.map(|p| p.gid)),
        opt_text(p.map(|p| p.comm.as_str())),
        opt_text(p.and_then(|p| p.exe.as_deref())),
        opt_text(c.path.as_deref()),
        opt_int(c.path_resolved),
        opt_text(c.argv.as_deref()),
        opt_text(c.cwd.as_deref()),
        opt_int(c.flags),
        opt_text(c.address.as_deref()),
        opt_int(c.port),
        opt_text(c.protocol.as_deref()),
        opt_text(c.op.as_deref()),
        opt_int(c.result),
        opt_int(c.exit_code),
        opt_int(c.exit_signal),
        if c.extra.is_empty() {
            Value::Null
        } else {
            text(serde_json::Value::Object(c.extra).to_string())
        },
        // The opens a row of the kernel's counted repeats stands for.
        int(opens_of(ev) as i64),
        Value::Null,
        opt_text(d.map(|d| d.decision.as_str())),
        opt_text(d.map(|d| d.action.as_str())),
        opt_text(d.map(|d| d.rule.as_str())),
        opt_text(d.map(|d| d.enforced_by.as_str())),
        opt_text(tool_call.as_deref()),
    ];
    // A refused exec left the old image running.
    let refused = d.is_some_and(|d| d.action.refused());
    let process = p.and_then(|p| match &ev.body {
        Body::Exec(x) if !refused => Some(process_row(
            ev,
            t,
            p.tgid,
            p.ppid,
            "exec",
            Some(&x.path),
            c.argv.as_deref(),
            Some(&x.cwd),
        )),
        Body::Fork(f) => Some(process_row(
            ev,
            t,
            f.child_tgid,
            p.tgid,
            "fork",
            p.exe.as_deref(),
            None,
            None,
        )),
        Body::SessionStart => Some(process_row(
            ev,
            t,
            p.tgid,
            p.ppid,
            "root",
            p.exe.as_deref(),
            None,
            None,
        )),
        Body::Exec(_)
        | Body::Open(_)
        | Body::Connect(_)
        | Body::Exit(_)
        | Body::SessionMapFull(_)
        | Body::NetDecision(_)
        | Body::SyscallDecision(_)
        | Body::SessionEnd
        | Body::Loss(_)
        | Body::Prompt(_)
        | Body::ToolCall(_)
        | Body::ToolResult(_)
        | Body::Approval(_)
        | Body::UnmanagedAgent(_)
        | Body::Drift(_) => None,
    });
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
