//! What the analyser reads from the audit store: actions after a point, a session's
//! actions and context, the baselines in force.

use anyhow::{Context as _, Result};
use rusqlite::Connection;

use super::baseline::{Baseline, Key};
use crate::audit::query::{self, Stored};

/// `(seq, event, repeats)` of the actions after `seq`, at most `limit`; and how many
/// rows could not be read back.
pub fn actions_after(conn: &Connection, seq: i64, limit: usize) -> Result<(Vec<Stored>, u64)> {
    query::events_where(
        conn,
        "a.seq > ?1 ORDER BY a.seq LIMIT ?2",
        rusqlite::params![seq, limit as i64],
    )
}

/// Every action of one session, in order.
pub fn session_actions(conn: &Connection, session: &str) -> Result<Vec<Stored>> {
    Ok(query::events_where(conn, "a.session_id = ?1 ORDER BY a.seq", [session])?.0)
}

/// A stored baseline: its row's `seq`, the last `session_end` it learned, and itself.
pub struct StoredBaseline {
    pub seq: i64,
    pub through_seq: i64,
    pub baseline: Baseline,
}

/// The newest stored baseline of each agent and principal.
pub fn baselines(conn: &Connection) -> Result<Vec<StoredBaseline>> {
    let mut stmt = conn.prepare(
        "SELECT b.seq, b.through_seq, b.content FROM baselines b \
         WHERE b.seq = (SELECT max(c.seq) FROM baselines c WHERE c.agent = b.agent \
                        AND c.principal IS b.principal) \
         ORDER BY b.agent, b.principal",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(seq, through_seq, content)| {
            let baseline: Baseline = serde_json::from_str(&content)
                .with_context(|| format!("baselines row seq={seq}: its content"))?;
            Ok(StoredBaseline {
                seq,
                through_seq,
                baseline,
            })
        })
        .collect()
}

/// The newest stored row of one baseline: its `seq` and how many sessions it holds.
pub fn baseline_row(conn: &Connection, key: &Key) -> Option<(i64, u64)> {
    conn.query_row(
        "SELECT seq, sessions FROM baselines WHERE agent = ?1 AND principal IS ?2 \
         ORDER BY seq DESC LIMIT 1",
        rusqlite::params![key.agent, key.principal],
        |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
    )
    .ok()
}

/// The last action's `seq` (0 for none).
pub fn last_seq(conn: &Connection) -> Result<i64> {
    Ok(
        conn.query_row("SELECT coalesce(max(seq), 0) FROM actions", [], |r| {
            r.get(0)
        })?,
    )
}

/// The `session_end` rows after `seq`: `(seq, session id)`.
pub fn ends_after(conn: &Connection, seq: i64) -> Result<Vec<(i64, String)>> {
    let mut stmt = conn.prepare(
        "SELECT seq, session_id FROM actions WHERE kind = 'session_end' AND seq > ?1 \
         AND session_id IS NOT NULL ORDER BY seq",
    )?;
    let rows = stmt
        .query_map([seq], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Sessions that drew a finding (their `drift` rows).
pub fn drifted(conn: &Connection, session: &str) -> bool {
    conn.query_row(
        "SELECT 1 FROM actions WHERE session_id = ?1 AND kind = 'drift' LIMIT 1",
        [session],
        |_| Ok(()),
    )
    .is_ok()
}
