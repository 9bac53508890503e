//! `profile learn`: a profile drafted from what an agent's recorded sessions did. Every
//! list closed (`default: deny`) and opened exactly as far as the sessions went,
//! generalised to trees a person can read; what was denied in the sessions stays denied,
//! and so do the usual credentials. Owners are left for a person to fill in, and the
//! draft is in `monitor` mode: try it beside the enforcing profile first (`shadow`).

use std::{collections::BTreeSet, fmt::Write as _, net::IpAddr};

use agent_common::vocab::Verdict;

use super::Anchors;
use crate::{
    audit::{SessionRecord, query::Stored},
    event::Body,
    policy::decide::{is_path_only, is_write},
};

/// Credentials no drafted profile lets an agent read, whatever its sessions did.
pub const CREDENTIALS: &[&str] = &[
    "~/.ssh/**",
    "~/.aws/**",
    "~/.config/gcloud/**",
    "~/.azure/**",
    "~/.kube/**",
    "~/.docker/config.json",
    "~/.netrc",
    "~/.git-credentials",
    "~/.gnupg/**",
    "/etc/shadow",
    "/etc/gshadow",
    "/root/.ssh/**",
    "**/.env",
];

/// Directories whose programs are listed one by one: they hold every tool on the host,
/// the raw network ones among them.
const BIN_DIRS: &[&str] = &[
    "/usr/bin",
    "/bin",
    "/usr/sbin",
    "/sbin",
    "/usr/local/bin",
    "/usr/local/sbin",
];

/// One recorded session to learn from.
pub struct Recorded<'a> {
    pub record: &'a SessionRecord,
    /// The principal's home (`~` in the draft).
    pub home: Option<String>,
    pub events: &'a [Stored],
}

/// What the sessions did, generalised for a profile.
#[derive(Debug, Default)]
pub struct Learned {
    pub programs: BTreeSet<String>,
    pub reads: BTreeSet<String>,
    pub writes: BTreeSet<String>,
    /// `(cidr, ports)`; `None` ports: all.
    pub destinations: BTreeSet<(String, Option<String>)>,
    pub nameservers: bool,
    /// The host's name servers, read once.
    system_nameservers: Option<Vec<IpAddr>>,
    pub denied_programs: BTreeSet<String>,
    pub denied_files: BTreeSet<String>,
    pub denied_tools: BTreeSet<String>,
    pub sessions: usize,
    pub actions: u64,
    pub first_seq: i64,
    pub last_seq: i64,
}

/// The tree a profile allows for `path`: the project whole (its real path), the first
/// directory under the home (`~/.cache/**`), two levels elsewhere (one for scratch
/// directories), stopping before a numeric segment (a process id); a file directly under
/// the home or `/` is named alone.
pub fn tree(a: &Anchors, path: &str) -> String {
    if let Some(p) = &a.project
        && super::under(path, p).is_some()
    {
        return format!("{p}/**");
    }
    let t = a.tree(path);
    // `Anchors::tree` writes process ids as `*`: a profile stops before them.
    match t.find("/*/") {
        Some(i) => format!("{}/**", &t[..i]),
        None => t,
    }
}

/// Where a program is allowed from: itself in a system bin directory, else its
/// directory's tree (a package's own helpers), the project whole.
fn program(a: &Anchors, path: &str) -> String {
    if let Some(p) = &a.project
        && super::under(path, p).is_some()
    {
        return format!("{p}/**");
    }
    let abs = a.abstract_path(path);
    match abs.rsplit_once('/') {
        Some((dir, _)) if BIN_DIRS.contains(&dir) || dir.is_empty() || dir == "~" => abs,
        Some((dir, _)) => format!("{dir}/**"),
        None => abs,
    }
}

/// `set` without the trees another of its trees holds (`/etc/ssl/**` under `/etc/**`).
fn pruned(set: &BTreeSet<String>) -> Vec<&String> {
    set.iter()
        .filter(|t| {
            !set.iter().any(|o| {
                o != *t
                    && o.strip_suffix("/**")
                        .is_some_and(|dir| t.starts_with(&format!("{dir}/")))
            })
        })
        .collect()
}

impl Learned {
    pub fn add(&mut self, s: &Recorded<'_>) {
        self.sessions += 1;
        let mut anchors = Anchors::new(None, s.home.as_deref());
        let mut project_known = false;
        let nameservers = self
            .system_nameservers
            .get_or_insert_with(|| {
                crate::dns::nameservers(std::path::Path::new("/etc/resolv.conf"))
                    .unwrap_or_default()
            })
            .clone();
        for (seq, ev, _) in s.events {
            self.actions += 1;
            if self.first_seq == 0 {
                self.first_seq = *seq;
            }
            self.last_seq = self.last_seq.max(*seq);
            if !project_known && let Some(x) = ev.exec() {
                project_known = true;
                anchors = Anchors::new(Some(&x.cwd), s.home.as_deref());
            }
            let a = &anchors;
            let denied = ev
                .decision
                .as_ref()
                .is_some_and(|d| d.decision == Verdict::Deny);
            match &ev.body {
                Body::Exec(x) if denied => {
                    self.denied_programs.insert(a.abstract_path(&x.path));
                }
                Body::Exec(x) => {
                    self.programs.insert(program(a, &x.path));
                }
                Body::Open(o) if denied && super::replay::exec_open(ev) => {
                    self.denied_programs.insert(a.abstract_path(&o.path));
                }
                Body::Open(o) if denied => {
                    self.denied_files.insert(a.abstract_path(&o.path));
                }
                Body::Open(o) if o.result < 0 || !o.path_resolved || is_path_only(o.flags_raw) => {}
                Body::Open(o) if is_write(o.flags_raw) => {
                    self.writes.insert(tree(a, &o.path));
                }
                Body::Open(o) => {
                    self.reads.insert(tree(a, &o.path));
                }
                Body::Connect(_) | Body::NetDecision(_) if denied => {}
                Body::Connect(c) if super::refused(c.result) => {}
                Body::Connect(c) => self.destination(&c.address, c.port, &nameservers),
                Body::NetDecision(n) if !n.address.is_empty() => {
                    self.destination(&n.address, n.port, &nameservers);
                }
                Body::ToolCall(t) if denied => {
                    self.denied_tools
                        .insert(format!("{}({})", t.tool, t.target));
                }
                Body::NetDecision(_)
                | Body::ToolCall(_)
                | Body::Fork(_)
                | Body::Exit(_)
                | Body::SessionMapFull(_)
                | Body::SyscallDecision(_)
                | Body::SessionStart
                | Body::SessionEnd
                | Body::Loss(_)
                | Body::Prompt(_)
                | Body::ToolResult(_)
                | Body::Approval(_)
                | Body::UnmanagedAgent(_)
                | Body::Drift(_) => {}
            }
        }
    }

    fn destination(&mut self, address: &str, port: u16, nameservers: &[IpAddr]) {
        let Ok(ip) = address.parse::<IpAddr>() else {
            return;
        };
        if ip.is_loopback() {
            // Local services (a dev server, the agent's own helpers) come and go on
            // ports of their own: loopback is one destination.
            let net = if ip.is_ipv4() { "127.0.0.0/8" } else { "::1" };
            self.destinations.insert((net.to_owned(), None));
        } else if nameservers.contains(&ip) && port == 53 {
            self.nameservers = true;
        } else {
            self.destinations
                .insert((ip.to_string(), Some(port.to_string())));
        }
    }

    /// The draft, as YAML with comments saying where each list came from.
    pub fn draft(&self, agent: &str, name: &str) -> String {
        let mut y = String::new();
        let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let _ = writeln!(
            y,
            "# {name}: drafted by `agentwarden profile learn` from {} recorded session(s) of\n\
             # `{agent}` ({} actions, audit seq {}..{}). Every list is closed (`default: deny`)\n\
             # and opened as far as those sessions went. Review it, fill in the owners, try it\n\
             # beside the enforcing profile (`shadow_of`), then switch `mode` to `enforce`.",
            self.sessions, self.actions, self.first_seq, self.last_seq
        );
        let _ = writeln!(y, "name: {name}");
        let _ = writeln!(
            y,
            "description: {}",
            q(&format!(
                "{agent}, as learned from {} recorded session(s)",
                self.sessions
            ))
        );
        y.push_str(
            "owners:\n  business: \"TODO: who answers for this agent's use\"\n  \
             technical: \"TODO: who maintains this profile\"\nmode: monitor\n",
        );
        let list = |y: &mut String, key: &str, items: &mut dyn Iterator<Item = String>| {
            let items: Vec<String> = items.collect();
            if items.is_empty() {
                let _ = writeln!(y, "  {key}: []");
            } else {
                let _ = writeln!(y, "  {key}:");
                for i in items {
                    let _ = writeln!(y, "    - {i}");
                }
            }
        };
        y.push_str("exec:\n  default: deny\n  # The programs the sessions ran.\n");
        list(
            &mut y,
            "allow",
            &mut pruned(&self.programs).into_iter().map(|p| q(p)),
        );
        y.push_str("  # Programs the sessions were refused.\n");
        list(
            &mut y,
            "deny",
            &mut self.denied_programs.iter().map(|p| q(p)),
        );
        y.push_str(
            "  on_violation: block\nfiles:\n  default: deny\n  # The trees the sessions read.\n",
        );
        let writes = pruned(&self.writes);
        // A read under a written tree needs no rule of its own.
        let both: BTreeSet<String> = self.reads.union(&self.writes).cloned().collect();
        let reads: Vec<&String> = pruned(&both)
            .into_iter()
            .filter(|r| !writes.contains(r))
            .collect();
        list(&mut y, "read", &mut reads.into_iter().map(|p| q(p)));
        y.push_str("  # The trees the sessions wrote (and may read).\n");
        list(&mut y, "write", &mut writes.into_iter().map(|p| q(p)));
        y.push_str(
            "  # Credentials, never readable whatever the lists above allow; and what the\n  \
             # sessions were refused.\n",
        );
        let deny: BTreeSet<String> = CREDENTIALS
            .iter()
            .map(|c| (*c).to_owned())
            .chain(self.denied_files.iter().cloned())
            .collect();
        let mut deny: Vec<String> = deny.into_iter().collect();
        // The credentials first, as a reader expects them.
        deny.sort_by_key(|d| (!CREDENTIALS.contains(&d.as_str()), d.clone()));
        list(&mut y, "deny", &mut deny.iter().map(|p| q(p)));
        y.push_str("  on_violation: block\nnetwork:\n  default: deny\n  # The destinations the sessions reached.\n");
        let mut dests: Vec<String> = self
            .destinations
            .iter()
            .map(|(cidr, ports)| match ports {
                Some(p) => format!("{{ cidr: {}, ports: {} }}", q(cidr), q(p)),
                None => format!("{{ cidr: {} }}", q(cidr)),
            })
            .collect();
        if self.nameservers {
            dests.push("{ nameservers: system }".into());
        }
        list(&mut y, "allow", &mut dests.into_iter());
        y.push_str("  on_violation: block\n");
        if !self.denied_tools.is_empty() {
            y.push_str("tools:\n  # The tool calls the sessions were refused.\n");
            list(&mut y, "deny", &mut self.denied_tools.iter().map(|t| q(t)));
            y.push_str("  on_violation: block\n");
        }
        y
    }
}
