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

    // Actions per process, in chain order.
    let mut per_tgid: HashMap<u32, Vec<usize>> = HashMap::new();
    let mut loose = Vec::new();
    for (i, r) in records.iter().enumerate() {
        match &r.event.process {
            Some(p) => per_tgid.entry(p.tgid).or_default().push(i),
            None => loose.push(i),
        }
    }
    let mut done = vec![false; records.len()];
    let mut roots = vec![s.root_pid];
    // Processes not reached from the root (attach enrols a tree whose members were
    // forked before the session) become roots of their own, in order of appearance.
    for r in records {
        if let Some(p) = &r.event.process
            && !roots.contains(&p.tgid)
        {
            roots.push(p.tgid);
        }
    }
    let mut tree = Tree {
        records,
        per_tgid: &per_tgid,
        done: &mut done,
        out: &mut out,
    };
    for root in roots {
        tree.node(root, i64::MIN, 0);
    }
    for i in loose {
        let r = &records[i];
        let _ = writeln!(
            out,
            "{}  {:<13} {}",
            short_time(&r.event.time),
            r.event.kind(),
            r.detail()
        );
    }
    out
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
        for i in pending {
            if self.done[i] {
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
                Body::Exit(_) => break,
                Body::Exec(_)
                | Body::Open(_)
                | Body::Connect(_)
                | Body::SessionMapFull(_)
                | Body::NetDecision(_)
                | Body::SyscallDecision(_)
                | Body::SessionStart
                | Body::SessionEnd
                | Body::Loss(_) => {}
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
