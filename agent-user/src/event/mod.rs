//! Ring-buffer records → typed kernel events → enriched JSON events.

//!
//! One file per kind holds the kind's payload and its conversion from the kernel's
//! record; this module holds the event itself ([`Event`], [`Body`]), its JSON shape and
//! the decision.

use std::{
    borrow::Cow,
    time::{Duration, SystemTime},
};

use agent_common::{
    event::{COMM_LEN, EventKind, KernelVerdict},
    vocab::{Action, Layer, Verdict},
};
use serde::{Deserialize, Serialize};

pub mod agent;
mod approval;
mod connect;
mod exec;
mod exit;
mod net;
mod open;
mod path;
mod raw;
mod syscall;

pub use agent::{Attribution, ContextRef, PromptInfo, ToolCallInfo, ToolResultInfo};
pub use approval::{ApprovalInfo, Approver, Outcome as ApprovalOutcome, Scope as ApprovalScope};
pub use connect::ConnectInfo;
use connect::connect_info;
use exec::exec_info;
pub use exec::{ExecInfo, argv};
pub use exit::ExitInfo;
pub use net::NetInfo;
use net::net_info;
pub use open::{OpenInfo, Repeats, open_flag_names};
use open::{open_info, repeats_info};
pub use path::{PathText, path_text};
pub use raw::{Raw, Spare, decode, decode_reusing};
pub use syscall::SyscallInfo;
use syscall::syscall_info;

pub fn comm(c: &[u8; COMM_LEN]) -> String {
    let end = c.iter().position(|b| *b == 0).unwrap_or(COMM_LEN);
    String::from_utf8_lossy(&c[..end]).into_owned()
}

/// Converts the kernel's `CLOCK_BOOTTIME` stamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Realtime minus boottime, in nanoseconds.
    offset_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let real = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
        let boot = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        let ns = |t: rustix::time::Timespec| {
            i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
        };
        Self {
            offset_ns: ns(real) - ns(boot),
        }
    }

    pub fn wall(&self, ktime_ns: u64) -> SystemTime {
        let ns = self.offset_ns + i128::from(ktime_ns);
        SystemTime::UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64)
    }
}

/// `t` as RFC 3339 in UTC with nanoseconds (`2026-12-04T16:40:46.374709733Z`), what
/// `humantime::format_rfc3339_nanos` writes, by hand: every event is stamped with one,
/// and the formatting machinery was a twentieth of the reader's time. Times before the
/// epoch are written as the epoch.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    let mut out = Vec::with_capacity(30);
    for (value, width, after) in [
        (year, 4, b'-'),
        (month, 2, b'-'),
        (day, 2, b'T'),
        (rem / 3600, 2, b':'),
        (rem / 60 % 60, 2, b':'),
        (rem % 60, 2, b'.'),
        (u64::from(d.subsec_nanos()), 9, b'Z'),
    ] {
        for i in (0..width).rev() {
            out.push(b'0' + (value / 10u64.pow(i) % 10) as u8);
        }
        out.push(after);
    }
    String::from_utf8(out).unwrap_or_default()
}

/// The proleptic Gregorian date of a day number since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The session an event belongs to.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionRef {
    pub id: String,
    pub name: String,
    pub profile: String,
    /// The session's container: `namespace/pod/container` for a pod's, else the
    /// runtime's `namespace/id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// Who acted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub gid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    /// Executable, from this process's last exec event or from procfs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ForkInfo {
    pub child_tgid: u32,
}

/// A policy decision and how it was carried out.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DecisionInfo {
    /// What the profile says.
    pub decision: Verdict,
    /// What happened: monitor mode and `on_violation: alert` let a denied operation
    /// through and record it.
    pub action: Action,
    /// The rule that matched: `file:line (field)`, or `<category>.default`.
    pub rule: String,
    /// The layer that carried the decision out.
    pub enforced_by: Layer,
}

/// Counters reported when the kernel or the daemon lost something.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LossInfo {
    pub counter: String,
    /// New losses since the last report.
    pub delta: u64,
    pub total: u64,
}

/// A process that looks like an agent runs outside every session (its process info
/// says which).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnmanagedInfo {
    /// The known agent (or `mcp-server`) it looks like.
    pub agent: String,
    /// What matched: `exe …`, `argv …`.
    pub matched: String,
    pub argv: Vec<String>,
}

/// A drift finding: what a session did that its agent's baseline does not contain,
/// with the evidence and the baseline it was judged against (see `drift`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DriftInfo {
    pub finding: agent_common::vocab::Finding,
    pub severity: agent_common::vocab::Severity,
    /// The new object: a program, a file tree (`~/.cache/**`, `$PROJECT/**`), a
    /// destination (`ADDR:PORT`), a tool, a denied object; for `mix`, the distance.
    pub object: String,
    /// The actions behind it: their audit `seq` numbers (the first ones, at most
    /// [`DRIFT_EVIDENCE_MAX`]).
    pub evidence: Vec<i64>,
    /// How many actions are behind it in all.
    pub count: u64,
    pub baseline: DriftBaseline,
    /// Who to tell: the owners of the session's profile, and its principal.
    pub notify: Vec<String>,
    pub detail: String,
}

impl Eq for DriftInfo {}

/// A shadow profile's verdict on an action (`shadow_of`), where it differs from the
/// decision in force: recorded, never enforced.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShadowVerdict {
    /// The shadow profile.
    pub profile: String,
    /// `deny`: it would have denied what was let through; `allow`: it would have let
    /// through what was denied.
    pub decision: agent_common::vocab::Verdict,
    pub rule: String,
}

/// The most evidence one finding carries (the count says how much there was).
pub const DRIFT_EVIDENCE_MAX: usize = 32;

/// The baseline a finding was judged against.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DriftBaseline {
    pub agent: String,
    /// The principal whose sessions it was learned from; `None`: every principal's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// How many sessions it was learned from.
    pub sessions: u64,
    /// Its `baselines` row in the audit store (0: not written yet).
    pub seq: i64,
}

/// What happened, one variant per kind: every consumer matches it exhaustively, so a
/// new kind cannot be forgotten by one of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Exec(ExecInfo),
    Open(OpenInfo),
    Connect(ConnectInfo),
    Fork(ForkInfo),
    Exit(ExitInfo),
    /// A child the kernel could not track (the session map was full).
    SessionMapFull(ForkInfo),
    /// A network decision of the cgroup layer.
    NetDecision(NetInfo),
    /// A syscall a profile (or the daemon's self-protection) names.
    SyscallDecision(SyscallInfo),
    SessionStart,
    SessionEnd,
    Loss(LossInfo),
    /// The agent's claims, from its hook.
    Prompt(PromptInfo),
    ToolCall(ToolCallInfo),
    ToolResult(ToolResultInfo),
    /// A held operation was answered (`on_violation: ask`).
    Approval(ApprovalInfo),
    /// A process that looks like an agent runs outside every session.
    UnmanagedAgent(UnmanagedInfo),
    /// A session did what its agent's baseline does not contain.
    Drift(Box<DriftInfo>),
}

impl Body {
    pub fn kind(&self) -> EventKind {
        match self {
            Body::Exec(_) => EventKind::Exec,
            Body::Open(_) => EventKind::Open,
            Body::Connect(_) => EventKind::Connect,
            Body::Fork(_) => EventKind::Fork,
            Body::Exit(_) => EventKind::Exit,
            Body::SessionMapFull(_) => EventKind::SessionMapFull,
            Body::NetDecision(_) => EventKind::NetDecision,
            Body::SyscallDecision(_) => EventKind::SyscallDecision,
            Body::SessionStart => EventKind::SessionStart,
            Body::SessionEnd => EventKind::SessionEnd,
            Body::Loss(_) => EventKind::Loss,
            Body::Prompt(_) => EventKind::Prompt,
            Body::ToolCall(_) => EventKind::ToolCall,
            Body::ToolResult(_) => EventKind::ToolResult,
            Body::Approval(_) => EventKind::Approval,
            Body::UnmanagedAgent(_) => EventKind::UnmanagedAgent,
            Body::Drift(_) => EventKind::Drift,
        }
    }
}

/// One enriched event, as written to the JSON-lines log and streamed to clients.
///
/// On the wire the body is the `kind` field plus one object named after its payload
/// (`"kind":"exec",…,"exec":{…}`), as it always was: see [`Wire`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Wire<'static>")]
pub struct Event {
    /// Daemon-wide sequence number (restarts at 1 with the daemon).
    pub seq: u64,
    pub time: String,
    /// `time` in nanoseconds since the epoch, for the audit store (not serialized: 0 in
    /// an event read back from JSON).
    pub time_ns: i64,
    pub session: SessionRef,
    pub process: Option<ProcessInfo>,
    pub body: Body,
    pub decision: Option<DecisionInfo>,
    /// The tool call (and prompt) the action happened under, as the agent's hooks let
    /// the daemon tell.
    pub context: Option<ContextRef>,
    /// What shadow profiles of the session's agent would have decided otherwise.
    pub shadow: Vec<ShadowVerdict>,
}

/// The JSON shape of an [`Event`], both ways: the kind, then at most one payload object
/// keyed by its name. Written borrowing the event (serializing is on the daemon's hot
/// path: no copy), read owning. Field order is the order of the lines written since the
/// first release (the golden tests hold it).
#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    seq: u64,
    time: Cow<'a, str>,
    kind: EventKind,
    session: Cow<'a, SessionRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    process: Option<Cow<'a, ProcessInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exec: Option<Cow<'a, ExecInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    open: Option<Cow<'a, OpenInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    connect: Option<Cow<'a, ConnectInfo>>,
    /// The child of a `fork` or of a `session_map_full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fork: Option<Cow<'a, ForkInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exit: Option<Cow<'a, ExitInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    loss: Option<Cow<'a, LossInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    net: Option<Cow<'a, NetInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    syscall: Option<Cow<'a, SyscallInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prompt: Option<Cow<'a, PromptInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tool_call: Option<Cow<'a, ToolCallInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tool_result: Option<Cow<'a, ToolResultInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    approval: Option<Cow<'a, ApprovalInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unmanaged: Option<Cow<'a, UnmanagedInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    drift: Option<Cow<'a, DriftInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    decision: Option<Cow<'a, DecisionInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    context: Option<Cow<'a, ContextRef>>,
    #[serde(default, skip_serializing_if = "<[_]>::is_empty")]
    shadow: Cow<'a, [ShadowVerdict]>,
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut w = Wire {
            seq: self.seq,
            time: Cow::Borrowed(&self.time),
            kind: self.kind(),
            session: Cow::Borrowed(&self.session),
            process: self.process.as_ref().map(Cow::Borrowed),
            exec: None,
            open: None,
            connect: None,
            fork: None,
            exit: None,
            loss: None,
            net: None,
            syscall: None,
            prompt: None,
            tool_call: None,
            tool_result: None,
            approval: None,
            unmanaged: None,
            drift: None,
            decision: self.decision.as_ref().map(Cow::Borrowed),
            context: self.context.as_ref().map(Cow::Borrowed),
            shadow: Cow::Borrowed(&self.shadow),
        };
        match &self.body {
            Body::Exec(x) => w.exec = Some(Cow::Borrowed(x)),
            Body::Open(x) => w.open = Some(Cow::Borrowed(x)),
            Body::Connect(x) => w.connect = Some(Cow::Borrowed(x)),
            Body::Fork(x) | Body::SessionMapFull(x) => w.fork = Some(Cow::Borrowed(x)),
            Body::Exit(x) => w.exit = Some(Cow::Borrowed(x)),
            Body::NetDecision(x) => w.net = Some(Cow::Borrowed(x)),
            Body::SyscallDecision(x) => w.syscall = Some(Cow::Borrowed(x)),
            Body::Loss(x) => w.loss = Some(Cow::Borrowed(x)),
            Body::Prompt(x) => w.prompt = Some(Cow::Borrowed(x)),
            Body::ToolCall(x) => w.tool_call = Some(Cow::Borrowed(x)),
            Body::ToolResult(x) => w.tool_result = Some(Cow::Borrowed(x)),
            Body::Approval(x) => w.approval = Some(Cow::Borrowed(x)),
            Body::UnmanagedAgent(x) => w.unmanaged = Some(Cow::Borrowed(x)),
            Body::Drift(x) => w.drift = Some(Cow::Borrowed(x)),
            Body::SessionStart | Body::SessionEnd => {}
        }
        w.serialize(s)
    }
}

impl TryFrom<Wire<'static>> for Event {
    type Error = String;

    fn try_from(w: Wire<'static>) -> Result<Self, String> {
        let kind = w.kind;
        // What was read is owned: `into_owned` moves it out, it does not copy.
        fn take<T: Clone>(
            v: Option<Cow<'static, T>>,
            kind: EventKind,
            field: &str,
        ) -> Result<T, String> {
            v.map(Cow::into_owned)
                .ok_or_else(|| format!("a `{kind}` event without its `{field}` object"))
        }
        let body = match kind {
            EventKind::Exec => Body::Exec(take(w.exec, kind, "exec")?),
            EventKind::Open => Body::Open(take(w.open, kind, "open")?),
            EventKind::Connect => Body::Connect(take(w.connect, kind, "connect")?),
            EventKind::Fork => Body::Fork(take(w.fork, kind, "fork")?),
            EventKind::SessionMapFull => Body::SessionMapFull(take(w.fork, kind, "fork")?),
            EventKind::Exit => Body::Exit(take(w.exit, kind, "exit")?),
            EventKind::NetDecision => Body::NetDecision(take(w.net, kind, "net")?),
            EventKind::SyscallDecision => Body::SyscallDecision(take(w.syscall, kind, "syscall")?),
            EventKind::Loss => Body::Loss(take(w.loss, kind, "loss")?),
            EventKind::Prompt => Body::Prompt(take(w.prompt, kind, "prompt")?),
            EventKind::ToolCall => Body::ToolCall(take(w.tool_call, kind, "tool_call")?),
            EventKind::ToolResult => Body::ToolResult(take(w.tool_result, kind, "tool_result")?),
            EventKind::Approval => Body::Approval(take(w.approval, kind, "approval")?),
            EventKind::UnmanagedAgent => {
                Body::UnmanagedAgent(take(w.unmanaged, kind, "unmanaged")?)
            }
            EventKind::Drift => Body::Drift(Box::new(take(w.drift, kind, "drift")?)),
            EventKind::SessionStart => Body::SessionStart,
            EventKind::SessionEnd => Body::SessionEnd,
            // The kernel's record of a selector's enrolment is written as the session's
            // `session_start`.
            EventKind::Enrolment | EventKind::CgroupCreated | EventKind::OpenRepeats => {
                return Err(format!("`{kind}` is not a written kind"));
            }
        };
        Ok(Event {
            seq: w.seq,
            time: w.time.into_owned(),
            time_ns: 0,
            session: w.session.into_owned(),
            process: w.process.map(Cow::into_owned),
            body,
            decision: w.decision.map(Cow::into_owned),
            context: w.context.map(Cow::into_owned),
            shadow: w.shadow.into_owned(),
        })
    }
}

impl Event {
    /// An event with only the common fields and its body set.
    pub fn new(body: Body, time: SystemTime, session: SessionRef) -> Self {
        Self {
            seq: 0,
            time: rfc3339(time),
            time_ns: time
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64),
            session,
            process: None,
            body,
            decision: None,
            context: None,
            shadow: Vec::new(),
        }
    }

    pub fn kind(&self) -> EventKind {
        self.body.kind()
    }

    pub fn exec(&self) -> Option<&ExecInfo> {
        match &self.body {
            Body::Exec(x) => Some(x),
            _ => None,
        }
    }

    pub fn open(&self) -> Option<&OpenInfo> {
        match &self.body {
            Body::Open(x) => Some(x),
            _ => None,
        }
    }

    pub fn open_mut(&mut self) -> Option<&mut OpenInfo> {
        match &mut self.body {
            Body::Open(x) => Some(x),
            _ => None,
        }
    }

    pub fn connect(&self) -> Option<&ConnectInfo> {
        match &self.body {
            Body::Connect(x) => Some(x),
            _ => None,
        }
    }

    /// The child of a `fork` or of a `session_map_full`.
    pub fn fork(&self) -> Option<&ForkInfo> {
        match &self.body {
            Body::Fork(x) | Body::SessionMapFull(x) => Some(x),
            _ => None,
        }
    }

    pub fn exit(&self) -> Option<&ExitInfo> {
        match &self.body {
            Body::Exit(x) => Some(x),
            _ => None,
        }
    }

    pub fn net(&self) -> Option<&NetInfo> {
        match &self.body {
            Body::NetDecision(x) => Some(x),
            _ => None,
        }
    }

    pub fn syscall(&self) -> Option<&SyscallInfo> {
        match &self.body {
            Body::SyscallDecision(x) => Some(x),
            _ => None,
        }
    }

    pub fn loss(&self) -> Option<&LossInfo> {
        match &self.body {
            Body::Loss(x) => Some(x),
            _ => None,
        }
    }

    /// The event's body for a kernel record (header fields go to `process`).
    /// `rule` names the rule behind a kernel decision (`rule_id`, category).
    pub fn from_raw(
        raw: &Raw,
        clock: &Clock,
        session: SessionRef,
        rule: &dyn Fn(u32, &str) -> String,
    ) -> Self {
        let h = raw.header();
        let (body, decision) = match raw {
            Raw::Exec(e) => (
                Body::Exec(exec_info(e)),
                kernel_decision(&e.verdict, "exec", rule),
            ),
            Raw::Exit(e) => (Body::Exit(ExitInfo::from_wait_status(e.exit_code)), None),
            Raw::Fork(e) => (
                Body::Fork(ForkInfo {
                    child_tgid: e.child_tgid,
                }),
                None,
            ),
            Raw::SessionMapFull(e) => (
                Body::SessionMapFull(ForkInfo {
                    child_tgid: e.child_tgid,
                }),
                None,
            ),
            Raw::Open(e) => (
                Body::Open(open_info(e)),
                kernel_decision(&e.verdict, "files", rule),
            ),
            Raw::OpenRepeats(e) => (
                Body::Open(repeats_info(e, rfc3339(clock.wall(e.first_ns)))),
                None,
            ),
            Raw::Connect(e) => (Body::Connect(connect_info(e)), None),
            Raw::NetDecision(e) => (
                Body::NetDecision(net_info(e)),
                decision(e.denied, e.action, e.enforced_by, || {
                    rule(e.rule_id, "network")
                }),
            ),
            Raw::SyscallDecision(e) => (
                Body::SyscallDecision(syscall_info(e)),
                decision(e.denied, e.action, e.enforced_by, || {
                    rule(e.rule_id, "syscalls")
                }),
            ),
            // The kernel started the session: its start, with the enrolled process.
            Raw::Enrolment(_) => (Body::SessionStart, None),
        };
        // Counted repeats are dated by the last of them (the header may be older: the
        // timer reports with the process's first counted open's).
        let at = match raw {
            Raw::OpenRepeats(e) => e.last_ns,
            _ => h.ktime_ns,
        };
        let mut ev = Event::new(body, clock.wall(at), session);
        ev.decision = decision;
        ev.process = Some(ProcessInfo {
            pid: h.pid,
            tgid: h.tgid,
            ppid: h.ppid,
            uid: h.uid,
            user: None,
            gid: h.gid,
            comm: comm(&h.comm),
            cgroup_id: h.cgroup_id,
            exe: None,
        });
        ev
    }
}

/// A kernel decision's fields as a [`DecisionInfo`]; `None` for numbers the vocabulary
/// does not know (decoding already refused those records).
fn decision(
    denied: u8,
    action: u8,
    layer: u8,
    rule: impl FnOnce() -> String,
) -> Option<DecisionInfo> {
    Some(DecisionInfo {
        decision: if denied != 0 {
            Verdict::Deny
        } else {
            Verdict::Allow
        },
        action: Action::from_u8(action)?,
        rule: rule(),
        enforced_by: Layer::from_u8(layer)?,
    })
}

/// A deny decision the kernel took on an exec or open (none when nothing matched).
fn kernel_decision(
    v: &KernelVerdict,
    category: &str,
    rule: &dyn Fn(u32, &str) -> String,
) -> Option<DecisionInfo> {
    if v.denied == 0 {
        return None;
    }
    decision(v.denied, v.action, v.enforced_by, || {
        rule(v.rule_id, category)
    })
}

/// Kernel records built in memory, for the tests of the modules that consume them.
#[cfg(test)]
pub(crate) mod test_records {
    use agent_common::event::{EventHeader, ExecEvent, KPath, PATH_MAX};

    use super::*;

    /// A kernel path: components in reverse order, each followed by `/`
    /// (`"hostname/etc/"` is `/etc/hostname`).
    pub fn kpath(s: &str, flags: u16) -> KPath {
        let mut p = KPath {
            len: s.len() as u16,
            flags,
            _pad: 0,
            bytes: [0; PATH_MAX],
        };
        p.bytes[..s.len()].copy_from_slice(s.as_bytes());
        p
    }

    /// A header of `cat`, tgid 10, in session 0xabc.
    pub fn hdr(kind: EventKind) -> EventHeader {
        header_of(kind, 0xabc, 10)
    }

    pub fn header_of(kind: EventKind, session_id: u64, tgid: u32) -> EventHeader {
        let mut comm = [0u8; COMM_LEN];
        comm[..3].copy_from_slice(b"cat");
        EventHeader {
            kind: kind as u32,
            _reserved: 0,
            ktime_ns: 5_000_000_000,
            session_id,
            cgroup_id: 7,
            pid: tgid + 1,
            tgid,
            ppid: 9,
            uid: 1000,
            gid: 1000,
            _pad: 0,
            comm,
        }
    }

    /// An exec of `exe` (a plain absolute path) in `cwd`, with the kernel's `verdict`.
    pub fn exec(h: EventHeader, exe: &str, cwd: &str, verdict: KernelVerdict) -> ExecEvent {
        let rev = |p: &str| {
            let mut parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
            parts.reverse();
            parts.iter().map(|c| format!("{c}/")).collect::<String>()
        };
        ExecEvent {
            header: h,
            exe: kpath(&rev(exe), 0),
            cwd: kpath(&rev(cwd), 0),
            argv_len: 0,
            argv_flags: 0,
            verdict,
            argv: [0; agent_common::event::ARGV_MAX],
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use agent_common::event::{
        ConnectEvent, ForkEvent, OpenEvent, OpenSyscall, PATH_FLAG_RAW, PATH_FLAG_TRUNCATED,
        decode::DecodeError,
    };

    use super::{
        test_records::{hdr, kpath},
        *,
    };

    fn bytes_of<T>(v: &T, len: usize) -> Vec<u8> {
        // SAFETY: reading the bytes of a repr(C) value.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), len) }.to_vec()
    }

    #[test]
    fn reversed_components_become_an_absolute_path() {
        assert_eq!(path_text(&kpath("hostname/etc/", 0)).path, "/etc/hostname");
        assert_eq!(path_text(&kpath("", 0)).path, "/");
        let t = path_text(&kpath("c/b/", PATH_FLAG_TRUNCATED));
        assert_eq!(
            (t.path.as_str(), t.truncated, t.resolved),
            ("/b/c", true, true)
        );
        let raw = path_text(&kpath("../x/y", PATH_FLAG_RAW));
        assert_eq!((raw.path.as_str(), raw.resolved), ("../x/y", false));
    }

    #[test]
    fn open_record_sent_without_path_tail_decodes() {
        let ev = OpenEvent {
            header: hdr(EventKind::Open),
            syscall: OpenSyscall::Openat as u32,
            flags: 0o2000000 | 0o100 | 1,
            ret: 3,
            verdict: KernelVerdict::default(),
            dev: 0,
            _pad: 0,
            ino: 0,
            path: kpath("hostname/etc/", 0),
        };
        let wire = bytes_of(&ev, OpenEvent::FIXED_LEN + 13);
        let Raw::Open(got) = decode(&wire).expect("decode") else {
            panic!("not open")
        };
        assert_eq!(*got, ev);
        let e = Event::from_raw(
            &Raw::Open(got),
            &Clock { offset_ns: 0 },
            SessionRef::default(),
            &|_, _| String::new(),
        );
        let open = e.open().expect("open body");
        assert_eq!(open.path, "/etc/hostname");
        assert_eq!(open.flags, ["O_WRONLY", "O_CREAT", "O_CLOEXEC"]);
        assert_eq!(e.process.expect("process").comm, "cat");
        assert_eq!(e.time, "1970-01-01T00:00:05.000000000Z");
    }

    /// A reused buffer still holds a longer earlier path past the new record's end: the
    /// decoded event is the new record's, whatever the tail holds.
    #[test]
    fn a_record_of_counted_repeats_decodes_into_an_open_that_says_how_many() {
        let ev = agent_common::event::OpenRepeatEvent {
            header: hdr(EventKind::OpenRepeats),
            syscall: OpenSyscall::Openat as u32,
            flags: 0o2000000,
            dev: 8,
            _pad: 0,
            ino: 77,
            count: 1234,
            first_ns: 5,
            last_ns: 9,
        };
        let wire = bytes_of(&ev, core::mem::size_of_val(&ev));
        let got = decode(&wire).expect("decode");
        assert_eq!(got, Raw::OpenRepeats(ev));
        let e = Event::from_raw(
            &got,
            &Clock { offset_ns: 0 },
            SessionRef::default(),
            &|_, _| String::new(),
        );
        let o = e.open().expect("an open event");
        assert_eq!(e.body.kind(), EventKind::Open);
        assert_eq!(o.repeats.as_ref().map(|r| r.count), Some(1234));
        assert_eq!(o.flags, ["O_RDONLY", "O_CLOEXEC"]);
        assert_eq!((o.result, e.decision.is_none()), (0, true));
        assert_eq!(
            e.time,
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_nanos(9))
        );
        // A short record is refused, not read past its end.
        assert!(decode(&wire[..wire.len() - 1]).is_err());
    }

    #[test]
    fn times_are_written_as_humantime_writes_them() {
        // The epoch, leap days, century and 400-year rules, and pseudo-random instants
        // up to 2200 with every nanosecond digit.
        let mut t: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut instants = vec![
            (0, 0),
            (951_782_400, 0),
            (951_868_799, 999_999_999),
            (4_107_542_400, 1),
            (1_796_400_046, 374_709_733),
        ];
        for _ in 0..20_000 {
            t = t.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            instants.push((t % 7_258_118_400, (t >> 20) as u32 % 1_000_000_000));
        }
        for (s, n) in instants {
            let at = SystemTime::UNIX_EPOCH + Duration::new(s, n);
            assert_eq!(
                rfc3339(at),
                humantime::format_rfc3339_nanos(at).to_string(),
                "{s}.{n}"
            );
        }
    }

    #[test]
    fn reused_buffers_decode_like_fresh_ones() {
        let open = |path: &str, flags: u16, ret: i64| OpenEvent {
            header: hdr(EventKind::Open),
            syscall: OpenSyscall::Openat as u32,
            flags: 0,
            ret,
            verdict: KernelVerdict::default(),
            dev: 0,
            _pad: 0,
            ino: 0,
            path: kpath(path, flags),
        };
        let long = open("a-long-file-name/some/directories/", 0, 3);
        let short = open("other/b", PATH_FLAG_RAW, -13);
        let mut spare = Spare::default();
        let clock = Clock { offset_ns: 0 };
        let text = |raw: Raw, spare: &mut Spare| {
            let e = Event::from_raw(&raw, &clock, SessionRef::default(), &|_, _| String::new());
            spare.keep(raw);
            let o = e.open().expect("open");
            (o.path.clone(), o.path_resolved, o.result)
        };
        for ev in [&long, &short, &long, &short] {
            let wire = bytes_of(ev, OpenEvent::FIXED_LEN + usize::from(ev.path.len));
            let fresh = text(decode(&wire).unwrap(), &mut Spare::default());
            let reused = text(decode_reusing(&wire, &mut spare).unwrap(), &mut spare);
            assert_eq!(fresh, reused);
        }
        assert!(spare.holds_open());
        let wire = bytes_of(&short, OpenEvent::FIXED_LEN + 7);
        let got = text(decode_reusing(&wire, &mut spare).unwrap(), &mut spare);
        assert_eq!(got, ("other/b".to_owned(), false, -13));
        // A short record is still an error, reused buffer or not.
        assert!(decode_reusing(&wire[..20], &mut spare).is_err());
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        let ev = ForkEvent {
            header: hdr(EventKind::Fork),
            child_tgid: 12,
            _pad: 0,
        };
        assert!(matches!(
            decode(&bytes_of(&ev, 40)),
            Err(DecodeError::Short { .. })
        ));
        let mut bad = ev;
        bad.header.kind = 99;
        assert_eq!(
            decode(&bytes_of(&bad, 80)),
            Err(DecodeError::UnknownKind(99))
        );
        assert!(matches!(
            decode(&bytes_of(&ev, 79)),
            Err(DecodeError::Short {
                kind: 3,
                len: 79,
                need: 80
            })
        ));
    }

    /// Every action and layer number the kernel can write decodes to its word; a number
    /// the vocabulary does not know fails the record (counted), with or without a reused
    /// buffer, and is never read as some default.
    #[test]
    fn decision_numbers_decode_to_the_vocabulary_or_fail() {
        let open = |action: u8, layer: u8| OpenEvent {
            header: hdr(EventKind::Open),
            syscall: OpenSyscall::Openat as u32,
            flags: 0,
            ret: -1,
            verdict: KernelVerdict {
                rule_id: 4,
                denied: 1,
                action,
                enforced_by: layer,
                _pad: 0,
            },
            dev: 0,
            _pad: 0,
            ino: 0,
            path: kpath("key/secret/", 0),
        };
        let clock = Clock { offset_ns: 0 };
        for a in Action::ALL {
            for l in Layer::ALL {
                let ev = open(*a as u8, *l as u8);
                let raw = decode(&bytes_of(&ev, OpenEvent::FIXED_LEN + 11)).expect("decode");
                let e = Event::from_raw(&raw, &clock, SessionRef::default(), &|id, c| {
                    format!("{c}:{id}")
                });
                let d = e.decision.expect("decision");
                assert_eq!(
                    (d.decision, d.action, d.enforced_by, d.rule.as_str()),
                    (Verdict::Deny, *a, *l, "files:4")
                );
            }
        }
        let mut spare = Spare::default();
        for (ev, field, value) in [(open(9, 0), "action", 9), (open(1, 77), "layer", 77)] {
            let wire = bytes_of(&ev, OpenEvent::FIXED_LEN + 11);
            let want = Err(DecodeError::UnknownValue {
                kind: EventKind::Open as u32,
                field,
                value,
            });
            assert_eq!(decode(&wire), want);
            assert_eq!(decode_reusing(&wire, &mut spare), want);
        }
    }

    /// A seccomp refusal seen at the call's exit: decoded, named, its argument shown as
    /// the int the kernel read, its rule and layer kept, and through JSON unchanged.
    #[test]
    fn syscall_decisions_decode_and_round_trip() {
        use agent_common::event::SyscallDecisionEvent;
        let ev = SyscallDecisionEvent {
            header: hdr(EventKind::SyscallDecision),
            nr: 62,
            rule_id: 5,
            ret: -1,
            arg: u64::from((-1i32) as u32),
            denied: 1,
            action: Action::Blocked as u8,
            enforced_by: Layer::Seccomp as u8,
            at_entry: 0,
            _pad: 0,
        };
        let raw = decode(&bytes_of(&ev, core::mem::size_of::<SyscallDecisionEvent>())).unwrap();
        let e = Event::from_raw(
            &raw,
            &Clock { offset_ns: 0 },
            SessionRef::default(),
            &|id, c| format!("{c}:{id}"),
        );
        let s = e.syscall().expect("syscall body");
        assert_eq!(
            (s.name.as_str(), s.nr, s.at.as_str(), s.result, s.arg),
            ("kill", 62, "exit", -1, Some(-1))
        );
        let d = e.decision.clone().unwrap();
        assert_eq!(
            (d.action, d.enforced_by, d.rule.as_str()),
            (Action::Blocked, Layer::Seccomp, "syscalls:5")
        );
        let line = serde_json::to_string(&e).unwrap();
        assert!(line.contains(r#""kind":"syscall_decision""#), "{line}");
        let back: Event = serde_json::from_str(&line).unwrap();
        assert_eq!(back.body, e.body);
        // An unconditional rule has no argument to show; an unknown number is named.
        let always = SyscallDecisionEvent {
            nr: 9999,
            arg: u64::MAX,
            at_entry: 1,
            ..ev
        };
        let raw = decode(&bytes_of(
            &always,
            core::mem::size_of::<SyscallDecisionEvent>(),
        ))
        .unwrap();
        let e = Event::from_raw(
            &raw,
            &Clock { offset_ns: 0 },
            SessionRef::default(),
            &|_, _| String::new(),
        );
        let s = e.syscall().unwrap();
        assert_eq!(
            (s.name.as_str(), s.at.as_str(), s.arg),
            ("syscall_9999", "entry", None)
        );
    }

    /// A line whose kind lacks its payload, or names no kind, is refused naming why.
    #[test]
    fn a_kind_without_its_payload_is_refused() {
        let line = |kind: &str| {
            format!(
                r#"{{"seq":1,"time":"t","kind":"{kind}","session":{{"id":"","name":"","profile":""}}}}"#
            )
        };
        let err = serde_json::from_str::<Event>(&line("exec")).unwrap_err();
        assert!(
            err.to_string()
                .contains("`exec` event without its `exec` object"),
            "{err}"
        );
        let err = serde_json::from_str::<Event>(&line("session_map_full")).unwrap_err();
        assert!(
            err.to_string().contains("without its `fork` object"),
            "{err}"
        );
        let err = serde_json::from_str::<Event>(&line("teleport")).unwrap_err();
        assert!(
            err.to_string().contains("unknown event kind `teleport`"),
            "{err}"
        );
        let ok: Event = serde_json::from_str(&line("session_end")).unwrap();
        assert_eq!(ok.body, Body::SessionEnd);
    }

    #[test]
    fn exec_argv_and_exit_status() {
        assert_eq!(argv(b"bash\0-c\0echo hi\0"), ["bash", "-c", "echo hi"]);
        assert!(argv(b"").is_empty());
        assert_eq!(ExitInfo::from_wait_status(7 << 8).code, Some(7));
        let killed = ExitInfo::from_wait_status(9);
        assert_eq!((killed.code, killed.signal), (None, Some(9)));
    }

    #[test]
    fn connect_addresses() {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let ev = ConnectEvent {
            header: hdr(EventKind::Connect),
            family: 2,
            port: 8080,
            fd: 3,
            ret: -111,
            addr,
        };
        let c = connect_info(&ev);
        assert_eq!(
            (c.address.as_str(), c.port, c.result),
            ("127.0.0.1", 8080, -111)
        );
        let v6 = ConnectEvent {
            family: 10,
            addr: Ipv6Addr::LOCALHOST.octets(),
            ..ev
        };
        assert_eq!(connect_info(&v6).address, "::1");
    }
}
