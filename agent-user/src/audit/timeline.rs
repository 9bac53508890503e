//! `audit timeline`: a session as a process tree, each process with its actions in
//! order and each child drawn where its parent forked it.

use std::{collections::HashMap, fmt::Write as _};

use super::{
    query::{AuditRecord, Summary},
    records::SessionRecord,
};
use crate::event::Body;

/// Renders the session header (from its totals) and the process tree of `records`.
// Long: the header is one line per context field, in display order.
pub fn render(s: &SessionRecord, sum: &Summary, records: &[AuditRecord]) -> String {
    let mut out = String::new();
    let denied: u64 = sum.denied.iter().map(|(_, n)| n).sum();
    let actions: Vec<String> = sum.denied.iter().map(|(a, n)| format!("{n} {a}")).collect();
    let _ = writeln!(out, "session {} ({})", s.session_id, s.name);
    let _ = writeln!(
        out,
        "  agent      {} (profile {}, sha256 {}, {} mode)",
        s.agent,
        s.profile_source,
        &s.profile_sha256[..s.profile_sha256.len().min(16)],
        s.mode
    );
    let _ = writeln!(
        out,
        "  owners     business: {}, technical: {}",
        s.business_owner, s.technical_owner
    );
    let _ = writeln!(
        out,
        "  principal  {} (uid {}), enrolled via {} on host {}",
        s.principal_user.as_deref().unwrap_or("?"),
        s.principal_uid,
        s.enrolment,
        s.host
    );
    if let Some(env) = s
        .environment
        .as_deref()
        .and_then(|e| serde_json::from_str::<crate::policy::environment::EnvChange>(e).ok())
    {
        let list = |what: &str, names: &[String]| {
            (!names.is_empty()).then(|| format!("{what} {}", names.join(", ")))
        };
        let parts: Vec<String> = [
            list("removed", &env.removed),
            list("replaced", &env.replaced),
            list("set", &env.added),
        ]
        .into_iter()
        .flatten()
        .collect();
        let _ = writeln!(
            out,
            "  environment {}{}",
            parts.join("; "),
            if env.applied {
                ""
            } else {
                " (monitor: would be; nothing changed)"
            }
        );
    }
    let _ = writeln!(
        out,
        "  time       {} → {}",
        s.time,
        sum.ended
            .as_deref()
            .unwrap_or("(running, or its end was not recorded)")
    );
    let _ = writeln!(
        out,
        "  actions    {} recorded, {} denied{}{}",
        sum.actions,
        denied,
        if actions.is_empty() {
            String::new()
        } else {
            format!(" ({})", actions.join(", "))
        },
        if records.len() as u64 == sum.actions {
            String::new()
        } else {
            format!("; {} shown", records.len())
        }
    );
    out.push('\n');

    Nesting::of(records).render(s.root_pid, &mut out);
    out
}

/// A session's records sorted into the agent's turns: prompts, their tool calls, the
/// actions under each call, and what happened outside any call.
struct Nesting<'a> {
    records: &'a [AuditRecord],
    /// Prompt rows, in order.
    prompts: Vec<usize>,
    /// `tool_call` rows, in order, with their `tool_result` row.
    calls: Vec<(usize, Option<usize>)>,
    /// Actions by the call they happened under (reported or inferred).
    under: HashMap<&'a str, Vec<usize>>,
    /// Inferred invocations (no `tool_call` row), in order of first action.
    inferred: Vec<&'a str>,
    /// Actions under no call.
    outside: Vec<usize>,
}

impl<'a> Nesting<'a> {
    fn of(records: &'a [AuditRecord]) -> Self {
        let mut n = Nesting {
            records,
            prompts: Vec::new(),
            calls: Vec::new(),
            under: HashMap::new(),
            inferred: Vec::new(),
            outside: Vec::new(),
        };
        let mut results: HashMap<&str, usize> = HashMap::new();
        for (i, r) in records.iter().enumerate() {
            match &r.event.body {
                Body::Prompt(_) => n.prompts.push(i),
                Body::ToolCall(_) => n.calls.push((i, None)),
                Body::ToolResult(x) => {
                    results.insert(x.id.as_str(), i);
                }
                Body::Exec(_)
                | Body::Open(_)
                | Body::Connect(_)
                | Body::Fork(_)
                | Body::Exit(_)
                | Body::SessionMapFull(_)
                | Body::NetDecision(_)
                | Body::SyscallDecision(_)
                | Body::SessionStart
                | Body::SessionEnd
                | Body::UnmanagedAgent(_)
                | Body::Drift(_)
                | Body::Loss(_)
                | Body::Approval(_) => match &r.event.context {
                    Some(c) => {
                        let list = n.under.entry(c.tool_call.as_str()).or_default();
                        if list.is_empty() && c.how == crate::event::Attribution::Inferred {
                            n.inferred.push(c.tool_call.as_str());
                        }
                        list.push(i);
                    }
                    None => n.outside.push(i),
                },
            }
        }
        for (call, result) in &mut n.calls {
            if let Body::ToolCall(x) = &records[*call].event.body {
                *result = results.get(x.id.as_str()).copied();
            }
        }
        n
    }

    fn render(&self, root: u32, out: &mut String) {
        let call_of = |i: usize| match &self.records[i].event.body {
            Body::ToolCall(x) => Some(x),
            _ => None,
        };
        let mut shown = vec![false; self.calls.len()];
        for &p in &self.prompts {
            let Body::Prompt(x) = &self.records[p].event.body else {
                continue;
            };
            let _ = writeln!(
                out,
                "{}  prompt        {}",
                short_time(&self.records[p].event.time),
                crate::output::detail(&self.records[p].event)
            );
            for (k, (c, result)) in self.calls.iter().enumerate() {
                if !shown[k]
                    && x.prompt_id.is_some()
                    && call_of(*c).and_then(|t| t.prompt_id.as_ref()) == x.prompt_id.as_ref()
                {
                    shown[k] = true;
                    self.call(*c, *result, 1, out);
                }
            }
        }
        for (k, (c, result)) in self.calls.iter().enumerate() {
            if !shown[k] {
                self.call(*c, *result, 0, out);
            }
        }
        for id in &self.inferred {
            let list = &self.under[id];
            let label = self.records[list[0]]
                .event
                .context
                .as_ref()
                .map_or("", |c| c.tool.as_str());
            let _ = writeln!(
                out,
                "invocation {id} (inferred: no hook reported calls) {label}"
            );
            self.tree(list, None, 1, out);
        }
        if !self.outside.is_empty() {
            if !(self.calls.is_empty() && self.inferred.is_empty()) {
                let _ = writeln!(out, "outside any tool call:");
            }
            self.tree(&self.outside, Some(root), 0, out);
        }
    }

    /// A tool call, its result, and the actions under it.
    fn call(&self, c: usize, result: Option<usize>, depth: usize, out: &mut String) {
        let indent = "    ".repeat(depth);
        let ev = &self.records[c].event;
        let _ = writeln!(
            out,
            "{indent}{}  tool call     {}",
            short_time(&ev.time),
            crate::output::detail(ev)
        );
        let id = match &ev.body {
            Body::ToolCall(x) => x.id.as_str(),
            _ => "",
        };
        if let Some(list) = self.under.get(id) {
            self.tree(list, None, depth + 1, out);
        }
        if let Some(r) = result {
            let ev = &self.records[r].event;
            let _ = writeln!(
                out,
                "{indent}{}  tool result   {}",
                short_time(&ev.time),
                crate::output::detail(ev)
            );
            if let Body::ToolResult(x) = &ev.body
                && let Some(told) = &x.told
            {
                let _ = writeln!(out, "{indent}    told the agent: {told}");
            }
        }
    }

    /// The records `subset` as a process tree, from `root` first (when it acted), then
    /// each process not reached from an earlier one, in order of appearance.
    fn tree(&self, subset: &[usize], root: Option<u32>, depth: usize, out: &mut String) {
        let mut per_tgid: HashMap<u32, Vec<usize>> = HashMap::new();
        let mut loose = Vec::new();
        let mut roots: Vec<u32> = root.into_iter().collect();
        for &i in subset {
            match &self.records[i].event.process {
                Some(p) => {
                    per_tgid.entry(p.tgid).or_default().push(i);
                    if !roots.contains(&p.tgid) {
                        roots.push(p.tgid);
                    }
                }
                None => loose.push(i),
            }
        }
        let mut done = vec![false; self.records.len()];
        let mut tree = Tree {
            records: self.records,
            per_tgid: &per_tgid,
            done: &mut done,
            out,
        };
        for r in roots {
            tree.node(r, i64::MIN, depth);
        }
        for i in loose {
            let r = &self.records[i];
            let _ = writeln!(
                out,
                "{}{}  {:<13} {}",
                "    ".repeat(depth),
                short_time(&r.event.time),
                r.event.kind(),
                r.detail()
            );
        }
    }
}

struct Tree<'a> {
    records: &'a [AuditRecord],
    per_tgid: &'a HashMap<u32, Vec<usize>>,
    done: &'a mut [bool],
    out: &'a mut String,
}

impl Tree<'_> {
    /// Draws process `tgid` from record `after` on: its actions until it exits, with
    /// each forked child drawn right after the fork.
    fn node(&mut self, tgid: u32, after: i64, depth: usize) {
        let Some(list) = self.per_tgid.get(&tgid) else {
            return;
        };
        let pending: Vec<usize> = list
            .iter()
            .copied()
            .filter(|i| !self.done[*i] && self.records[*i].audit_seq > after)
            .collect();
        if pending.is_empty() {
            return;
        }
        let indent = "    ".repeat(depth);
        let first = &self.records[pending[0]].event;
        let name = first
            .exec()
            .map(|x| x.argv.join(" "))
            .or_else(|| first.process.as_ref().map(|p| p.comm.clone()))
            .unwrap_or_default();
        let _ = writeln!(
            self.out,
            "{indent}{}[{tgid}] {name}",
            if depth == 0 { "" } else { "└─ " }
        );
        // Once the process exited, only what happened before (recorded late: the
        // refusal layer's and the approvals' rows) is still its: a later row of the same
        // pid is a new process's.
        let mut ended_at = None;
        for i in pending {
            if self.done[i] || ended_at.is_some_and(|t| self.records[i].event.time_ns > t) {
                continue;
            }
            self.done[i] = true;
            let r = &self.records[i];
            let _ = writeln!(
                self.out,
                "{indent}    {}  {:<13} {}",
                short_time(&r.event.time),
                r.event.kind(),
                r.detail()
            );
            match &r.event.body {
                Body::Fork(f) => self.node(f.child_tgid, r.audit_seq, depth + 1),
                Body::Exit(_) => ended_at = Some(r.event.time_ns),
                Body::Exec(_)
                | Body::Open(_)
                | Body::Connect(_)
                | Body::SessionMapFull(_)
                | Body::NetDecision(_)
                | Body::SyscallDecision(_)
                | Body::SessionStart
                | Body::SessionEnd
                | Body::UnmanagedAgent(_)
                | Body::Drift(_)
                | Body::Loss(_)
                | Body::Prompt(_)
                | Body::ToolCall(_)
                | Body::ToolResult(_)
                | Body::Approval(_) => {}
            }
        }
    }
}

/// `HH:MM:SS.micros` of an RFC 3339 time.
fn short_time(t: &str) -> &str {
    t.split_once('T')
        .map(|(_, rest)| rest.get(..15).unwrap_or(rest))
        .unwrap_or(t)
}
