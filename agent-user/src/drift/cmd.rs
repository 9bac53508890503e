//! The commands that read recorded behaviour from the audit store (the daemon need not
//! run): `baseline show`, `drift analyze`, `profile learn|replay|diff`.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Instant,
};

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use rusqlite::Connection;

use super::{
    analyze::Analyzer,
    baseline::Key,
    judge::Config,
    learn::{Learned, Recorded},
    replay::{Change, Judged, Resolver, describe, judge, recorded},
    source,
};
use crate::{
    audit::{SessionRecord, query, query::Stored, store},
    event::Event,
    policy::Profile,
    users::Users,
};

#[derive(Subcommand, Debug)]
pub enum BaselineCmd {
    /// An agent's baseline as the daemon's analyser learned it: programs, file trees,
    /// destinations, tools, denials, mix, rates; per principal with `--principal`.
    Show {
        agent: String,
        #[arg(long)]
        principal: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum DriftCmd {
    /// Learn and judge the whole store from its start, as the daemon's analyser would
    /// have: every finding, and how long it took. Writes nothing.
    Analyze {
        #[command(flatten)]
        thresholds: Thresholds,
        #[arg(long)]
        json: bool,
    },
}

/// The analyser's thresholds (`daemon --drift-*` take the same).
#[derive(Args, Debug, Clone)]
pub struct Thresholds {
    /// Sessions a baseline needs before sessions are judged against it.
    #[arg(long, default_value_t = Config::default().min_sessions)]
    pub drift_min_sessions: u64,
    /// Tries of one denied object that make an override attempt.
    #[arg(long, default_value_t = Config::default().repeated_denials)]
    pub drift_repeated_denials: u64,
    /// Jensen-Shannon divergence of a session's action mix from its baseline's above
    /// which the mix is far (0 to 1).
    #[arg(long, default_value_t = Config::default().mix_distance)]
    pub drift_mix_distance: f64,
}

impl Thresholds {
    pub fn config(&self) -> Config {
        Config {
            min_sessions: self.drift_min_sessions.max(1),
            repeated_denials: self.drift_repeated_denials.max(2),
            mix_distance: self.drift_mix_distance.clamp(0.0, 1.0),
            ..Config::default()
        }
    }
}

/// Which recorded sessions a command reads.
#[derive(Args, Debug, Clone, Default)]
pub struct Sessions {
    /// The agent: its profile's name.
    #[arg(long)]
    pub agent: Option<String>,
    /// A session (id or name), repeatable; default: every session of the agent.
    #[arg(long = "session", value_name = "ID|NAME")]
    pub sessions: Vec<String>,
    /// Only sessions started since (RFC 3339, or a duration: `7d`, `12h`).
    #[arg(long)]
    pub since: Option<String>,
    /// The home `~` stands for (default: the principal's, from this host's accounts).
    #[arg(long)]
    pub home: Option<String>,
}

/// A recorded session, read whole.
pub struct Loaded {
    pub record: SessionRecord,
    pub home: Option<String>,
    pub events: Vec<Stored>,
}

impl Sessions {
    /// The sessions selected, oldest first.
    pub fn load(&self, conn: &Connection) -> Result<Vec<Loaded>> {
        let since = self.since.as_deref().map(query::parse_time).transpose()?;
        let mut ids: Vec<String> = Vec::new();
        for s in &self.sessions {
            let id: String = conn
                .query_row(
                    "SELECT session_id FROM sessions WHERE session_id = ?1 OR name = ?1 \
                     ORDER BY seq DESC LIMIT 1",
                    [s],
                    |r| r.get(0),
                )
                .map_err(|_| anyhow::anyhow!("no session `{s}` in the audit store"))?;
            ids.push(id);
        }
        if self.sessions.is_empty() {
            let mut stmt = conn.prepare(
                "SELECT session_id FROM sessions WHERE (?1 IS NULL OR agent = ?1) \
                 AND (?2 IS NULL OR time_ns >= ?2) ORDER BY seq",
            )?;
            ids = stmt
                .query_map(rusqlite::params![self.agent, since], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            ids.dedup();
        }
        let mut users = Users::default();
        let mut out = Vec::new();
        for id in ids {
            let Some(record) = query::read_session(conn, &id) else {
                continue;
            };
            if self.agent.as_ref().is_some_and(|a| *a != record.agent) {
                continue;
            }
            let home = self
                .home
                .clone()
                .or_else(|| users.home(record.principal_uid));
            let events = source::session_actions(conn, &id)?;
            out.push(Loaded {
                record,
                home,
                events,
            });
        }
        Ok(out)
    }
}

pub fn baseline(db: &Path, cmd: BaselineCmd) -> Result<ExitCode> {
    let conn = store::open_read_only(db)?;
    match cmd {
        BaselineCmd::Show {
            agent,
            principal,
            json,
        } => {
            let key = Key { agent, principal };
            let found = source::baselines(&conn)?
                .into_iter()
                .find(|s| s.baseline.key() == key);
            let Some(source::StoredBaseline {
                seq, baseline: b, ..
            }) = found
            else {
                bail!(
                    "no baseline of {key} in {}: the daemon's analyser learns one from the \
                     agent's finished sessions",
                    db.display()
                );
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&b)?);
            } else {
                print!("{}", b.show(Some(seq)));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn drift(db: &Path, cmd: DriftCmd) -> Result<ExitCode> {
    let conn = store::open_read_only(db)?;
    match cmd {
        DriftCmd::Analyze { thresholds, json } => {
            let mut a = Analyzer::new(thresholds.config());
            a.store_baselines = false;
            let start = Instant::now();
            let mut findings = Vec::new();
            loop {
                let out = a.tick(&conn, 10_000)?;
                findings.extend(out.findings);
                if out.actions < 10_000 {
                    break;
                }
            }
            let took = start.elapsed();
            for f in &findings {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "session_id": f.session.session_id,
                            "session_name": f.session.name,
                            "agent": f.session.agent,
                            "drift": f.info,
                        })
                    );
                } else {
                    println!(
                        "{} {:<6} {:<20} {} ({}; evidence seq {:?})",
                        f.session.name,
                        f.info.severity,
                        f.info.finding,
                        f.info.object,
                        f.info.detail,
                        f.info.evidence
                    );
                }
            }
            let s = &a.stats;
            eprintln!(
                "analysed {} actions in {:.3} s ({:.0} actions/s): {} finding(s); {} session(s) \
                 learned, {} withheld for their findings; {} action(s) unjudged (no baseline \
                 of {} sessions yet); {} unreadable row(s)",
                s.actions,
                took.as_secs_f64(),
                s.actions as f64 / took.as_secs_f64().max(1e-9),
                s.findings,
                s.learned,
                s.withheld,
                s.unjudged,
                a.cfg.min_sessions,
                s.unreadable
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `profile learn`: the draft on stdout.
pub fn learn(db: &Path, sel: &Sessions, name: Option<String>) -> Result<ExitCode> {
    let Some(agent) = sel.agent.clone() else {
        bail!("--agent: which agent's sessions to learn from");
    };
    let conn = store::open_read_only(db)?;
    let sessions = sel.load(&conn)?;
    if sessions.is_empty() {
        bail!(
            "no recorded session of `{agent}` in {}{}",
            db.display(),
            sel.since
                .as_deref()
                .map_or(String::new(), |s| format!(" since {s}"))
        );
    }
    let mut l = Learned::default();
    for s in &sessions {
        l.add(&Recorded {
            record: &s.record,
            home: s.home.clone(),
            events: &s.events,
        });
    }
    print!(
        "{}",
        l.draft(&agent, &name.unwrap_or_else(|| format!("{agent}-learned")))
    );
    Ok(ExitCode::SUCCESS)
}

/// Every action of `sessions` that `p` judges, with its verdict under `p` and under `was`
/// (each action's recorded verdict, or another profile's).
fn judged(
    sessions: &[Loaded],
    p: &Profile,
    mut was: impl FnMut(&Loaded, &Event, &mut Resolver) -> Option<Judged>,
) -> Vec<Change> {
    let mut r = Resolver::default();
    let mut out = Vec::new();
    for s in sessions {
        let home = s.home.clone().unwrap_or_default();
        for (seq, ev, _) in &s.events {
            let Some(now) = judge(p, &mut r, ev, &home) else {
                continue;
            };
            out.push(Change {
                seq: *seq,
                session: s.record.name.clone(),
                what: describe(ev),
                was: was(s, ev, &mut r),
                now,
            });
        }
    }
    out
}

/// Whether the verdict turned.
fn turned(c: &Change) -> bool {
    c.was.as_ref().is_some_and(|b| b.denied) != c.now.denied
}

fn print_changes(changes: &[Change], old: &str, new: &str) -> (usize, usize) {
    let (mut denied, mut allowed) = (0, 0);
    for c in changes {
        let verb = if c.now.denied {
            denied += 1;
            "would deny"
        } else {
            allowed += 1;
            "would allow"
        };
        println!(
            "  seq {:<8} {:<24} {verb:<11} {}  ({new}: {}; {old}: {})",
            c.seq,
            c.session,
            c.what,
            c.now.rule,
            c.was.as_ref().map_or("-", |w| w.rule.as_str())
        );
    }
    (denied, allowed)
}

/// `profile replay`: the recorded sessions judged by `p`. Exit 1 when it would deny an
/// action the sessions performed.
pub fn replay(db: &Path, p: &Profile, sel: &Sessions) -> Result<ExitCode> {
    let conn = store::open_read_only(db)?;
    let sessions = sel.load(&conn)?;
    let all = judged(&sessions, p, |_, ev, _| Some(recorded(ev)));
    println!(
        "{} replayed over {} session(s), {} judged action(s):",
        p.file.name,
        sessions.len(),
        all.len()
    );
    // What it denies that was denied then too: the refusals it keeps.
    let mut kept = 0;
    for c in all.iter().filter(|c| c.now.denied && !turned(c)) {
        kept += 1;
        println!(
            "  seq {:<8} {:<24} {:<11} {}  ({}: {}; recorded: {})",
            c.seq,
            c.session,
            "denies",
            c.what,
            p.file.name,
            c.now.rule,
            c.was.as_ref().map_or("-", |w| w.rule.as_str())
        );
    }
    let changes: Vec<Change> = all.into_iter().filter(turned).collect();
    let (denied, allowed) = print_changes(&changes, "recorded", &p.file.name);
    println!(
        "{denied} action(s) the sessions performed would be denied; {allowed} they were \
         denied would be allowed; {kept} they were denied are denied again"
    );
    Ok(if denied > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `profile diff`: the rules each profile has that the other has not, then the recorded
/// actions whose verdict the change turns.
pub fn diff(
    db: Option<&PathBuf>,
    old: &Profile,
    new: &Profile,
    sel: &Sessions,
) -> Result<ExitCode> {
    let rules = |p: &Profile| -> Vec<String> {
        let f = &p.file;
        let mut v = vec![
            format!("mode: {}", f.mode.as_str()),
            format!("exec.default: {:?}", f.exec.default).to_lowercase(),
            format!("files.default: {:?}", f.files.default).to_lowercase(),
            format!("network.default: {:?}", f.network.default).to_lowercase(),
        ];
        let mut list = |field: &str, items: Vec<String>| {
            v.extend(items.into_iter().map(|i| format!("{field}: {i}")));
        };
        let pats = |l: &[crate::policy::Located<crate::policy::pattern::Pattern>]| {
            l.iter().map(|x| x.value.to_string()).collect::<Vec<_>>()
        };
        list("exec.allow", pats(&p.exec_allow));
        list("exec.deny", pats(&p.exec_deny));
        list("files.read", pats(&p.files_read));
        list("files.write", pats(&p.files_write));
        list("files.deny", pats(&p.files_deny));
        let dests = |l: &[crate::policy::Located<crate::policy::CompiledDestination>]| {
            l.iter()
                .map(|x| crate::policy::show::destination_text(&x.value))
                .collect::<Vec<_>>()
        };
        list("network.allow", dests(&p.net_allow));
        list("network.deny", dests(&p.net_deny));
        list(
            "tools.allow",
            p.tools_allow
                .iter()
                .map(|t| t.value.field.clone())
                .collect(),
        );
        list(
            "tools.deny",
            p.tools_deny.iter().map(|t| t.value.text.clone()).collect(),
        );
        list(
            "syscalls.deny",
            p.syscall_deny.iter().map(|d| d.name.to_owned()).collect(),
        );
        v
    };
    let (a, b) = (rules(old), rules(new));
    println!("--- {} ({})", old.file.name, old.source);
    println!("+++ {} ({})", new.file.name, new.source);
    for r in a.iter().filter(|r| !b.contains(r)) {
        println!("- {r}");
    }
    for r in b.iter().filter(|r| !a.contains(r)) {
        println!("+ {r}");
    }
    let Some(db) = db else {
        return Ok(ExitCode::SUCCESS);
    };
    let conn = store::open_read_only(db)?;
    let mut sel = sel.clone();
    if sel.agent.is_none() && sel.sessions.is_empty() {
        sel.agent = Some(old.file.name.clone());
    }
    let sessions = sel.load(&conn)?;
    let all = judged(&sessions, new, |s, ev, r| {
        judge(old, r, ev, s.home.as_deref().unwrap_or_default())
    });
    let judged = all.len();
    let changes: Vec<Change> = all.into_iter().filter(turned).collect();
    println!(
        "\nagainst {} recorded session(s) of {}{} ({judged} judged action(s)):",
        sessions.len(),
        sel.agent.as_deref().unwrap_or("the sessions named"),
        sel.since
            .as_deref()
            .map_or(String::new(), |s| format!(" since {s}"))
    );
    let (denied, allowed) = print_changes(&changes, &old.file.name, &new.file.name);
    println!(
        "this change would have denied {denied} action(s) {} allowed, and allowed {allowed} \
         it denied",
        old.file.name
    );
    Ok(ExitCode::SUCCESS)
}
