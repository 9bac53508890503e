//! Out-of-band behaviour monitoring: what an agent's recorded sessions did, learned as
//! its baseline; what a session does that the baseline does not contain, raised as
//! `drift` findings; and profiles drafted from recorded behaviour (`learn`), checked
//! against the sessions they would judge (`replay`).
//!
//! Everything here reads the audit store (the events rebuilt from its rows) and nothing
//! else: it runs beside the kernel path and the audit writer, never in them. Pure
//! functions of events, unit-tested without a kernel; the daemon's analyser thread and
//! the CLI drive them (`analyze`).

pub mod analyze;
pub mod baseline;
pub mod cmd;
pub mod judge;
pub mod learn;
pub mod replay;
pub mod source;

use agent_common::vocab::Verdict;

use crate::event::{Body, Event};

/// The directories that stand for "this session's project" and "its principal's home"
/// in what is learned, so sessions in different projects (and of different users)
/// compare.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Anchors {
    /// The working directory of the session's first program (`run`'s agent).
    pub project: Option<String>,
    /// The principal's home.
    pub home: Option<String>,
}

/// Where the project stands in trees.
pub const PROJECT: &str = "$PROJECT";

/// Top-level directories whose second level is per-run scratch (random names): their
/// trees stop at the first level.
const SCRATCH: &[&str] = &["tmp", "dev", "var/tmp"];

impl Anchors {
    /// The anchors of a session whose first program ran in `cwd`, for a principal whose
    /// home is `home`. A project that is `/` or the home itself anchors nothing: it would
    /// make every path in it "the project".
    pub fn new(cwd: Option<&str>, home: Option<&str>) -> Self {
        let home = home
            .filter(|h| h.starts_with('/') && *h != "/")
            .map(|h| h.trim_end_matches('/').to_owned());
        let project = cwd
            .filter(|c| c.starts_with('/') && *c != "/")
            .map(|c| c.trim_end_matches('/').to_owned())
            .filter(|c| Some(c) != home.as_ref());
        Self { project, home }
    }

    /// `path` with the project and home written as `$PROJECT` and `~`.
    pub fn abstract_path(&self, path: &str) -> String {
        for (anchor, word) in [(&self.project, PROJECT), (&self.home, "~")] {
            if let Some(a) = anchor
                && let Some(rest) = under(path, a)
            {
                return if rest.is_empty() {
                    word.to_owned()
                } else {
                    format!("{word}/{rest}")
                };
            }
        }
        path.to_owned()
    }

    /// The file tree `path` belongs to, generalised so sessions compare: the whole
    /// project (`$PROJECT/**`); the first directory under the home (`~/.cache/**`); the
    /// first two levels elsewhere (`/usr/lib/**`), one for scratch directories
    /// (`/tmp/**`), numeric names (process ids) as `*`. A file directly under the home
    /// or `/` is its own tree.
    pub fn tree(&self, path: &str) -> String {
        if let Some(p) = &self.project
            && under(path, p).is_some()
        {
            return format!("{PROJECT}/**");
        }
        let (prefix, rest, depth) = match self.home.as_deref().and_then(|h| under(path, h)) {
            Some(rest) => ("~", rest, 1),
            None => ("", path.trim_start_matches('/'), 2),
        };
        let comps: Vec<&str> = rest.split('/').filter(|c| !c.is_empty()).collect();
        let dirs = comps.len().saturating_sub(1);
        match comps.last() {
            // The anchor itself.
            None if prefix.is_empty() => return "/".to_owned(),
            None => return prefix.to_owned(),
            Some(name) if dirs == 0 => return format!("{prefix}/{}", generalise_name(name)),
            Some(_) => {}
        }
        let depth = if prefix.is_empty()
            && SCRATCH
                .iter()
                .any(|s| rest.starts_with(s) && rest[s.len()..].starts_with('/'))
        {
            SCRATCH
                .iter()
                .find(|s| rest.starts_with(*s) && rest[s.len()..].starts_with('/'))
                .map_or(1, |s| s.split('/').count())
        } else {
            depth
        };
        let kept: Vec<&str> = comps[..dirs.min(depth)]
            .iter()
            .map(|c| {
                if c.bytes().all(|b| b.is_ascii_digit()) {
                    "*"
                } else {
                    c
                }
            })
            .collect();
        format!("{prefix}/{}/**", kept.join("/"))
    }
}

/// What follows `dir/` in `path` (`""` for `dir` itself); `None` when not under it.
fn under<'a>(path: &'a str, dir: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(dir)?;
    if rest.is_empty() {
        Some("")
    } else {
        rest.strip_prefix('/')
    }
}

/// The categories of the action mix, in the order of [`Summary::mix`].
pub const CATEGORIES: [&str; 6] = ["exec", "read", "write", "network", "tool", "denied"];

/// What one action is, for learning and judging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// A program run (its resolved path).
    Program(String),
    Read(String),
    Write(String),
    /// `ADDR:PORT` (`[ADDR]:PORT` for IPv6), with `/udp` for a datagram.
    Destination(String),
    Tool(String),
    /// What a profile denied: `open ~/.ssh/id_rsa`, `exec /usr/bin/nc`, `connect
    /// 10.0.0.1:443`, `syscall bpf`, `tool Bash(sudo id)`.
    Denied(String),
}

impl Observed {
    /// The mix category (an index of [`CATEGORIES`]).
    pub fn category(&self) -> usize {
        match self {
            Observed::Program(_) => 0,
            Observed::Read(_) => 1,
            Observed::Write(_) => 2,
            Observed::Destination(_) => 3,
            Observed::Tool(_) => 4,
            Observed::Denied(_) => 5,
        }
    }
}

/// A destination as learned and judged: `ADDR:PORT` (IPv6 bracketed), and every
/// loopback address and port as `loopback`: local services (a dev server, the agent's
/// own helpers, a model proxy) come and go on ports of their own.
pub fn destination(address: &str, port: u16) -> String {
    if address
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
    {
        return "loopback".to_owned();
    }
    endpoint(address, port)
}

/// `ADDR:PORT`, IPv6 bracketed.
pub fn endpoint(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// A connect's result that says a layer refused it (`EPERM` from the cgroup hook,
/// `EACCES` from the LSM).
pub fn refused(result: i64) -> bool {
    result == -i64::from(libc::EPERM) || result == -i64::from(libc::EACCES)
}

/// A file name with what changes from one run to the next cut off and made a `*`: a
/// temporary copy's suffix (`.claude.json.tmp.1234.ab12` → `.claude.json*`) or a long
/// number (`session-20261203` → `session-*`). Other names are kept.
pub fn generalise_name(name: &str) -> String {
    let tmp = name.find(".tmp");
    let digits = name
        .as_bytes()
        .windows(4)
        .position(|w| w.iter().all(u8::is_ascii_digit));
    match [tmp, digits].into_iter().flatten().min() {
        Some(0) | None => name.to_owned(),
        Some(i) => format!("{}*", &name[..i]),
    }
}

/// What `ev` is for learning and judging; `None` for what is no action of the agent's
/// (forks, exits, the session's own records, findings) or an open that failed (search
/// paths probe many files that do not exist: noise, not behaviour).
pub fn observe(ev: &Event, a: &Anchors) -> Option<Observed> {
    let denied = ev
        .decision
        .as_ref()
        .is_some_and(|d| d.decision == Verdict::Deny);
    match &ev.body {
        Body::Exec(x) if denied => Some(Observed::Denied(format!(
            "exec {}",
            a.abstract_path(&x.path)
        ))),
        Body::Exec(x) => Some(Observed::Program(x.path.clone())),
        Body::Open(o) if denied && replay::exec_open(ev) => Some(Observed::Denied(format!(
            "exec {}",
            a.abstract_path(&o.path)
        ))),
        Body::Open(o) if denied => Some(Observed::Denied(format!(
            "open {}",
            a.abstract_path(&o.path)
        ))),
        Body::Open(o) if o.result < 0 || !o.path_resolved || o.path.is_empty() => None,
        Body::Open(o) if crate::policy::decide::is_path_only(o.flags_raw) => None,
        Body::Open(o) if crate::policy::decide::is_write(o.flags_raw) => {
            Some(Observed::Write(a.tree(&o.path)))
        }
        Body::Open(o) => Some(Observed::Read(a.tree(&o.path))),
        Body::Connect(c) if denied => Some(Observed::Denied(format!(
            "connect {}",
            endpoint(&c.address, c.port)
        ))),
        // Refused by the network layer: its own decision record is the denial.
        Body::Connect(c) if refused(c.result) => None,
        Body::Connect(c) => Some(Observed::Destination(destination(&c.address, c.port))),
        Body::NetDecision(n) if n.address.is_empty() => {
            denied.then(|| Observed::Denied(format!("socket {} {}", n.family, n.protocol)))
        }
        Body::NetDecision(n) => {
            // A stream's decision names the destination its connect names.
            let dest = match n.protocol.as_str() {
                "tcp" => destination(&n.address, n.port),
                p => format!("{}/{p}", destination(&n.address, n.port)),
            };
            Some(if denied {
                Observed::Denied(format!("{} {dest}", n.op))
            } else {
                Observed::Destination(dest)
            })
        }
        Body::SyscallDecision(s) => denied.then(|| Observed::Denied(format!("syscall {}", s.name))),
        Body::ToolCall(t) if denied => Some(Observed::Denied(format!("tool {}", t.tool))),
        Body::ToolCall(t) => Some(Observed::Tool(t.tool.clone())),
        Body::Fork(_)
        | Body::Exit(_)
        | Body::SessionMapFull(_)
        | Body::SessionStart
        | Body::SessionEnd
        | Body::Loss(_)
        | Body::Prompt(_)
        | Body::ToolResult(_)
        | Body::Approval(_)
        | Body::UnmanagedAgent(_)
        | Body::Drift(_) => None,
    }
}

/// The actions behind one object of a session: how many, and the first of their audit
/// `seq` numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub count: u64,
    pub seqs: Vec<i64>,
}

/// Evidence kept per object: enough to find the actions, bounded.
const EVIDENCE_KEPT: usize = crate::event::DRIFT_EVIDENCE_MAX;

type Objects = std::collections::BTreeMap<String, Seen>;

/// One session's behaviour, as learned into a baseline or judged against one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Each object seen, with the actions behind it.
    pub programs: Objects,
    pub reads: Objects,
    pub writes: Objects,
    pub destinations: Objects,
    pub tools: Objects,
    pub denials: Objects,
    /// Actions per category of [`CATEGORIES`] (a stored row's repeats counted).
    pub counts: [u64; 6],
    /// Processes started (forks), and the deepest process tree.
    pub processes: u64,
    pub depth: u64,
    pub first_ns: i64,
    pub last_ns: i64,
    /// The project: the first program's working directory.
    pub project: Option<String>,
}

impl Summary {
    /// Takes one action (`seq`: its audit row; `repeats`: how many actions the row is).
    /// Returns how many actions are now behind its object.
    pub fn add(&mut self, seq: i64, repeats: u64, o: &Observed) -> &Seen {
        let (map, key) = match o {
            Observed::Program(k) => (&mut self.programs, k),
            Observed::Read(k) => (&mut self.reads, k),
            Observed::Write(k) => (&mut self.writes, k),
            Observed::Destination(k) => (&mut self.destinations, k),
            Observed::Tool(k) => (&mut self.tools, k),
            Observed::Denied(k) => (&mut self.denials, k),
        };
        self.counts[o.category()] += repeats.max(1);
        let seen = map.entry(key.clone()).or_default();
        seen.count += repeats.max(1);
        if seen.seqs.len() < EVIDENCE_KEPT {
            seen.seqs.push(seq);
        }
        seen
    }

    /// The share of each category among the session's actions (all zero for none).
    pub fn mix(&self) -> [f64; 6] {
        let total: u64 = self.counts.iter().sum();
        let mut m = [0.0; 6];
        if total > 0 {
            for (i, c) in self.counts.iter().enumerate() {
                m[i] = *c as f64 / total as f64;
            }
        }
        m
    }

    /// Actions per minute over the session's span (a span under a second counts as one).
    pub fn rate(&self) -> f64 {
        let total: u64 = self.counts.iter().sum();
        let secs = ((self.last_ns - self.first_ns).max(0) as f64 / 1e9).max(1.0);
        total as f64 * 60.0 / secs
    }
}

/// Builds the summary of a session from its events in order (`(seq, event, repeats)`),
/// the anchors given the principal's home.
pub fn summarize<'a>(
    events: impl IntoIterator<Item = (i64, &'a Event, u64)>,
    home: Option<&str>,
) -> Summary {
    let mut s = Summary::default();
    // Until the first program runs (what `run` does before it becomes the agent), no
    // project is known.
    let mut anchors = Anchors::new(None, home);
    let mut project_known = false;
    let mut depth: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
    for (seq, ev, repeats) in events {
        if s.first_ns == 0 {
            s.first_ns = ev.time_ns;
        }
        s.last_ns = s.last_ns.max(ev.time_ns);
        if !project_known && let Some(x) = ev.exec() {
            project_known = true;
            s.project = Some(x.cwd.clone()).filter(|c| !c.is_empty());
            anchors = Anchors::new(s.project.as_deref(), home);
        }
        if let Body::Fork(f) = &ev.body {
            s.processes += 1;
            let parent = ev
                .process
                .as_ref()
                .and_then(|p| depth.get(&p.tgid))
                .copied()
                .unwrap_or(0);
            depth.insert(f.child_tgid, parent + 1);
            s.depth = s.depth.max(parent + 1);
        }
        if let Some(o) = observe(ev, &anchors) {
            s.add(seq, repeats, &o);
        }
    }
    s
}

/// Jensen-Shannon divergence (base 2: 0 for the same mix, 1 for disjoint ones).
pub fn js_divergence(p: &[f64], q: &[f64]) -> f64 {
    let kl = |a: &[f64], m: &[f64]| -> f64 {
        a.iter()
            .zip(m)
            .filter(|(x, _)| **x > 0.0)
            .map(|(x, y)| x * (x / y).log2())
            .sum()
    };
    let m: Vec<f64> = p.iter().zip(q).map(|(a, b)| (a + b) / 2.0).collect();
    (kl(p, &m) / 2.0 + kl(q, &m) / 2.0).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests;
