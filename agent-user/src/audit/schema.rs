//! The audit database's tables, created and migrated on open.
//!
//! Every chained table has `seq` (the record's position in the one chain that runs
//! through all of them), its content columns, and `prev_hash`/`hash`. Tables are
//! `STRICT`, so a value reads back with the type it was written with and the hash
//! recomputed by `audit verify` covers exactly what was hashed at write time.

use anyhow::{Result, bail};
use rusqlite::Connection;

/// The schema version this build writes (`PRAGMA user_version`).
pub const VERSION: i64 = 5;

/// A chained table: its name and content columns, in hashing order.
#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [&'static str],
    /// The columns of the table's first version: those added later by a migration
    /// (after these) are hashed only where they hold a value, so the rows written
    /// before the migration still verify. A value set or removed later still breaks
    /// the row's hash (a NULL and a value never hash alike).
    pub first: usize,
}

pub const SESSIONS: Table = Table {
    name: "sessions",
    columns: &[
        "session_id",
        "name",
        "agent",
        "profile_source",
        "profile_sha256",
        "mode",
        "business_owner",
        "technical_owner",
        "principal_uid",
        "principal_user",
        "enrolment",
        "host",
        "root_pid",
        "time_ns",
        "time",
        // Version 3: what `run` changed in the agent's environment, by name.
        "environment",
        // Version 4: the `match:` selector that enrolled it, and its container.
        "selector",
        "container",
    ],
    first: 15,
};

pub const PROCESSES: Table = Table {
    name: "processes",
    columns: &[
        "session_id",
        "tgid",
        "ppid",
        "origin",
        "exe",
        "argv",
        "cwd",
        "uid",
        "user",
        "time_ns",
    ],
    first: 10,
};

pub const ACTIONS: Table = Table {
    name: "actions",
    columns: &[
        "event_seq",
        "time_ns",
        "session_id",
        "kind",
        "pid",
        "tgid",
        "ppid",
        "uid",
        "user",
        "gid",
        "comm",
        "exe",
        "path",
        "path_resolved",
        "argv",
        "cwd",
        "flags",
        "address",
        "port",
        "protocol",
        "op",
        "result",
        "exit_code",
        "exit_signal",
        "extra",
        "repeats",
        "last_time_ns",
        "decision",
        "outcome",
        "rule",
        "enforced_by",
        // Version 2: the tool call (its id) the action happened under, or the call a
        // `tool_call`/`tool_result` row is.
        "tool_call",
    ],
    first: 31,
};

pub const CHECKPOINTS: Table = Table {
    name: "checkpoints",
    columns: &["time_ns", "time", "kept_from", "anchor", "pruned", "reason"],
    first: 6,
};

/// Version 5: each agent's behaviour baseline as the drift analyser learned it from the
/// recorded sessions; a new row each time it grows (the latest row per agent and
/// principal is in force).
pub const BASELINES: Table = Table {
    name: "baselines",
    columns: &[
        "time_ns",
        "agent",
        "principal",
        "sessions",
        "through_seq",
        "content",
    ],
    first: 6,
};

pub const TABLES: [&Table; 5] = [&SESSIONS, &PROCESSES, &ACTIONS, &CHECKPOINTS, &BASELINES];

impl Table {
    pub fn by_name(name: &str) -> Option<&'static Table> {
        TABLES.into_iter().find(|t| t.name == name)
    }

    /// `INSERT` of one row: `seq`, the content columns, `prev_hash`, `hash`.
    pub fn insert_sql(&self) -> String {
        format!(
            "INSERT INTO {} (seq, {}, prev_hash, hash) VALUES ({})",
            self.name,
            self.columns.join(", "),
            vec!["?"; self.columns.len() + 3].join(", ")
        )
    }

    /// `SELECT` of every row in chain order, columns as in [`Table::insert_sql`].
    pub fn select_sql(&self) -> String {
        format!(
            "SELECT seq, {}, prev_hash, hash FROM {} ORDER BY seq",
            self.columns.join(", "),
            self.name
        )
    }
}

/// Version 1. Documented table by table in `docs/audit.md`.
const V1: &str = "
CREATE TABLE sessions (
    seq INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    name TEXT NOT NULL,
    agent TEXT NOT NULL,
    profile_source TEXT NOT NULL,
    profile_sha256 TEXT NOT NULL,
    mode TEXT NOT NULL,
    business_owner TEXT NOT NULL,
    technical_owner TEXT NOT NULL,
    principal_uid INTEGER NOT NULL,
    principal_user TEXT,
    enrolment TEXT NOT NULL,
    host TEXT NOT NULL,
    root_pid INTEGER NOT NULL,
    time_ns INTEGER NOT NULL,
    time TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
) STRICT;
CREATE INDEX sessions_by_id ON sessions (session_id);
CREATE INDEX sessions_by_name ON sessions (name);

CREATE TABLE processes (
    seq INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    tgid INTEGER NOT NULL,
    ppid INTEGER NOT NULL,
    origin TEXT NOT NULL,
    exe TEXT,
    argv TEXT,
    cwd TEXT,
    uid INTEGER,
    user TEXT,
    time_ns INTEGER NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
) STRICT;
CREATE INDEX processes_by_tgid ON processes (session_id, tgid, seq);

CREATE TABLE actions (
    seq INTEGER PRIMARY KEY,
    event_seq INTEGER NOT NULL,
    time_ns INTEGER NOT NULL,
    session_id TEXT,
    kind TEXT NOT NULL,
    pid INTEGER,
    tgid INTEGER,
    ppid INTEGER,
    uid INTEGER,
    user TEXT,
    gid INTEGER,
    comm TEXT,
    exe TEXT,
    path TEXT,
    path_resolved INTEGER,
    argv TEXT,
    cwd TEXT,
    flags INTEGER,
    address TEXT,
    port INTEGER,
    protocol TEXT,
    op TEXT,
    result INTEGER,
    exit_code INTEGER,
    exit_signal INTEGER,
    extra TEXT,
    repeats INTEGER NOT NULL,
    last_time_ns INTEGER,
    decision TEXT,
    outcome TEXT,
    rule TEXT,
    enforced_by TEXT,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
) STRICT;
-- Few indexes: each one is paid on every insert, at the rate the agents act.
CREATE INDEX actions_by_session ON actions (session_id, seq);
CREATE INDEX actions_by_time ON actions (time_ns);
CREATE INDEX actions_denied ON actions (seq) WHERE decision = 'deny';

-- The policy decisions: the actions that have one.
CREATE VIEW decisions AS
SELECT seq AS action_seq, time_ns, session_id, kind, decision, outcome AS action, rule,
       enforced_by
FROM actions WHERE decision IS NOT NULL;

CREATE TABLE checkpoints (
    seq INTEGER PRIMARY KEY,
    time_ns INTEGER NOT NULL,
    time TEXT NOT NULL,
    kept_from INTEGER NOT NULL,
    anchor BLOB NOT NULL,
    pruned INTEGER NOT NULL,
    reason TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
) STRICT;

-- One row per action with its decision and its session's context: what `audit query`
-- reads, and the easiest place to start a query by hand.
CREATE VIEW audit_log AS
SELECT a.seq, strftime('%Y-%m-%dT%H:%M:%fZ', a.time_ns / 1e9, 'unixepoch') AS time,
       a.time_ns, a.session_id, s.name AS session_name, s.agent,
       s.profile_sha256, s.business_owner, s.technical_owner, s.principal_uid,
       s.principal_user, s.enrolment, s.host,
       a.kind, a.pid, a.tgid, a.ppid, a.uid, a.user, a.comm, a.exe, a.path, a.argv, a.cwd,
       a.flags, a.address, a.port, a.protocol, a.op, a.result, a.exit_code, a.exit_signal,
       a.repeats, a.decision, a.outcome AS action, a.rule, a.enforced_by
FROM actions a
LEFT JOIN sessions s ON s.session_id = a.session_id;
";

/// Version 2: agent context. Prompts and tool calls are `actions` rows of their own
/// kinds (`prompt`, `tool_call`, `tool_result`; the agent's report in `extra.agent`),
/// and every action names the tool call it happened under.
const V2: &str = "
ALTER TABLE actions ADD COLUMN tool_call TEXT;
CREATE INDEX actions_by_tool_call ON actions (tool_call) WHERE tool_call IS NOT NULL;
DROP VIEW IF EXISTS audit_log;
CREATE VIEW audit_log AS
SELECT a.seq, strftime('%Y-%m-%dT%H:%M:%fZ', a.time_ns / 1e9, 'unixepoch') AS time,
       a.time_ns, a.session_id, s.name AS session_name, s.agent,
       s.profile_sha256, s.business_owner, s.technical_owner, s.principal_uid,
       s.principal_user, s.enrolment, s.host,
       a.kind, a.pid, a.tgid, a.ppid, a.uid, a.user, a.comm, a.exe, a.path, a.argv, a.cwd,
       a.flags, a.address, a.port, a.protocol, a.op, a.result, a.exit_code, a.exit_signal,
       a.repeats, a.decision, a.outcome AS action, a.rule, a.enforced_by, a.tool_call
FROM actions a
LEFT JOIN sessions s ON s.session_id = a.session_id;
";

/// Version 3: the environment a `run` session's agent started with, as changed by its
/// profile (names only), in the session's identity context.
const V3: &str = "ALTER TABLE sessions ADD COLUMN environment TEXT;";

/// Version 4: the selector (`file:line (match[i])`) of a session the kernel enrolled.
/// And the container (with its pod) the session ran in, as JSON; the `audit_log` view
/// names every action's container and pod (`namespace/pod/container`).
const V4: &str = "ALTER TABLE sessions ADD COLUMN selector TEXT;
ALTER TABLE sessions ADD COLUMN container TEXT;
DROP VIEW IF EXISTS audit_log;
CREATE VIEW audit_log AS
SELECT a.seq, strftime('%Y-%m-%dT%H:%M:%fZ', a.time_ns / 1e9, 'unixepoch') AS time,
       a.time_ns, a.session_id, s.name AS session_name, s.agent,
       s.profile_sha256, s.business_owner, s.technical_owner, s.principal_uid,
       s.principal_user, s.enrolment, s.host,
       a.kind, a.pid, a.tgid, a.ppid, a.uid, a.user, a.comm, a.exe, a.path, a.argv, a.cwd,
       a.flags, a.address, a.port, a.protocol, a.op, a.result, a.exit_code, a.exit_signal,
       a.repeats, a.decision, a.outcome AS action, a.rule, a.enforced_by, a.tool_call,
       s.selector,
       CASE WHEN json_extract(s.container, '$.pod_name') IS NOT NULL
            THEN json_extract(s.container, '$.pod_namespace') || '/' ||
                 json_extract(s.container, '$.pod_name') || '/' ||
                 coalesce(json_extract(s.container, '$.container_name'),
                          json_extract(s.container, '$.id'))
            ELSE json_extract(s.container, '$.runtime_namespace') || '/' ||
                 json_extract(s.container, '$.id')
       END AS container
FROM actions a
LEFT JOIN sessions s ON s.session_id = a.session_id;";

/// Version 5: behaviour baselines (`drift`). `principal` is NULL for the baseline of
/// every principal's sessions of the agent; `through_seq` is the last `session_end`
/// learned from; `content` the baseline (JSON, `drift::Baseline`).
const V5: &str = "
CREATE TABLE baselines (
    seq INTEGER PRIMARY KEY,
    time_ns INTEGER NOT NULL,
    agent TEXT NOT NULL,
    principal TEXT,
    sessions INTEGER NOT NULL,
    through_seq INTEGER NOT NULL,
    content TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
) STRICT;
CREATE INDEX baselines_by_agent ON baselines (agent, principal, seq);";

/// Brings a database opened for writing to [`VERSION`]; refuses a newer one.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > VERSION {
        bail!(
            "the audit database has schema version {version}, newer than this agentwarden \
             ({VERSION}); refusing to write to it"
        );
    }
    // Each step in its own transaction, recorded with the version it reached.
    for (to, sql) in [(1, V1), (2, V2), (3, V3), (4, V4), (5, V5)] {
        if version < to {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", to)?;
            tx.commit()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Rust column lists (what is hashed) match the tables (what is stored).
    #[test]
    fn column_lists_match_the_tables() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        for t in TABLES {
            let mut stmt = conn
                .prepare(&format!("SELECT name FROM pragma_table_info('{}')", t.name))
                .unwrap();
            let cols: Vec<String> = stmt
                .query_map([], |r| r.get(0))
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            // Columns a migration added come after `hash`.
            let mut want = vec!["seq".to_owned()];
            want.extend(t.columns[..t.first].iter().map(|c| (*c).to_owned()));
            want.extend(["prev_hash".to_owned(), "hash".to_owned()]);
            want.extend(t.columns[t.first..].iter().map(|c| (*c).to_owned()));
            assert_eq!(cols, want, "table {}", t.name);
        }
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", VERSION + 1)
            .unwrap();
        let e = migrate(&mut conn).unwrap_err().to_string();
        assert!(e.contains("newer than this agentwarden"), "{e}");
    }
}
