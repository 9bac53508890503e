//! Judging one session against a baseline: each action as it is recorded (a new
//! program, tree, destination or tool; a denial tried again and again), and the whole
//! session at its end (its mix of actions, its burst of denials). A finding is raised
//! once per session and object.

use std::collections::HashSet;

use agent_common::vocab::{Finding, Severity};

use super::{Observed, Summary, baseline::Baseline, js_divergence};

/// Thresholds (`agentwarden daemon --drift-*`).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Sessions a baseline needs before sessions are judged against it.
    pub min_sessions: u64,
    /// Tries of one denied object that make an override attempt (and more than any
    /// baseline session made).
    pub repeated_denials: u64,
    /// Distinct denied objects that make a burst (and more than any baseline session).
    pub denial_burst: u64,
    /// Jensen-Shannon divergence of the session's mix from the baseline's above which
    /// the mix is far.
    pub mix_distance: f64,
    /// Actions a session needs before its mix is judged (a short session's mix is
    /// noise).
    pub mix_min_actions: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            min_sessions: 5,
            repeated_denials: 3,
            denial_burst: 5,
            mix_distance: 0.2,
            mix_min_actions: 50,
        }
    }
}

/// A finding before it has a session and a baseline row around it.
#[derive(Clone, Debug, PartialEq)]
pub struct Raised {
    pub finding: Finding,
    pub severity: Severity,
    pub object: String,
    pub count: u64,
    pub evidence: Vec<i64>,
    pub detail: String,
}

/// One session's judge: what it has raised so far.
#[derive(Debug, Default)]
pub struct Judge {
    raised: HashSet<(Finding, String)>,
    /// Findings raised, in all.
    pub findings: u64,
}

impl Judge {
    fn raise(
        &mut self,
        finding: Finding,
        object: &str,
        seen: &super::Seen,
        detail: String,
    ) -> Option<Raised> {
        if !self.raised.insert((finding, object.to_owned())) {
            return None;
        }
        self.findings += 1;
        Some(Raised {
            finding,
            severity: severity(finding),
            object: object.to_owned(),
            count: seen.count,
            evidence: seen.seqs.clone(),
            detail,
        })
    }

    /// Judges one action just added to the session's summary `s` (as `o`).
    pub fn action(
        &mut self,
        cfg: &Config,
        b: &Baseline,
        s: &Summary,
        o: &Observed,
    ) -> Option<Raised> {
        let n = b.sessions;
        match o {
            Observed::Program(p) if !b.programs.contains_key(p) => self.raise(
                Finding::NewProgram,
                p,
                &s.programs[p],
                format!("{p} was run in none of the {n} baseline session(s)"),
            ),
            Observed::Read(t) if !b.knows_read(t) => self.raise(
                Finding::ReadOutsideTrees,
                t,
                &s.reads[t],
                format!("{t} was read in none of the {n} baseline session(s)"),
            ),
            Observed::Write(t) if !b.knows_write(t) => self.raise(
                Finding::WriteOutsideTrees,
                t,
                &s.writes[t],
                format!("{t} was written in none of the {n} baseline session(s)"),
            ),
            Observed::Destination(d) if !b.destinations.contains_key(d) => self.raise(
                Finding::NewDestination,
                d,
                &s.destinations[d],
                format!("{d} was reached in none of the {n} baseline session(s)"),
            ),
            Observed::Tool(t) if !b.tools.contains_key(t) => self.raise(
                Finding::NewTool,
                t,
                &s.tools[t],
                format!("{t} was called in none of the {n} baseline session(s)"),
            ),
            Observed::Denied(d) => {
                let seen = &s.denials[d];
                let most = b.denials.get(d).copied().unwrap_or(0);
                (seen.count >= cfg.repeated_denials && seen.count > most)
                    .then(|| {
                        self.raise(
                            Finding::RepeatedDenial,
                            d,
                            seen,
                            format!(
                                "{d} was denied {} times in this session; at most {most} in \
                                 one of the {n} baseline session(s)",
                                seen.count
                            ),
                        )
                    })
                    .flatten()
            }
            Observed::Program(_)
            | Observed::Read(_)
            | Observed::Write(_)
            | Observed::Destination(_)
            | Observed::Tool(_) => None,
        }
    }

    /// Judges the whole session at its end.
    pub fn end(&mut self, cfg: &Config, b: &Baseline, s: &Summary) -> Vec<Raised> {
        let mut out = Vec::new();
        let objects = s.denials.len() as u64;
        if objects >= cfg.denial_burst && objects > b.denied_objects_max {
            let mut all = super::Seen::default();
            for seen in s.denials.values() {
                all.count += seen.count;
                all.seqs.extend(seen.seqs.iter().take(4));
            }
            all.seqs.sort_unstable();
            all.seqs.truncate(crate::event::DRIFT_EVIDENCE_MAX);
            let detail = format!(
                "{objects} distinct objects denied in this session; at most {} in one of \
                 the {} baseline session(s)",
                b.denied_objects_max, b.sessions
            );
            out.extend(self.raise(
                Finding::DenialBurst,
                &format!("{objects} denied objects"),
                &all,
                detail,
            ));
        }
        let total: u64 = s.counts.iter().sum();
        if total >= cfg.mix_min_actions && b.sessions > 0 {
            let d = js_divergence(&s.mix(), &b.mix());
            if d > cfg.mix_distance {
                let shares = |m: [f64; 6]| {
                    super::CATEGORIES
                        .iter()
                        .zip(m)
                        .map(|(c, x)| format!("{c} {:.0}%", x * 100.0))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let seen = super::Seen {
                    count: total,
                    seqs: Vec::new(),
                };
                let detail = format!(
                    "Jensen-Shannon divergence {d:.3} > {:.3}: this session {}; baseline {}",
                    cfg.mix_distance,
                    shares(s.mix()),
                    shares(b.mix())
                );
                out.extend(self.raise(Finding::Mix, &format!("{d:.3}"), &seen, detail));
            }
        }
        out
    }
}

/// How much each finding matters.
pub fn severity(f: Finding) -> Severity {
    match f {
        Finding::WriteOutsideTrees | Finding::RepeatedDenial | Finding::DenialBurst => {
            Severity::High
        }
        Finding::NewProgram | Finding::ReadOutsideTrees | Finding::NewDestination => {
            Severity::Medium
        }
        Finding::NewTool | Finding::Mix => Severity::Low,
    }
}
