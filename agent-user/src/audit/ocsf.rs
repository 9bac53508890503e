//! OCSF-shaped records (schema 1.3) for SIEMs: Process Activity (1007), File System
//! Activity (1001) and Network Activity (4001). What OCSF has no field for (the session,
//! the lineage, the matched rule, the layer) goes under `unmapped.agentwarden`.

use agent_common::vocab::Action;
use serde_json::{Value, json};

use super::query::AuditRecord;
use crate::event::{Body, Event, ProcessInfo};

pub const OCSF_VERSION: &str = "1.3.0";

/// The OCSF record for an audit record, or `None` for kinds with no OCSF class
/// (session start/end, losses).
pub fn record(r: &AuditRecord) -> Option<Value> {
    let e = &r.event;
    let (class_uid, class_name, category_uid, category_name, activity_id, activity_name) =
        class_of(e)?;
    let time_ms = super::records::time_ns(&e.time) / 1_000_000;
    let d = e.decision.as_ref();
    let action = d.map(|d| d.action);
    let (disposition_id, disposition) = match action {
        Some(Action::Blocked | Action::Killed) => (2, "Blocked"),
        Some(Action::Alerted | Action::WouldAsk | Action::WouldRedirect) => (19, "Alert"),
        Some(Action::Allowed) => (1, "Allowed"),
        Some(Action::Approved) => (8, "Approved"),
        // Let through, changed: sent to another endpoint.
        Some(Action::Modified) => (7, "Custom Action"),
        Some(Action::Held) => (14, "Delayed"),
        None => (0, "Unknown"),
    };
    let severity_id = match (&e.body, action) {
        // A finding says how much it matters itself.
        (Body::Drift(x), _) => x.severity as u8,
        (_, action) => match action {
            Some(Action::Killed) => 4,
            Some(Action::Blocked | Action::Alerted | Action::WouldAsk | Action::WouldRedirect) => 3,
            // Outside the profile, let through by a person: worth a look, not an alarm.
            Some(Action::Approved | Action::Modified | Action::Held) => 2,
            Some(Action::Allowed) | None => 1,
        },
    };
    let failed = e.open().is_some_and(|o| o.result < 0)
        || e.connect().is_some_and(|c| connect_failed(c.result))
        || action.is_some_and(Action::refused);
    let ctx = r.context.as_ref();
    let p = e.process.as_ref();
    let actor_process = p.map(|p| actor_process(r, p));
    let mut out = json!({
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "category_name": category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "type_name": format!("{class_name}: {activity_name}"),
        "time": time_ms,
        "severity_id": severity_id,
        "status_id": if failed { 2 } else { 1 },
        "status": if failed { "Failure" } else { "Success" },
        "disposition_id": disposition_id,
        "disposition": disposition,
        "metadata": {
            "version": OCSF_VERSION,
            "uid": r.audit_seq.to_string(),
            "original_time": e.time,
            "log_name": "agentwarden-audit",
            "product": { "name": "agentwarden", "vendor_name": "agentwarden",
                         "version": env!("CARGO_PKG_VERSION") },
        },
        "device": { "hostname": ctx.map(|c| c.host.clone()), "type_id": 0 },
        "actor": {
            "process": actor_process,
            "user": ctx.map(|c| json!({ "uid": c.principal.uid.to_string(), "name": c.principal.user })),
            "session": ctx.map(|c| json!({ "uid": c.id, "created_time_dt": c.started, "issuer": "agentwarden" })),
            "app_name": ctx.map(|c| c.agent.clone()),
            "authorizations": d.map(|d| json!([{
                "decision": d.decision,
                "policy": { "name": ctx.map(|c| c.agent.clone()), "uid": ctx.map(|c| c.profile.sha256.clone()), "desc": d.rule },
            }])),
        },
        "unmapped": { "agentwarden": {
            "session": ctx,
            "decision": d,
            "lineage": r.lineage,
            "event_seq": e.seq,
        } },
    });
    add_body(&mut out, e, ctx.map(|c| c.host.as_str()));
    Some(out)
}

/// The OCSF class, category and activity of an event; `None` for kinds without one.
type Class = (u32, &'static str, u32, &'static str, u32, &'static str);

fn class_of(e: &Event) -> Option<Class> {
    let process = (1007, "Process Activity", 1, "System Activity");
    let network = (4001, "Network Activity", 4, "Network Activity");
    let api = (6003, "API Activity", 6, "Application Activity");
    let ((class_uid, class_name, category_uid, category_name), activity_id, activity_name) =
        match &e.body {
            Body::Exec(_) | Body::Fork(_) => (process, 1, "Launch"),
            Body::Exit(_) => (process, 2, "Terminate"),
            Body::Open(_) => (
                (1001, "File System Activity", 1, "System Activity"),
                14,
                "Open",
            ),
            Body::Connect(_) | Body::NetDecision(_) => {
                let refused = e
                    .decision
                    .as_ref()
                    .is_some_and(|d| d.action == Action::Blocked)
                    || e.connect().is_some_and(|c| connect_failed(c.result));
                if refused {
                    (network, 5, "Refuse")
                } else {
                    (network, 1, "Open")
                }
            }
            // A syscall invoked (and refused or killed: the decision says which).
            Body::SyscallDecision(_) => {
                ((1003, "Kernel Activity", 1, "System Activity"), 4, "Invoke")
            }
            // The agent's claims, from its hook: the API of its tools.
            Body::Prompt(_) => (api, 99, "Prompt"),
            Body::ToolCall(_) => {
                let refused = e.decision.as_ref().is_some_and(|d| d.action.refused());
                (
                    api,
                    99,
                    if refused {
                        "Tool Call Refused"
                    } else {
                        "Tool Call"
                    },
                )
            }
            Body::ToolResult(_) => (api, 99, "Tool Result"),
            // A person's answer to a held operation: an authorization decision.
            Body::Approval(_) => (
                (3003, "Authorize Session", 3, "Identity & Access Management"),
                99,
                "Approval",
            ),
            // An agent that escaped governance is itself a finding.
            Body::UnmanagedAgent(_) => ((2004, "Detection Finding", 2, "Findings"), 1, "Create"),
            // Behaviour outside the agent's baseline, found out of band.
            Body::Drift(_) => ((2004, "Detection Finding", 2, "Findings"), 1, "Create"),
            Body::SessionMapFull(_) | Body::SessionStart | Body::SessionEnd | Body::Loss(_) => {
                return None;
            }
        };
    Some((
        class_uid,
        class_name,
        category_uid,
        category_name,
        activity_id,
        activity_name,
    ))
}

/// The acting process, with its program and (from the lineage) its command line.
fn actor_process(r: &AuditRecord, p: &ProcessInfo) -> Value {
    let mut v = json!({
        "pid": p.tgid,
        "tid": p.pid,
        "name": p.comm,
        "user": { "uid": p.uid.to_string(), "name": p.user },
        "parent_process": { "pid": p.ppid },
    });
    if let Some(exe) = &p.exe {
        v["file"] = file_obj(exe);
    }
    if let Some(a) = r.lineage.first()
        && !a.argv.is_empty()
    {
        v["cmd_line"] = a.argv.join(" ").into();
    }
    v
}

/// What the event's kind adds: the process launched or ended, the file, the endpoint.
fn add_body(out: &mut Value, e: &Event, host: Option<&str>) {
    let p = e.process.as_ref();
    let mut dst = None;
    match &e.body {
        Body::Exec(x) => {
            out["process"] = json!({
                "pid": p.map(|p| p.tgid),
                "name": x.path.rsplit('/').next(),
                "cmd_line": x.argv.join(" "),
                "file": file_obj(&x.path),
                "parent_process": { "pid": p.map(|p| p.ppid) },
                "working_directory": x.cwd,
            });
        }
        Body::Fork(f) => {
            out["process"] = json!({
                "pid": f.child_tgid,
                "parent_process": { "pid": p.map(|p| p.tgid) },
                "file": p.and_then(|p| p.exe.as_deref()).map(file_obj),
            });
        }
        Body::Exit(x) => {
            out["process"] = json!({ "pid": p.map(|p| p.tgid), "name": p.map(|p| p.comm.clone()) });
            out["exit_code"] = json!(x.code.or(x.signal.map(|s| 128 + s)));
        }
        Body::Open(o) => {
            out["file"] = file_obj(&o.path);
            out["status_code"] = json!(o.result.to_string());
            // OCSF's own aggregation fields: how many, from when to when.
            if let Some(r) = &o.repeats {
                out["count"] = json!(r.count);
                out["start_time_dt"] = json!(r.first);
                out["end_time_dt"] = json!(e.time);
            }
        }
        // A socket refused at creation has no destination.
        Body::NetDecision(n) if n.address.is_empty() => {}
        Body::NetDecision(n) => {
            dst = Some((
                n.address.clone(),
                n.port,
                n.protocol.clone(),
                n.family.clone(),
            ));
        }
        Body::Connect(c) => {
            dst = Some((c.address.clone(), c.port, String::new(), c.family.clone()));
        }
        Body::SyscallDecision(s) => {
            out["kernel"] = json!({ "name": s.name, "type_id": 2, "type": "System Call" });
            out["status_code"] = json!(s.result.to_string());
        }
        Body::Prompt(x) => {
            out["api"] = json!({
                "operation": "prompt",
                "service": { "name": x.agent },
                "request": { "uid": x.prompt_id },
            });
            out["message"] = json!(x.text);
            out["unmapped"]["agentwarden"]["prompt"] = json!(x);
        }
        Body::ToolCall(x) => {
            out["api"] = json!({
                "operation": x.tool,
                "service": { "name": x.agent },
                "request": { "uid": x.id, "data": x.input },
            });
            out["unmapped"]["agentwarden"]["tool_call"] = json!(x);
        }
        Body::ToolResult(x) => {
            out["api"] = json!({
                "operation": x.tool,
                "service": { "name": x.agent },
                "request": { "uid": x.id },
                "response": { "error": x.failed.then_some("failed"), "message": x.told },
            });
            out["unmapped"]["agentwarden"]["tool_result"] = json!(x);
        }
        Body::Approval(x) => {
            out["file"] = file_obj(&x.path);
            // The actor is the process that asked; who answered is the approval's `by`.
            out["message"] = json!(x.note);
            out["unmapped"]["agentwarden"]["approval"] = json!(x);
        }
        Body::UnmanagedAgent(x) => {
            out["finding_info"] = json!({
                "title": format!("{} runs outside every agentwarden session", x.agent),
                "types": ["unmanaged_agent"],
                "desc": x.matched,
            });
            out["process"] = json!({
                "pid": p.map(|p| p.tgid),
                "cmd_line": x.argv.join(" "),
                "file": p.and_then(|p| p.exe.as_deref()).map(file_obj),
            });
            out["unmapped"]["agentwarden"]["unmanaged"] = json!(x);
        }
        Body::Drift(x) => {
            out["finding_info"] = json!({
                "title": format!("{}: {}", x.finding, x.object),
                "types": ["drift", x.finding.as_str()],
                "desc": x.detail,
                "related_events": x.evidence.iter().map(|s| json!({ "uid": s.to_string() })).collect::<Vec<_>>(),
            });
            out["unmapped"]["agentwarden"]["drift"] = json!(x);
        }
        Body::SessionMapFull(_) | Body::SessionStart | Body::SessionEnd | Body::Loss(_) => {}
    }
    if let Some(c) = &e.context {
        out["unmapped"]["agentwarden"]["context"] = json!(c);
    }
    if let Some((ip, port, proto, family)) = dst {
        out["dst_endpoint"] = json!({ "ip": ip, "port": port });
        out["src_endpoint"] = json!({ "hostname": host });
        let mut conn = json!({
            "direction_id": 2,
            "direction": "Outbound",
            "protocol_ver_id": if family == "inet6" { 6 } else { 4 },
        });
        if !proto.is_empty() {
            conn["protocol_name"] = proto.into();
        }
        out["connection_info"] = conn;
    }
}

fn file_obj(path: &str) -> Value {
    json!({
        "path": path,
        "name": path.rsplit('/').next().unwrap_or(path),
        "type_id": 1,
        "type": "Regular File",
    })
}

/// A connect that failed: a negative result other than `EINPROGRESS` (a non-blocking
/// connect under way, as curl's).
fn connect_failed(result: i64) -> bool {
    result < 0 && result != -i64::from(libc::EINPROGRESS)
}
