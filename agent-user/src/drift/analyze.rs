//! The analyser: reads the audit store after its cursor, judges each session's actions
//! against its agent's baseline as they are recorded, judges each session whole at its
//! end, and learns the sessions that drew no finding into the baselines. The daemon runs
//! it on its own thread (`daemon::drift`); `agentwarden drift analyze` runs it over a
//! store from its start.

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
use rusqlite::Connection;

use super::{
    Anchors, Summary,
    baseline::{Baseline, Key},
    judge::{Config, Judge, Raised},
    observe, source, summarize,
};
use crate::{
    audit::{BaselineRecord, SessionRecord},
    event::{Body, DriftBaseline, DriftInfo},
    users::Users,
};

/// A finding with the session it is about.
#[derive(Clone, Debug)]
pub struct Found {
    pub session: SessionRecord,
    pub info: DriftInfo,
}

/// What one pass produced: findings to raise and baselines to store.
#[derive(Debug, Default)]
pub struct Output {
    pub findings: Vec<Found>,
    pub baselines: Vec<BaselineRecord>,
    /// Actions read.
    pub actions: u64,
}

/// Counts since the analyser started (`status`, metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub actions: u64,
    pub findings: u64,
    /// Finished sessions learned into baselines.
    pub learned: u64,
    /// Finished sessions not learned because they drew findings.
    pub withheld: u64,
    /// Actions of sessions with no baseline of enough sessions yet.
    pub unjudged: u64,
    /// Rows that could not be read back (edited, or of a newer build).
    pub unreadable: u64,
    /// Sessions judged live and forgotten before their end was read (more than
    /// [`LIVE_MAX`] at once, or their end never recorded): judged no further.
    pub forgotten: u64,
}

/// Sessions judged live at once; past it, the longest silent ones are forgotten.
pub const LIVE_MAX: usize = 10_000;

struct Held {
    b: Baseline,
    /// Its stored row (0: not stored yet).
    seq: i64,
}

struct Live {
    record: SessionRecord,
    home: Option<String>,
    anchors: Anchors,
    /// Its first program ran (and named the project).
    project_known: bool,
    summary: Summary,
    judge: Judge,
    /// The baseline its actions were last judged against.
    judged_by: Option<Key>,
    /// Its last action read.
    last_seq: i64,
}

pub struct Analyzer {
    pub cfg: Config,
    baselines: BTreeMap<Key, Held>,
    live: HashMap<String, Live>,
    /// The last action read.
    pub cursor: i64,
    pub stats: Stats,
    users: Users,
    /// Whether learned baselines are handed out to be stored (the daemon), or kept in
    /// memory only (`drift analyze` of a store it does not write).
    pub store_baselines: bool,
}

/// The principal a session's baselines are kept for: its user name, else its uid.
fn principal(r: &SessionRecord) -> String {
    r.principal_user
        .clone()
        .unwrap_or_else(|| format!("uid {}", r.principal_uid))
}

impl Analyzer {
    pub fn new(cfg: Config) -> Self {
        Self {
            cfg,
            baselines: BTreeMap::new(),
            live: HashMap::new(),
            cursor: 0,
            stats: Stats::default(),
            users: Users::default(),
            store_baselines: true,
        }
    }

    /// Picks up from a store the daemon writes: the baselines in force; judging starts
    /// after the last action; the sessions that ended after the newest baseline's last
    /// one and drew no finding are learned now.
    pub fn resume(&mut self, conn: &Connection) -> Result<Output> {
        let mut through = 0;
        for s in source::baselines(conn)? {
            through = through.max(s.through_seq);
            self.baselines.insert(
                s.baseline.key(),
                Held {
                    b: s.baseline,
                    seq: s.seq,
                },
            );
        }
        self.cursor = source::last_seq(conn)?;
        let mut out = Output::default();
        // One row per baseline that grew, however many sessions it learned.
        let mut dirty = Vec::new();
        let mut last = through;
        for (seq, sid) in source::ends_after(conn, through)? {
            if source::drifted(conn, &sid) {
                continue;
            }
            self.learn(conn, &sid, &mut dirty)?;
            last = seq;
        }
        dirty.sort();
        dirty.dedup();
        out.baselines = self.records(&dirty, last);
        Ok(out)
    }

    /// The baselines known, with their stored row.
    pub fn baselines(&self) -> impl Iterator<Item = (&Baseline, i64)> {
        self.baselines.values().map(|h| (&h.b, h.seq))
    }

    /// Reads at most `limit` actions after the cursor. Call again while `actions ==
    /// limit`.
    pub fn tick(&mut self, conn: &Connection, limit: usize) -> Result<Output> {
        let (rows, unreadable) = source::actions_after(conn, self.cursor, limit)?;
        self.stats.unreadable += unreadable;
        let mut out = Output {
            actions: rows.len() as u64,
            ..Output::default()
        };
        // The baselines grown in this pass, stored once each at its end.
        let mut dirty = Vec::new();
        let mut through = 0;
        for (seq, ev, repeats) in rows {
            self.cursor = seq;
            self.stats.actions += 1;
            let sid = ev.session.id.clone();
            if sid.is_empty() || matches!(ev.body, Body::Drift(_)) {
                continue;
            }
            if !self.live.contains_key(&sid) {
                let Some(record) = crate::audit::query::read_session(conn, &sid) else {
                    continue;
                };
                let home = self.users.home(record.principal_uid);
                self.live.insert(
                    sid.clone(),
                    Live {
                        record,
                        anchors: Anchors::new(None, home.as_deref()),
                        home,
                        project_known: false,
                        summary: Summary::default(),
                        judge: Judge::default(),
                        judged_by: None,
                        last_seq: seq,
                    },
                );
            }
            if matches!(ev.body, Body::SessionEnd) {
                if self.end(conn, &sid, &mut out, &mut dirty)? {
                    through = seq;
                }
                continue;
            }
            let key = self.judged_by(&self.live[&sid].record);
            let live = self.live.get_mut(&sid).expect("inserted above");
            live.last_seq = seq;
            if !live.project_known
                && let Some(x) = ev.exec()
            {
                live.project_known = true;
                live.anchors = Anchors::new(Some(&x.cwd), live.home.as_deref());
            }
            let Some(o) = observe(&ev, &live.anchors) else {
                continue;
            };
            live.summary.add(seq, repeats, &o);
            let Some(key) = key else {
                self.stats.unjudged += 1;
                continue;
            };
            live.judged_by = Some(key.clone());
            let held = &self.baselines[&key];
            if let Some(r) = live.judge.action(&self.cfg, &held.b, &live.summary, &o) {
                let record = live.record.clone();
                out.findings.push(self.found(conn, record, &key, r));
            }
        }
        dirty.sort();
        dirty.dedup();
        out.baselines = self.records(&dirty, through);
        self.stats.findings += out.findings.len() as u64;
        if self.live.len() > LIVE_MAX {
            let mut by_age: Vec<(i64, String)> = self
                .live
                .iter()
                .map(|(sid, l)| (l.last_seq, sid.clone()))
                .collect();
            by_age.sort_unstable();
            for (_, sid) in by_age.iter().take(self.live.len() - LIVE_MAX) {
                self.live.remove(sid);
                self.stats.forgotten += 1;
            }
        }
        Ok(out)
    }

    /// The baseline a session of `r` is judged against: its principal's, else its
    /// agent's, once one has the sessions it needs.
    fn judged_by(&self, r: &SessionRecord) -> Option<Key> {
        let keys = [
            Key {
                agent: r.agent.clone(),
                principal: Some(principal(r)),
            },
            Key {
                agent: r.agent.clone(),
                principal: None,
            },
        ];
        keys.into_iter().find(|k| {
            self.baselines
                .get(k)
                .is_some_and(|h| h.b.sessions >= self.cfg.min_sessions)
        })
    }

    /// A session ended: judged whole (from all its actions), then learned unless it
    /// drew a finding (true: learned).
    fn end(
        &mut self,
        conn: &Connection,
        sid: &str,
        out: &mut Output,
        dirty: &mut Vec<Key>,
    ) -> Result<bool> {
        let Some(mut live) = self.live.remove(sid) else {
            return Ok(false);
        };
        let actions = source::session_actions(conn, sid)?;
        let whole = summarize(
            actions.iter().map(|(s, e, r)| (*s, e, *r)),
            live.home.as_deref(),
        );
        if let Some(key) = live.judged_by.clone().or(self.judged_by(&live.record)) {
            let raised = live.judge.end(&self.cfg, &self.baselines[&key].b, &whole);
            for r in raised {
                let f = self.found(conn, live.record.clone(), &key, r);
                out.findings.push(f);
            }
        }
        if live.judge.findings > 0 {
            self.stats.withheld += 1;
            return Ok(false);
        }
        self.fold(&live.record, &whole, dirty);
        Ok(true)
    }

    /// Learns a finished session read whole from the store.
    fn learn(&mut self, conn: &Connection, sid: &str, dirty: &mut Vec<Key>) -> Result<()> {
        let Some(record) = crate::audit::query::read_session(conn, sid) else {
            return Ok(());
        };
        let home = self.users.home(record.principal_uid);
        let actions = source::session_actions(conn, sid)?;
        let whole = summarize(actions.iter().map(|(s, e, r)| (*s, e, *r)), home.as_deref());
        self.fold(&record, &whole, dirty);
        Ok(())
    }

    fn fold(&mut self, r: &SessionRecord, s: &Summary, dirty: &mut Vec<Key>) {
        self.stats.learned += 1;
        for principal in [Some(principal(r)), None] {
            let key = Key {
                agent: r.agent.clone(),
                principal,
            };
            let held = self.baselines.entry(key.clone()).or_insert_with(|| Held {
                b: Baseline::new(&key),
                seq: 0,
            });
            held.b.fold(&r.session_id, s);
            held.seq = 0;
            dirty.push(key);
        }
    }

    fn records(&self, dirty: &[Key], through_seq: i64) -> Vec<BaselineRecord> {
        if !self.store_baselines {
            return Vec::new();
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        dirty
            .iter()
            .map(|k| {
                let b = &self.baselines[k].b;
                BaselineRecord {
                    time_ns: now,
                    agent: b.agent.clone(),
                    principal: b.principal.clone(),
                    sessions: b.sessions,
                    through_seq,
                    content: serde_json::to_string(b).unwrap_or_default(),
                }
            })
            .collect()
    }

    fn found(&mut self, conn: &Connection, session: SessionRecord, key: &Key, r: Raised) -> Found {
        let held = self
            .baselines
            .get_mut(key)
            .expect("judged by a known baseline");
        if held.seq == 0
            && let Some((seq, sessions)) = source::baseline_row(conn, key)
            && sessions == held.b.sessions
        {
            held.seq = seq;
        }
        let mut notify: Vec<String> = Vec::new();
        for who in [
            Some(session.business_owner.clone()),
            Some(session.technical_owner.clone()),
            session.principal_user.clone(),
        ]
        .into_iter()
        .flatten()
        {
            if !who.is_empty() && !notify.contains(&who) {
                notify.push(who);
            }
        }
        Found {
            info: DriftInfo {
                finding: r.finding,
                severity: r.severity,
                object: r.object,
                evidence: r.evidence,
                count: r.count,
                baseline: DriftBaseline {
                    agent: held.b.agent.clone(),
                    principal: held.b.principal.clone(),
                    sessions: held.b.sessions,
                    seq: held.seq,
                },
                notify,
                detail: r.detail,
            },
            session,
        }
    }
}
