//! Human-readable tables for the CLI (`--json` prints the raw structures instead).

use std::fmt::Write as _;

use agent_common::vocab::Verdict;

use crate::{
    event::{Body, Event},
    proto::StatusReport,
    session::SessionView,
};

/// Left-aligned columns sized to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                out.push_str(c);
            } else {
                let _ = write!(out, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

pub fn sessions(list: &[SessionView]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.name.clone(),
                s.profile.clone(),
                s.owner_user
                    .clone()
                    .unwrap_or_else(|| s.owner_uid.to_string()),
                s.enrolment.as_str().to_owned(),
                s.state.clone(),
                s.processes.to_string(),
                s.events.to_string(),
                s.started.clone(),
            ]
        })
        .collect();
    table(
        &[
            "SESSION", "NAME", "PROFILE", "OWNER", "VIA", "STATE", "PROCS", "EVENTS", "STARTED",
        ],
        &rows,
    )
}

/// One line of detail per event kind, with the policy decision when there is one.
pub fn detail(e: &Event) -> String {
    let mut body = body(e);
    if let Some(c) = &e.context
        && !matches!(e.body, Body::ToolCall(_) | Body::ToolResult(_))
    {
        body.push_str(&format!(
            "  (in {} {}, {})",
            c.tool,
            c.tool_call,
            c.how.as_str()
        ));
    }
    match &e.decision {
        Some(d) if d.decision == Verdict::Deny => format!(
            "{body}  [DENY {} by {}: {}]",
            d.action, d.enforced_by, d.rule
        ),
        Some(d) => format!("{body}  [allow: {}]", d.rule),
        None => body,
    }
}

fn body(e: &Event) -> String {
    match &e.body {
        Body::NetDecision(n) if n.op == "socket" => {
            format!("{} {} socket", n.family, n.protocol)
        }
        Body::NetDecision(n) => {
            let addr = if n.address.contains(':') {
                format!("[{}]:{}", n.address, n.port)
            } else {
                format!("{}:{}", n.address, n.port)
            };
            format!("{} {} {addr}", n.protocol, n.op)
        }
        Body::Exec(x) => {
            let trunc = if x.argv_truncated { " …" } else { "" };
            format!("{} [{}{trunc}] cwd={}", x.path, x.argv.join(" "), x.cwd)
        }
        Body::Open(o) => {
            let note = if o.path_resolved { "" } else { " (unresolved)" };
            match &o.repeats {
                Some(r) => format!(
                    "{}{note} {} again ×{} since {}",
                    o.path,
                    o.flags.join("|"),
                    r.count,
                    r.first
                ),
                None => format!("{}{note} {} = {}", o.path, o.flags.join("|"), o.result),
            }
        }
        Body::Connect(c) => {
            let addr = if c.family == "inet6" {
                format!("[{}]:{}", c.address, c.port)
            } else {
                format!("{}:{}", c.address, c.port)
            };
            format!("{addr} = {}", c.result)
        }
        Body::SyscallDecision(s) => {
            let arg = s.arg.map_or(String::new(), |a| format!(" arg={a}"));
            format!("{}{arg} at {} = {}", s.name, s.at, s.result)
        }
        Body::Exit(x) => match (x.code, x.signal) {
            (Some(c), _) => format!("code {c}"),
            (_, Some(s)) => format!("signal {s}"),
            _ => String::new(),
        },
        Body::Fork(f) | Body::SessionMapFull(f) => format!("child {}", f.child_tgid),
        Body::Loss(l) => format!("{} +{} (total {})", l.counter, l.delta, l.total),
        Body::SessionStart | Body::SessionEnd => String::new(),
        Body::Prompt(x) => {
            let text = x
                .text
                .as_deref()
                .map(|t| format!("{t:?}"))
                .or_else(|| {
                    x.sha256
                        .as_deref()
                        .map(|h| format!("sha256 {}", &h[..h.len().min(16)]))
                })
                .unwrap_or_else(|| "(not kept)".to_owned());
            format!("{} reported a prompt: {text}", x.agent)
        }
        Body::ToolCall(x) => {
            let (target, _) = crate::event::agent::cut(&x.target, 200);
            format!("{} {} [{target}] (reported by {})", x.id, x.tool, x.agent)
        }
        Body::ToolResult(x) => {
            let how = if x.failed { "failed" } else { "done" };
            let took = x
                .duration_ms
                .map_or(String::new(), |d| format!(" in {d} ms"));
            let refused = if x.refused > 0 {
                format!(", {} refused", x.refused)
            } else {
                String::new()
            };
            format!("{} {} {how}{took}{refused}", x.id, x.tool)
        }
        Body::UnmanagedAgent(x) => format!("{} outside every session ({})", x.agent, x.matched),
        Body::Drift(x) => format!(
            "{} {} {} ({} action(s), first seq {}; baseline of {} session(s))",
            x.severity,
            x.finding,
            x.object,
            x.count,
            x.evidence.first().copied().unwrap_or(0),
            x.baseline.sessions
        ),
        Body::Approval(x) => {
            let who = match &x.by {
                Some(b) => match b.uid {
                    Some(uid) => format!("by {} (uid {uid})", b.user.as_deref().unwrap_or("?")),
                    None => format!("by {} ({})", b.user.as_deref().unwrap_or("?"), b.via),
                },
                None => "by its timeout".to_owned(),
            };
            let outcome = match x.outcome {
                crate::event::ApprovalOutcome::Approved => "approved",
                crate::event::ApprovalOutcome::Denied => "denied",
                crate::event::ApprovalOutcome::TimedOut if x.allowed => "timed out, allowed",
                crate::event::ApprovalOutcome::TimedOut => "timed out, denied",
            };
            let note = x
                .note
                .as_deref()
                .map_or(String::new(), |n| format!(" note={n:?}"));
            let until = x
                .until
                .as_deref()
                .map_or(String::new(), |u| format!(" until {u}"));
            format!(
                "request {} {} {}: {outcome} {who} after {} ms, scope {}{until}{note}",
                x.request,
                x.access,
                x.path,
                x.waited_ms,
                serde_json::to_value(x.scope)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            )
        }
    }
}

pub fn event_row(e: &Event) -> Vec<String> {
    let (pid, comm) = e
        .process
        .as_ref()
        .map_or((String::new(), String::new()), |p| {
            (p.tgid.to_string(), p.comm.clone())
        });
    vec![
        e.time.clone(),
        e.session.name.clone(),
        pid,
        comm,
        e.kind().as_str().to_owned(),
        detail(e),
    ]
}

pub const EVENT_HEADER: [&str; 6] = ["TIME", "SESSION", "PID", "COMM", "KIND", "DETAIL"];

pub fn status(s: &StatusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "agentwarden {} (pid {}, since {})",
        s.version, s.daemon_pid, s.started
    );
    let _ = writeln!(out, "socket        {}", s.socket.display());
    let _ = writeln!(out, "state dir     {}", s.state_dir.display());
    out.push_str(&host(&s.host));
    let _ = writeln!(
        out,
        "sessions      {} active, {} total; {} of {} tracked processes",
        s.sessions_active, s.sessions_total, s.tracked_processes, s.tracked_processes_max
    );
    out.push_str("\nprograms\n");
    let rows: Vec<Vec<String>> = s
        .programs
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.kind.clone(),
                p.attach_point.clone(),
                p.state.clone(),
                p.load_us
                    .map_or(String::new(), |us| format!("{:.1}", us as f64 / 1e3)),
                match (&p.reason, &p.fallback) {
                    (Some(r), Some(f)) => format!("{r} (fallback: {f})"),
                    (Some(r), None) => r.clone(),
                    _ => String::new(),
                },
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "PROGRAM",
            "KIND",
            "ATTACH POINT",
            "STATE",
            "LOAD MS",
            "REASON",
        ],
        &rows,
    ));
    out.push_str("\nkernel counters\n");
    let rows: Vec<Vec<String>> = s
        .kernel_counters
        .iter()
        .map(|c| {
            let per: Vec<String> = c.per_cpu.iter().map(u64::to_string).collect();
            vec![c.name.clone(), c.total.to_string(), per.join(" ")]
        })
        .collect();
    out.push_str(&table(&["COUNTER", "TOTAL", "PER CPU"], &rows));
    let d = &s.daemon_counters;
    let _ = writeln!(
        out,
        "\ndaemon counters: records_read={} decode_errors={} events_logged={} \
         log_write_errors={} subscriber_lagged={} stdout_dropped={}",
        d.records_read,
        d.decode_errors,
        d.events_logged,
        d.log_write_errors,
        d.subscriber_lagged,
        d.stdout_dropped
    );
    let a = &s.audit;
    let _ = writeln!(
        out,
        "audit store: written={} backlog={} dropped={} write_errors={} pruned={}",
        a.written, a.backlog, a.dropped, a.write_errors, a.pruned
    );
    if !s.startup.is_empty() {
        let _ = writeln!(out, "start-up: {}", crate::startup::summary(&s.startup));
    }
    out
}

pub fn host(h: &crate::probe::HostProbe) -> String {
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mut out = String::new();
    let _ = writeln!(out, "kernel        {}", h.kernel_release);
    let _ = writeln!(out, "BTF           {}", yes(h.btf));
    let _ = writeln!(out, "ring buffer   {}", yes(h.ringbuf));
    let _ = writeln!(
        out,
        "BPF-LSM       {} (program type {}; active LSMs: {})",
        if h.bpf_lsm_active {
            "active"
        } else {
            "not active"
        },
        if h.bpf_lsm_program_type {
            "loads"
        } else {
            "does not load"
        },
        h.active_lsms
    );
    let _ = writeln!(
        out,
        "Landlock      {}",
        h.landlock_abi
            .map_or("not available".to_owned(), |v| format!("ABI {v}"))
    );
    let _ = writeln!(
        out,
        "cgroup v2     {}",
        h.cgroup2_mount
            .as_ref()
            .map_or("not mounted".to_owned(), |p| p.display().to_string())
    );
    let _ = writeln!(out, "cgroup sock_addr programs {}", yes(h.cgroup_sock_addr));
    out
}

/// `agentwarden pending`: one row per held request.
pub fn pending(requests: &[crate::proto::PendingView]) -> String {
    if requests.is_empty() {
        return "no operations are waiting for approval\n".to_owned();
    }
    let rows: Vec<Vec<String>> = requests
        .iter()
        .map(|r| {
            let principal = r
                .principal_user
                .clone()
                .unwrap_or_else(|| r.principal_uid.to_string());
            let call = r
                .context
                .as_ref()
                .map_or(String::new(), |c| format!("{} {}", c.tool, c.tool_call));
            vec![
                r.id.to_string(),
                format!("{} ({})", r.session_name, r.agent),
                principal,
                format!("{}/{}", r.business_owner, r.technical_owner),
                format!("{} {}", r.pid, r.comm.clone().unwrap_or_default()),
                format!("{} {}", r.access, r.path),
                r.rule.clone(),
                call,
                format!(
                    "{}s of {}s, then {}",
                    r.waiting_ms / 1000,
                    r.timeout_secs,
                    r.on_timeout
                ),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "SESSION",
            "FOR",
            "OWNERS",
            "PROCESS",
            "WHAT",
            "RULE",
            "TOOL CALL",
            "WAITING",
        ],
        &rows,
    )
}

/// `agentwarden inventory`: one block per live session, for a reviewer to sign off.
/// `inventory --unmanaged`: one line per process, what it looks like and why.
pub fn unmanaged(processes: &[crate::unmanaged::UnmanagedProcess]) -> String {
    if processes.is_empty() {
        return "no agent runs outside a session\n".to_owned();
    }
    let mut out = format!(
        "{:<8} {:<12} {:<14} {:<40} COMMAND\n",
        "PID", "USER", "LOOKS LIKE", "MATCHED"
    );
    for p in processes {
        let user = p.user.clone().unwrap_or_else(|| p.uid.to_string());
        let _ = writeln!(
            out,
            "{:<8} {:<12} {:<14} {:<40} {}",
            p.pid,
            user,
            p.agent,
            p.matched,
            p.argv.join(" ")
        );
    }
    out
}

pub fn inventory(sessions: &[crate::inventory::SessionInventory]) -> String {
    if sessions.is_empty() {
        return "no live session\n".to_owned();
    }
    let mut out = String::new();
    for s in sessions {
        let p = &s.principal;
        let groups: Vec<String> = p.groups.iter().map(u32::to_string).collect();
        let _ = writeln!(
            out,
            "session {} ({}), profile {}, via {}, pid {}\n  \
             owners: business {}, technical {}\n  \
             principal: uid {} ({}), gid {}, groups [{}], capabilities [{}]",
            s.session,
            s.name,
            s.profile,
            s.enrolment,
            s.root_pid,
            s.owners.business,
            s.owners.technical,
            p.uid,
            p.user.as_deref().unwrap_or("?"),
            p.gid,
            groups.join(" "),
            p.capabilities.join(" "),
        );
        if let Some(sel) = &s.selector {
            let _ = writeln!(out, "  enrolled by: {sel}");
        }
        if let Some(c) = &s.container {
            let _ = writeln!(
                out,
                "  container: {} ({} {}/{}, image {})",
                c.reference(),
                c.runtime,
                c.runtime_namespace,
                c.id,
                c.image
            );
        }
        let rows: Vec<Vec<String>> = s
            .credentials
            .iter()
            .map(|c| {
                vec![
                    format!("  {}", c.what),
                    c.kind.clone(),
                    c.object.clone(),
                    c.verdict.clone(),
                    c.rule.clone(),
                ]
            })
            .collect();
        if rows.is_empty() {
            out.push_str("  no credential found within reach\n");
        } else {
            out.push_str(&table(
                &["  CREDENTIAL", "KIND", "OBJECT", "VERDICT", "RULE"],
                &rows,
            ));
        }
        for (label, lines) in [("network", &s.network), ("tools", &s.tools)] {
            let _ = writeln!(out, "  {label}: {}", lines.join("; "));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_aligns_columns() {
        let t = super::table(&["A", "B"], &[vec!["long".into(), "x".into()]]);
        assert_eq!(t, "A     B\nlong  x\n");
    }
}
