//! Replay: what a profile would have decided on recorded actions. The same decision
//! functions the daemon uses (`policy::decide`, `policy::tools`), and for destinations
//! the profile's network rules matched against the recorded address and port; host-name
//! rules are resolved here, now, by the system's resolver (a name that does not resolve
//! matches nothing, as in the daemon until its first answer).

use std::{
    collections::HashMap,
    net::{IpAddr, ToSocketAddrs},
};

use agent_common::vocab::Verdict;

use crate::{
    event::{Body, Event},
    policy::{
        CompiledDestination, Default, Profile, Target,
        decide::{Access, decide, is_path_only, is_write},
    },
};

/// A profile's verdict on one recorded action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judged {
    pub denied: bool,
    pub rule: String,
}

/// Answers of host names and the system's name servers, asked once each; and the real
/// paths of exact deny rules, as the daemon binds them to their files (a rule naming
/// `/usr/bin/nc` denies `/usr/bin/nc.openbsd` it links to).
#[derive(Default)]
pub struct Resolver {
    hosts: HashMap<String, Vec<IpAddr>>,
    nameservers: Option<Vec<IpAddr>>,
    real: HashMap<String, Option<String>>,
    /// Answers are only what was handed over (`set_hosts`): the daemon never blocks on
    /// a lookup in its event path.
    offline: bool,
}

impl Resolver {
    /// A resolver that asks no one: the daemon hands it its resolver's answers.
    pub fn offline(nameservers: Vec<IpAddr>) -> Self {
        Self {
            nameservers: Some(nameservers),
            offline: true,
            ..Self::default()
        }
    }

    /// The answers to use for host names (the daemon's, as they are refreshed).
    pub fn set_hosts(&mut self, hosts: HashMap<String, Vec<IpAddr>>) {
        self.hosts = hosts;
    }

    fn host(&mut self, h: &str) -> &[IpAddr] {
        let offline = self.offline;
        self.hosts.entry(h.to_owned()).or_insert_with(|| {
            if offline {
                return Vec::new();
            }
            (h, 0)
                .to_socket_addrs()
                .map(|a| a.map(|s| s.ip()).collect())
                .unwrap_or_default()
        })
    }

    fn nameservers(&mut self) -> &[IpAddr] {
        self.nameservers.get_or_insert_with(|| {
            crate::dns::nameservers(std::path::Path::new("/etc/resolv.conf")).unwrap_or_default()
        })
    }

    /// The deny rule of `p` whose file (through its links) is `path`.
    fn bound_deny(
        &mut self,
        p: &Profile,
        access: Access,
        path: &str,
        home: &str,
    ) -> Option<String> {
        use crate::policy::pattern::KernelForm;
        let (field, list) = match access {
            Access::Exec => ("exec.deny", &p.exec_deny),
            Access::Read | Access::Write => ("files.deny", &p.files_deny),
        };
        list.iter().enumerate().find_map(|(i, l)| {
            if l.value.kernel_form() != KernelForm::Exact {
                return None;
            }
            let written = match l.value.source().strip_prefix('~') {
                Some(rest) => format!("{home}{rest}"),
                None => l.value.source().to_owned(),
            };
            let real = self
                .real
                .entry(written.clone())
                .or_insert_with(|| {
                    std::fs::canonicalize(&written)
                        .ok()
                        .map(|r| r.display().to_string())
                        .filter(|r| *r != written)
                })
                .as_deref();
            (real == Some(path)).then(|| format!("{}:{} ({field}[{i}])", p.source, l.line))
        })
    }

    fn matches(&mut self, d: &CompiledDestination, ip: IpAddr, port: u16) -> bool {
        if !d.ports.is_empty() && !d.ports.iter().any(|r| r.contains(port)) {
            return false;
        }
        match &d.target {
            Target::Cidr(c) => c.contains(ip),
            Target::Host(h) => self.host(h).contains(&ip),
            Target::Nameservers => self.nameservers().contains(&ip),
        }
    }
}

/// The profile's verdict on a connection to `ip:port`: redirects and deny rules first,
/// then allow rules, then the default.
pub fn destination(p: &Profile, r: &mut Resolver, ip: IpAddr, port: u16) -> Judged {
    let rule = |field: &str, i: usize, line: u64| format!("{}:{line} ({field}[{i}])", p.source);
    for (i, l) in p.net_redirect.iter().enumerate() {
        if r.matches(&l.value.0, ip, port) {
            return Judged {
                denied: false,
                rule: rule("network.redirect", i, l.line),
            };
        }
    }
    for (field, list, denied) in [
        ("network.deny", &p.net_deny, true),
        ("network.allow", &p.net_allow, false),
    ] {
        for (i, l) in list.iter().enumerate() {
            if r.matches(&l.value, ip, port) {
                return Judged {
                    denied,
                    rule: rule(field, i, l.line),
                };
            }
        }
    }
    Judged {
        denied: p.file.network.default == Default::Deny,
        rule: "network.default".into(),
    }
}

/// What `p` would have decided on `ev`; `None` for what no rule judges (forks, exits,
/// failed opens of files that did not exist, the session's own records).
pub fn judge(p: &Profile, r: &mut Resolver, ev: &Event, home: &str) -> Option<Judged> {
    let recorded_deny = ev
        .decision
        .as_ref()
        .is_some_and(|d| d.decision == Verdict::Deny);
    let mut path = |access, path: &str| {
        let v = decide(p, access, path, home);
        match r.bound_deny(p, access, path, home) {
            Some(rule) if !v.denied => Judged { denied: true, rule },
            _ => Judged {
                denied: v.denied,
                rule: v.rule,
            },
        }
    };
    match &ev.body {
        Body::Exec(x) => Some(path(Access::Exec, &x.path)),
        // An open that failed on its own (no such file) reached no decision; one that a
        // profile refused did.
        Body::Open(o) if (o.result < 0 && !recorded_deny) || !o.path_resolved => None,
        Body::Open(o) if is_path_only(o.flags_raw) => None,
        // The open of a program's file for its exec, refused by an exec rule.
        Body::Open(o) if exec_open(ev) => Some(path(Access::Exec, &o.path)),
        Body::Open(o) => Some(path(
            if is_write(o.flags_raw) {
                Access::Write
            } else {
                Access::Read
            },
            &o.path,
        )),
        Body::Connect(c) => {
            let ip = c.address.parse().ok()?;
            Some(destination(p, r, ip, c.port))
        }
        Body::NetDecision(n) => {
            let ip = n.address.parse().ok()?;
            Some(destination(p, r, ip, n.port))
        }
        Body::SyscallDecision(s) => {
            let hit = p.syscall_deny.iter().find(|d| d.name == s.name);
            Some(match hit {
                Some(d) => Judged {
                    denied: true,
                    rule: format!("{}:{} ({})", p.source, d.line, d.field),
                },
                None => Judged {
                    denied: false,
                    rule: "syscalls.default".into(),
                },
            })
        }
        Body::ToolCall(t) => Some(match crate::policy::tools::decide(p, &t.tool, &t.target) {
            Some(d) => Judged {
                denied: d.decision == Verdict::Deny,
                rule: d.rule,
            },
            None => Judged {
                denied: false,
                rule: "tools.default".into(),
            },
        }),
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

/// What was decided on a recorded action (no decision: allowed; a connect a layer
/// refused: denied, by the decision its own record carries).
pub fn recorded(ev: &Event) -> Judged {
    if let Some(c) = ev.connect()
        && ev.decision.is_none()
        && super::refused(c.result)
    {
        return Judged {
            denied: true,
            rule: "(refused by the network layer)".into(),
        };
    }
    match &ev.decision {
        Some(d) => Judged {
            denied: d.decision == Verdict::Deny,
            rule: d.rule.clone(),
        },
        None => Judged {
            denied: false,
            rule: "(no rule)".into(),
        },
    }
}

/// An open the kernel judged as a program's exec (its decision names an `exec` rule).
pub fn exec_open(ev: &Event) -> bool {
    ev.open().is_some()
        && ev
            .decision
            .as_ref()
            .is_some_and(|d| d.rule.contains("(exec.") || d.rule.starts_with("exec."))
}

/// One recorded action whose verdict a profile changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub seq: i64,
    pub session: String,
    pub what: String,
    pub was: Option<Judged>,
    pub now: Judged,
}

/// What an action is, in one line.
pub fn describe(ev: &Event) -> String {
    match &ev.body {
        Body::Exec(x) => format!("exec {}", x.path),
        Body::Open(o) => format!(
            "{} {}",
            if is_write(o.flags_raw) {
                "write"
            } else {
                "read"
            },
            o.path
        ),
        Body::Connect(c) => format!("connect {}", super::endpoint(&c.address, c.port)),
        Body::NetDecision(n) => format!("{} {}", n.op, super::endpoint(&n.address, n.port)),
        Body::SyscallDecision(s) => format!("syscall {}", s.name),
        Body::ToolCall(t) => format!("tool {} {}", t.tool, t.target),
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
        | Body::Drift(_) => ev.kind().as_str().to_owned(),
    }
}
