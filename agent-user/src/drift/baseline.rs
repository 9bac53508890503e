//! An agent's baseline: what its recorded sessions did, as counts of the sessions that
//! did each thing. Grown one finished session at a time (`fold`), stored in the audit
//! database's `baselines` table (a row per growth, in the hash chain).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{CATEGORIES, Summary};

/// Which sessions a baseline is learned from: an agent's (its profile's name), and
/// optionally only one principal's.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub agent: String,
    /// `None`: every principal's sessions of the agent.
    pub principal: Option<String>,
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.principal {
            Some(p) => write!(f, "{} (principal {p})", self.agent),
            None => write!(f, "{} (every principal)", self.agent),
        }
    }
}

/// A baseline. Each map counts, per object, the sessions that did it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub agent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// Sessions learned from.
    pub sessions: u64,
    /// Programs run, by resolved path.
    pub programs: BTreeMap<String, u64>,
    /// File trees read (`$PROJECT/**`, `~/.cache/**`, `/usr/lib/**`).
    pub reads: BTreeMap<String, u64>,
    /// File trees written.
    pub writes: BTreeMap<String, u64>,
    /// Destinations reached (`ADDR:PORT`, `ADDR:PORT/udp`).
    pub destinations: BTreeMap<String, u64>,
    /// Tools called, by name (agents with hooks).
    pub tools: BTreeMap<String, u64>,
    /// Denied objects: the most tries of each in one session.
    pub denials: BTreeMap<String, u64>,
    /// The most distinct objects denied in one session.
    pub denied_objects_max: u64,
    /// Per category of [`CATEGORIES`]: the sum over sessions of its share of the
    /// session's actions (the mean mix is this over `sessions`).
    pub mix_sum: [f64; 6],
    /// Process-tree shape: the most processes and the deepest tree of a session.
    pub processes_max: u64,
    pub depth_max: u64,
    /// Rates: actions per minute (mean and most) and denials per session (mean).
    pub rate_sum: f64,
    pub rate_max: f64,
    pub denials_sum: u64,
    /// The last sessions learned from (ids, newest last, at most [`IDS_KEPT`]).
    pub session_ids: Vec<String>,
}

/// Session ids a baseline names.
pub const IDS_KEPT: usize = 100;

impl Baseline {
    pub fn new(key: &Key) -> Self {
        Self {
            agent: key.agent.clone(),
            principal: key.principal.clone(),
            ..Self::default()
        }
    }

    pub fn key(&self) -> Key {
        Key {
            agent: self.agent.clone(),
            principal: self.principal.clone(),
        }
    }

    /// Learns one finished session.
    pub fn fold(&mut self, session_id: &str, s: &Summary) {
        self.sessions += 1;
        for (into, from) in [
            (&mut self.programs, &s.programs),
            (&mut self.reads, &s.reads),
            (&mut self.writes, &s.writes),
            (&mut self.destinations, &s.destinations),
            (&mut self.tools, &s.tools),
        ] {
            for k in from.keys() {
                *into.entry(k.clone()).or_default() += 1;
            }
        }
        for (k, seen) in &s.denials {
            let most = self.denials.entry(k.clone()).or_default();
            *most = (*most).max(seen.count);
        }
        self.denied_objects_max = self.denied_objects_max.max(s.denials.len() as u64);
        for (sum, share) in self.mix_sum.iter_mut().zip(s.mix()) {
            *sum += share;
        }
        self.processes_max = self.processes_max.max(s.processes);
        self.depth_max = self.depth_max.max(s.depth);
        let rate = s.rate();
        self.rate_sum += rate;
        self.rate_max = self.rate_max.max(rate);
        self.denials_sum += s.denials.values().map(|d| d.count).sum::<u64>();
        self.session_ids.push(session_id.to_owned());
        if self.session_ids.len() > IDS_KEPT {
            self.session_ids.remove(0);
        }
    }

    /// The mean mix of the sessions learned from.
    pub fn mix(&self) -> [f64; 6] {
        let mut m = self.mix_sum;
        if self.sessions > 0 {
            for x in &mut m {
                *x /= self.sessions as f64;
            }
        }
        m
    }

    /// A read is inside the learned trees when the tree was read or written.
    pub fn knows_read(&self, tree: &str) -> bool {
        holds(&self.reads, tree) || holds(&self.writes, tree)
    }

    /// A write is inside the learned trees when the tree was written.
    pub fn knows_write(&self, tree: &str) -> bool {
        holds(&self.writes, tree)
    }

    /// What `baseline show` prints.
    pub fn show(&self, seq: Option<i64>) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let n = self.sessions.max(1) as f64;
        let _ = writeln!(out, "baseline of {}", self.key());
        let _ = writeln!(
            out,
            "  learned from {} session(s){}",
            self.sessions,
            seq.map_or(String::new(), |s| format!(" (audit baselines row seq={s})"))
        );
        let list = |out: &mut String, title: &str, m: &BTreeMap<String, u64>| {
            let _ = writeln!(out, "  {title} ({}):", m.len());
            for (k, c) in m {
                let _ = writeln!(out, "    {k:<60} {c}/{}", self.sessions);
            }
        };
        list(&mut out, "programs", &self.programs);
        list(&mut out, "file trees read", &self.reads);
        list(&mut out, "file trees written", &self.writes);
        list(&mut out, "destinations", &self.destinations);
        list(&mut out, "tools", &self.tools);
        let _ = writeln!(out, "  denied objects, most tries in one session:");
        for (k, c) in &self.denials {
            let _ = writeln!(out, "    {k:<60} {c}");
        }
        let mix = self.mix();
        let _ = writeln!(
            out,
            "  mix: {}",
            CATEGORIES
                .iter()
                .zip(mix)
                .map(|(c, m)| format!("{c} {:.1}%", m * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            out,
            "  processes: at most {} per session, tree depth at most {}",
            self.processes_max, self.depth_max
        );
        let _ = writeln!(
            out,
            "  rates: {:.0} actions/min on average (at most {:.0}); {:.1} denials per session",
            self.rate_sum / n,
            self.rate_max,
            self.denials_sum as f64 / n
        );
        out
    }
}

/// Whether `tree` is one of `trees`, or the directory at the root of one: a listing of
/// `/tmp` where sessions worked in `/tmp/**` is not a new place (a directory is opened
/// whenever a program looks for its entries, whether timing makes it do so or not).
fn holds<V>(trees: &BTreeMap<String, V>, tree: &str) -> bool {
    trees.contains_key(tree)
        || (!tree.ends_with("/**") && trees.contains_key(&format!("{tree}/**")))
}
