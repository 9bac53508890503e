//! Reading the audit store: filters, records with their execution context, lineage.

use std::{collections::HashMap, net::IpAddr, time::SystemTime};

use agent_common::event::EventKind;
use anyhow::{Context as _, Result, bail};
use rusqlite::{Connection, Row, types::Value};
use serde::Serialize;

use super::records::SessionRecord;
use crate::{
    event::{
        Body, ConnectInfo, DecisionInfo, Event, ExecInfo, ExitInfo, ForkInfo, LossInfo, NetInfo,
        OpenInfo, ProcessInfo, SessionRef, SyscallInfo,
    },
    policy::net::Cidr,
};

/// What `audit query` (and `export`) select. Every field narrows the result.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Session id or name.
    pub session: Option<String>,
    /// The agent: its profile's name.
    pub agent: Option<String>,
    /// Business or technical owner of the profile, or the principal's user name.
    pub owner: Option<String>,
    /// Nanoseconds since the epoch, inclusive.
    pub since_ns: Option<i64>,
    /// Nanoseconds since the epoch, exclusive.
    pub until_ns: Option<i64>,
    /// `allow` or `deny`.
    pub decision: Option<String>,
    /// `allowed`, `blocked`, `killed` or `alerted`.
    pub action: Option<String>,
    pub path_prefix: Option<String>,
    /// Destination address or network.
    pub dest: Option<Cidr>,
    pub port: Option<u16>,
    /// Event kinds (`exec`, `open`, `connect`, `net_decision`, ...); empty: all.
    pub kinds: Vec<String>,
    pub limit: Option<usize>,
    /// One tool call (its id): the call, its result and every action under it.
    pub tool_call: Option<String>,
    /// Calls of this tool (its name), with their results and actions.
    pub tool: Option<String>,
}

/// A time bound: RFC 3339, or a duration meaning that long ago (`90m`, `2h`, `7d`).
pub fn parse_time(s: &str) -> Result<i64> {
    let t = match humantime::parse_rfc3339_weak(s) {
        Ok(t) => t,
        Err(_) => {
            let d = humantime::parse_duration(s).with_context(|| {
                format!("`{s}` is neither an RFC 3339 time nor a duration like 2h or 7d")
            })?;
            SystemTime::now() - d
        }
    };
    Ok(t.duration_since(SystemTime::UNIX_EPOCH)?.as_nanos() as i64)
}

/// A session's execution context, as recorded at enrolment.
#[derive(Clone, Debug, Serialize)]
pub struct SessionContext {
    pub id: String,
    pub name: String,
    pub agent: String,
    pub profile: ProfileRef,
    pub owners: Owners,
    pub principal: Principal,
    pub enrolment: String,
    pub host: String,
    pub root_pid: u32,
    pub started: String,
    /// What `run` changed in the agent's environment, by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<serde_json::Value>,
    /// The `match:` selector that enrolled it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The container and pod it ran in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProfileRef {
    pub name: String,
    pub source: String,
    pub sha256: String,
    pub mode: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Owners {
    pub business: String,
    pub technical: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Principal {
    pub uid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl From<SessionRecord> for SessionContext {
    fn from(s: SessionRecord) -> Self {
        Self {
            id: s.session_id,
            name: s.name,
            agent: s.agent.clone(),
            profile: ProfileRef {
                name: s.agent,
                source: s.profile_source,
                sha256: s.profile_sha256,
                mode: s.mode,
            },
            owners: Owners {
                business: s.business_owner,
                technical: s.technical_owner,
            },
            principal: Principal {
                uid: s.principal_uid,
                user: s.principal_user,
            },
            enrolment: s.enrolment,
            host: s.host,
            root_pid: s.root_pid,
            started: s.time,
            environment: s
                .environment
                .as_deref()
                .and_then(|e| serde_json::from_str(e).ok()),
            selector: s.selector,
            container: s
                .container
                .as_deref()
                .and_then(|c| serde_json::from_str(c).ok()),
        }
    }
}

/// A session's totals: when it ended, how many actions, denials by what was done.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub ended: Option<String>,
    pub actions: u64,
    pub denied: Vec<(String, u64)>,
}

/// One process on the way from the acting process up to the session's root.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Ancestor {
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
}

/// An action with everything an incident review needs about it.
#[derive(Clone, Debug, Serialize)]
pub struct AuditRecord {
    /// Position in the audit chain.
    pub audit_seq: i64,
    #[serde(flatten)]
    pub event: Event,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<SessionContext>,
    /// The acting process first, the session's root last.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lineage: Vec<Ancestor>,
    /// How many identical actions this record stands for (opens repeated within one
    /// commit interval), and when the last of them happened.
    pub repeats: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_time: Option<String>,
}

impl AuditRecord {
    /// The event's one-line detail, with the repeat count when there is one.
    pub fn detail(&self) -> String {
        let d = crate::output::detail(&self.event);
        match (&self.last_time, self.repeats) {
            (Some(last), n) if n > 1 => format!("{d}  (×{n}, last at {last})"),
            _ => d,
        }
    }
}

/// A `processes` row.
#[derive(Clone, Debug)]
pub struct ProcRow {
    pub seq: i64,
    pub tgid: u32,
    pub ppid: u32,
    pub origin: String,
    pub exe: Option<String>,
    pub argv: Vec<String>,
}

/// Reads records and their context, caching sessions and process tables.
pub struct Reader<'c> {
    conn: &'c Connection,
    sessions: HashMap<String, Option<SessionRecord>>,
    processes: HashMap<String, Vec<ProcRow>>,
}

impl<'c> Reader<'c> {
    pub fn new(conn: &'c Connection) -> Self {
        Self {
            conn,
            sessions: HashMap::new(),
            processes: HashMap::new(),
        }
    }

    /// Totals of a session, whatever a timeline's filters show.
    pub fn summary(&self, session: &str) -> Result<Summary> {
        let ended = self
            .conn
            .query_row(
                "SELECT time FROM actions WHERE session_id = ?1 AND kind = 'session_end' \
                 ORDER BY seq DESC LIMIT 1",
                [session],
                |r| r.get(0),
            )
            .ok();
        let actions: i64 = self.conn.query_row(
            "SELECT count(*) FROM actions WHERE session_id = ?1",
            [session],
            |r| r.get(0),
        )?;
        let mut stmt = self.conn.prepare(
            "SELECT outcome, count(*) FROM actions WHERE session_id = ?1 AND decision = 'deny' \
             GROUP BY outcome ORDER BY outcome",
        )?;
        let denied = stmt
            .query_map([session], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Summary {
            ended,
            actions: actions as u64,
            denied,
        })
    }

    /// The session with this id or name (the newest of that name).
    pub fn find_session(&mut self, id_or_name: &str) -> Result<SessionRecord> {
        let id: Option<String> = self
            .conn
            .query_row(
                "SELECT session_id FROM sessions WHERE session_id = ?1 OR name = ?1 \
                 ORDER BY seq DESC LIMIT 1",
                [id_or_name],
                |r| r.get(0),
            )
            .ok();
        match id.and_then(|id| self.session(&id)) {
            Some(s) => Ok(s),
            None => bail!("no session `{id_or_name}` in the audit store"),
        }
    }

    pub fn session(&mut self, id: &str) -> Option<SessionRecord> {
        if let Some(s) = self.sessions.get(id) {
            return s.clone();
        }
        let s = read_session(self.conn, id);
        self.sessions.insert(id.to_owned(), s.clone());
        s
    }

    /// Every process row of a session, in chain order.
    pub fn processes(&mut self, session: &str) -> Result<&[ProcRow]> {
        if !self.processes.contains_key(session) {
            let mut stmt = self.conn.prepare(
                "SELECT seq, tgid, ppid, origin, exe, argv FROM processes \
                 WHERE session_id = ?1 ORDER BY seq",
            )?;
            let rows = stmt
                .query_map([session], |r| {
                    Ok(ProcRow {
                        seq: r.get(0)?,
                        tgid: r.get(1)?,
                        ppid: r.get(2)?,
                        origin: r.get(3)?,
                        exe: r.get(4)?,
                        argv: json_list(r.get::<_, Option<String>>(5)?),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            self.processes.insert(session.to_owned(), rows);
        }
        Ok(&self.processes[session])
    }

    /// The chain of processes from `tgid` (as it was at record `seq`) up to the root.
    pub fn lineage(&mut self, session: &str, tgid: u32, seq: i64) -> Result<Vec<Ancestor>> {
        let root = self.session(session).map(|s| s.root_pid);
        let rows = self.processes(session)?;
        let latest =
            |tgid: u32, seq: i64| rows.iter().rev().find(|r| r.tgid == tgid && r.seq <= seq);
        let mut out = Vec::new();
        let mut cur = (tgid, seq);
        for _ in 0..64 {
            let Some(row) = latest(cur.0, cur.1) else {
                out.push(Ancestor {
                    pid: cur.0,
                    exe: None,
                    argv: Vec::new(),
                });
                break;
            };
            // A forked process runs its parent's image until it executes its own.
            let mut image = row;
            for _ in 0..64 {
                if image.origin != "fork" {
                    break;
                }
                match latest(image.ppid, image.seq) {
                    Some(p) => image = p,
                    None => break,
                }
            }
            out.push(Ancestor {
                pid: cur.0,
                exe: image.exe.clone().or_else(|| row.exe.clone()),
                argv: image.argv.clone(),
            });
            if Some(cur.0) == root || row.origin == "root" {
                break;
            }
            cur = (row.ppid, row.seq);
        }
        Ok(out)
    }

    /// Records matching `f`, in chain order.
    // Long: one SQL clause per filter field.
    pub fn query(&mut self, f: &Filter, with_lineage: bool) -> Result<Vec<AuditRecord>> {
        let mut sql = String::from(
            "SELECT a.* FROM actions a \
             LEFT JOIN sessions s ON s.session_id = a.session_id WHERE 1",
        );
        let mut params: Vec<Value> = Vec::new();
        let mut bind = |sql: &mut String, clause: &str, v: Value| {
            params.push(v);
            sql.push_str(&clause.replace('?', &format!("?{}", params.len())));
        };
        if let Some(s) = &f.session {
            bind(
                &mut sql,
                " AND (a.session_id = ? OR s.name = ?)",
                Value::Text(s.clone()),
            );
        }
        if let Some(a) = &f.agent {
            bind(&mut sql, " AND s.agent = ?", Value::Text(a.clone()));
        }
        if let Some(o) = &f.owner {
            bind(
                &mut sql,
                " AND (s.business_owner = ? OR s.technical_owner = ? OR s.principal_user = ?)",
                Value::Text(o.clone()),
            );
        }
        if let Some(t) = f.since_ns {
            bind(&mut sql, " AND a.time_ns >= ?", Value::Integer(t));
        }
        if let Some(t) = f.until_ns {
            bind(&mut sql, " AND a.time_ns < ?", Value::Integer(t));
        }
        if let Some(d) = &f.decision {
            bind(&mut sql, " AND a.decision = ?", Value::Text(d.clone()));
        }
        if let Some(a) = &f.action {
            bind(&mut sql, " AND a.outcome = ?", Value::Text(a.clone()));
        }
        if let Some(p) = &f.path_prefix {
            bind(
                &mut sql,
                " AND substr(a.path, 1, length(?)) = ?",
                Value::Text(p.clone()),
            );
        }
        if let Some(p) = f.port {
            bind(&mut sql, " AND a.port = ?", Value::Integer(p.into()));
        }
        if f.dest.is_some() {
            sql.push_str(" AND a.address IS NOT NULL");
        }
        if let Some(id) = &f.tool_call {
            bind(&mut sql, " AND a.tool_call = ?", Value::Text(id.clone()));
        }
        if let Some(tool) = &f.tool {
            bind(
                &mut sql,
                " AND a.tool_call IN (SELECT c.tool_call FROM actions c \
                 WHERE c.kind = 'tool_call' AND c.op = ?)",
                Value::Text(tool.clone()),
            );
        }
        if !f.kinds.is_empty() {
            sql.push_str(" AND a.kind IN (");
            for (i, k) in f.kinds.iter().enumerate() {
                if i > 0 {
                    sql.push(',');
                }
                bind(&mut sql, "?", Value::Text(k.clone()));
            }
            sql.push(')');
        }
        sql.push_str(" ORDER BY a.seq");
        let mut stmt = self.conn.prepare(&sql)?;
        let cols = Columns::of(&stmt);
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            // A row this build cannot read back (an edited or foreign word) is named and
            // passed over: the rest of the trail stays readable, and `audit verify`
            // names the edit.
            let (seq, event) = match event_from_row(r, &cols) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("audit: record skipped: {e:#}");
                    continue;
                }
            };
            let repeats = r.get::<_, i64>(cols.at("repeats")?)? as u64;
            let last_time = r
                .get::<_, Option<i64>>(cols.at("last_time_ns")?)?
                .map(time_text);
            if let Some(net) = &f.dest {
                let ip = event
                    .net()
                    .map(|n| n.address.as_str())
                    .or(event.connect().map(|c| c.address.as_str()))
                    .and_then(|a| a.parse::<IpAddr>().ok());
                if !ip.is_some_and(|ip| net.contains(ip)) {
                    continue;
                }
            }
            out.push((seq, event, repeats, last_time));
            if f.limit.is_some_and(|l| out.len() >= l) {
                break;
            }
        }
        drop(rows);
        drop(stmt);
        let mut records = Vec::with_capacity(out.len());
        for (seq, mut event, repeats, last_time) in out {
            let sid = event.session.id.clone();
            let context = if sid.is_empty() {
                None
            } else {
                self.session(&sid).map(SessionContext::from)
            };
            if let Some(c) = &context {
                event.session.name = c.name.clone();
                event.session.profile = c.agent.clone();
            }
            let lineage = match (&event.process, with_lineage && !sid.is_empty()) {
                (Some(p), true) => self.lineage(&sid, p.tgid, seq)?,
                _ => Vec::new(),
            };
            records.push(AuditRecord {
                audit_seq: seq,
                event,
                context,
                lineage,
                repeats,
                last_time,
            });
        }
        Ok(records)
    }
}

/// The session row of `id`, if it is stored (yet).
pub fn read_session(conn: &Connection, id: &str) -> Option<SessionRecord> {
    conn.query_row(
        "SELECT session_id, name, agent, profile_source, profile_sha256, mode, \
             business_owner, technical_owner, principal_uid, principal_user, enrolment, \
             host, root_pid, time_ns, time, environment, selector, container FROM sessions \
             WHERE session_id = ?1",
        [id],
        |r| {
            Ok(SessionRecord {
                session_id: r.get(0)?,
                name: r.get(1)?,
                agent: r.get(2)?,
                profile_source: r.get(3)?,
                profile_sha256: r.get(4)?,
                mode: r.get(5)?,
                business_owner: r.get(6)?,
                technical_owner: r.get(7)?,
                principal_uid: r.get(8)?,
                principal_user: r.get(9)?,
                enrolment: r.get(10)?,
                host: r.get(11)?,
                root_pid: r.get(12)?,
                time_ns: r.get(13)?,
                time: r.get(14)?,
                environment: r.get(15)?,
                selector: r.get(16)?,
                container: r.get(17)?,
            })
        },
    )
    .ok()
}

/// The positions of a statement's columns by name, read once per query. rusqlite finds
/// a column by name by comparing it with every column's name, on every call: some twenty
/// calls a row made that the drift analyser's largest cost (`strlen` and
/// `sqlite3_column_name` were 15% of the daemon's samples under a tracked exec storm).
pub(crate) struct Columns(HashMap<String, usize>);

impl Columns {
    pub(crate) fn of(stmt: &rusqlite::Statement<'_>) -> Self {
        let mut at = HashMap::new();
        for (i, n) in stmt.column_names().enumerate() {
            // The first of two columns of one name, case aside, as rusqlite finds it.
            at.entry(n.to_ascii_lowercase()).or_insert(i);
        }
        Self(at)
    }

    pub(crate) fn at(&self, name: &str) -> rusqlite::Result<usize> {
        self.0
            .get(name)
            .copied()
            .ok_or_else(|| rusqlite::Error::InvalidColumnName(name.to_owned()))
    }
}

/// An action as stored: its row's `seq`, its event, and how many actions the row
/// stands for (`repeats`).
pub type Stored = (i64, Event, u64);

/// The events of the `actions` rows `WHERE clause` selects (`a.` names the table; the
/// clause says the order and any limit): `(seq, event, repeats)`. A row this build cannot read back is counted in the
/// second value and passed over.
pub fn events_where(
    conn: &Connection,
    clause: &str,
    params: impl rusqlite::Params,
) -> Result<(Vec<Stored>, u64)> {
    let mut stmt = conn.prepare_cached(&format!("SELECT a.* FROM actions a WHERE {clause}"))?;
    let cols = Columns::of(&stmt);
    let repeats = cols.at("repeats")?;
    let mut rows = stmt.query(params)?;
    let (mut out, mut unreadable) = (Vec::new(), 0);
    while let Some(r) = rows.next()? {
        match event_from_row(r, &cols) {
            Ok((seq, ev)) => out.push((seq, ev, r.get::<_, i64>(repeats)?.max(1) as u64)),
            Err(_) => unreadable += 1,
        }
    }
    Ok((out, unreadable))
}

/// RFC 3339 text of a stored `time_ns`.
fn time_text(ns: i64) -> String {
    crate::event::rfc3339(
        SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(ns.max(0) as u64),
    )
}

/// The agent's report a prompt or tool row keeps whole in `extra.agent`.
fn agent_report<T: serde::de::DeserializeOwned>(extra: &serde_json::Value, seq: i64) -> Result<T> {
    serde_json::from_value(extra["agent"].clone())
        .map_err(|e| anyhow::anyhow!("row {seq}: the agent's report in `extra`: {e}"))
}

fn json_list(s: Option<String>) -> Vec<String> {
    s.and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

/// Rebuilds the event an `actions` row (joined with its decision) was made from.
// Long: one line per column read back, and one arm per kind (exhaustive).
fn event_from_row(r: &Row<'_>, cols: &Columns) -> Result<(i64, Event)> {
    let get_s = |c: &str| r.get::<_, Option<String>>(cols.at(c)?);
    let get_i = |c: &str| r.get::<_, Option<i64>>(cols.at(c)?);
    let seq: i64 = r.get(cols.at("seq")?)?;
    let extra: serde_json::Value = get_s("extra")?
        .and_then(|e| serde_json::from_str(&e).ok())
        .unwrap_or_default();
    let x_bool = |k: &str| extra[k].as_bool().unwrap_or(false);
    let x_str = |k: &str| extra[k].as_str().unwrap_or_default().to_owned();
    let sid = get_s("session_id")?.unwrap_or_default();
    let kind_name: String = r.get(cols.at("kind")?)?;
    let kind = EventKind::from_name(&kind_name)
        .ok_or_else(|| anyhow::anyhow!("row {seq}: unknown kind `{kind_name}`"))?;
    let path = get_s("path")?;
    let result = get_i("result")?.unwrap_or(0);
    let child = || ForkInfo {
        child_tgid: extra["child_tgid"].as_u64().unwrap_or(0) as u32,
    };
    let body = match kind {
        EventKind::Exec => Body::Exec(ExecInfo {
            path: path.unwrap_or_default(),
            path_truncated: x_bool("path_truncated"),
            argv: json_list(get_s("argv")?),
            argv_truncated: x_bool("argv_truncated"),
            cwd: get_s("cwd")?.unwrap_or_default(),
        }),
        EventKind::Open => {
            let flags_raw = get_i("flags")?.unwrap_or(0) as u32;
            Body::Open(OpenInfo {
                syscall: get_s("op")?.unwrap_or_default().into(),
                path: path.unwrap_or_default(),
                path_resolved: get_i("path_resolved")? == Some(1),
                path_truncated: x_bool("path_truncated"),
                flags: crate::event::open_flag_names(flags_raw),
                flags_raw,
                result,
                repeats: extra["repeats"]
                    .as_u64()
                    .map(|count| crate::event::Repeats {
                        count,
                        first: x_str("repeats_first"),
                    }),
            })
        }
        EventKind::Connect => Body::Connect(ConnectInfo {
            family: x_str("family"),
            address: get_s("address")?.unwrap_or_default(),
            port: get_i("port")?.unwrap_or(0) as u16,
            fd: extra["fd"].as_i64().unwrap_or(-1) as i32,
            result,
        }),
        EventKind::NetDecision => Body::NetDecision(NetInfo {
            op: get_s("op")?.unwrap_or_default(),
            protocol: get_s("protocol")?.unwrap_or_default(),
            family: x_str("family"),
            address: get_s("address")?.unwrap_or_default(),
            port: get_i("port")?.unwrap_or(0) as u16,
        }),
        EventKind::SyscallDecision => Body::SyscallDecision(SyscallInfo {
            name: get_s("op")?.unwrap_or_default(),
            nr: extra["nr"].as_u64().unwrap_or(0) as u32,
            at: x_str("at"),
            result,
            arg: extra["arg"].as_i64(),
        }),
        EventKind::Exit => Body::Exit(ExitInfo {
            code: get_i("exit_code")?.map(|c| c as i32),
            signal: get_i("exit_signal")?.map(|c| c as i32),
            core_dumped: x_bool("core_dumped"),
        }),
        EventKind::Fork => Body::Fork(child()),
        EventKind::SessionMapFull => Body::SessionMapFull(child()),
        EventKind::Loss => Body::Loss(LossInfo {
            counter: x_str("counter"),
            delta: extra["delta"].as_u64().unwrap_or(0),
            total: extra["total"].as_u64().unwrap_or(0),
        }),
        EventKind::SessionStart => Body::SessionStart,
        EventKind::SessionEnd => Body::SessionEnd,
        EventKind::Prompt => Body::Prompt(agent_report(&extra, seq)?),
        EventKind::ToolCall => Body::ToolCall(agent_report(&extra, seq)?),
        EventKind::ToolResult => Body::ToolResult(agent_report(&extra, seq)?),
        EventKind::Approval => Body::Approval(
            serde_json::from_value(extra["approval"].clone())
                .map_err(|e| anyhow::anyhow!("row {seq}: the approval in `extra`: {e}"))?,
        ),
        EventKind::UnmanagedAgent => Body::UnmanagedAgent(crate::event::UnmanagedInfo {
            agent: get_s("op")?.unwrap_or_default(),
            matched: x_str("matched"),
            argv: json_list(get_s("argv")?),
        }),
        EventKind::Drift => Body::Drift(Box::new(
            serde_json::from_value(extra["drift"].clone())
                .map_err(|e| anyhow::anyhow!("row {seq}: the finding in `extra`: {e}"))?,
        )),
        // Written as the session's `session_start`.
        EventKind::Enrolment | EventKind::CgroupCreated | EventKind::OpenRepeats => {
            anyhow::bail!("row {seq}: `{kind}` is not a stored kind")
        }
    };
    let context = extra
        .get("context")
        .and_then(|c| serde_json::from_value(c.clone()).ok());
    let mut ev = Event::new(
        body,
        SystemTime::UNIX_EPOCH,
        SessionRef {
            id: sid,
            ..SessionRef::default()
        },
    );
    ev.seq = r.get::<_, i64>(cols.at("event_seq")?)? as u64;
    ev.context = context;
    ev.shadow = extra
        .get("shadow")
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .unwrap_or_default();
    let ns: i64 = r.get(cols.at("time_ns")?)?;
    ev.time_ns = ns;
    ev.time = time_text(ns);
    let u32_of = |v: Option<i64>| v.unwrap_or(0) as u32;
    if let Some(pid) = get_i("pid")? {
        ev.process = Some(ProcessInfo {
            pid: pid as u32,
            tgid: u32_of(get_i("tgid")?),
            ppid: u32_of(get_i("ppid")?),
            uid: u32_of(get_i("uid")?),
            user: get_s("user")?,
            gid: u32_of(get_i("gid")?),
            comm: get_s("comm")?.unwrap_or_default(),
            cgroup_id: 0,
            exe: get_s("exe")?,
        });
    }
    if let Some(decision) = get_s("decision")? {
        let word = |column: &str| -> Result<String> {
            get_s(column)?.ok_or_else(|| anyhow::anyhow!("row {seq}: a decision without {column}"))
        };
        let parse = |column: &str, text: String| anyhow::anyhow!("row {seq}: {column}: {text}");
        ev.decision = Some(DecisionInfo {
            decision: decision.parse().map_err(|e| parse("decision", e))?,
            action: word("outcome")?.parse().map_err(|e| parse("outcome", e))?,
            rule: get_s("rule")?.unwrap_or_default(),
            enforced_by: word("enforced_by")?
                .parse()
                .map_err(|e| parse("enforced_by", e))?,
        });
    }
    Ok((seq, ev))
}
