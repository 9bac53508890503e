//! OpenTelemetry export (OTLP/HTTP, JSON encoding) of sessions, tool calls and actions,
//! after the GenAI semantic conventions: a session is an `invoke_agent` span, each tool
//! call an `execute_tool` span under it, and the actions are log records tied to the
//! span they happened under (the tool call's, else the session's). Spans are sent when
//! they end (a session's at its end, a call's at its result; a call refused before it
//! ran at once). Forks, exits and opens without a refusal are not exported (their
//! volume is the audit store's business).
//!
//! This module turns events into OTLP JSON and holds no socket: unit-tested on events
//! built in memory. The daemon's exporter task sends the batches.

use std::collections::HashMap;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::event::{Body, Event};

/// A span that has started and not ended.
#[derive(Clone, Debug)]
struct Open {
    start_ns: i64,
    name: String,
    attributes: Vec<Value>,
}

/// Events in, OTLP request bodies out.
#[derive(Debug, Default)]
pub struct Batcher {
    sessions: HashMap<String, Open>,
    calls: HashMap<(String, String), Open>,
    spans: Vec<Value>,
    logs: Vec<Value>,
}

fn hex_id(parts: &[&str], bytes: usize) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    crate::audit::chain::hex(&h.finalize()[..bytes])
}

/// The trace of a session (16 bytes, hex).
pub fn trace_id(session: &str) -> String {
    hex_id(&["agentwarden-trace", session], 16)
}

/// The span of a session (8 bytes, hex).
pub fn session_span_id(session: &str) -> String {
    hex_id(&["agentwarden-session", session], 8)
}

/// The span of a tool call in a session.
pub fn call_span_id(session: &str, call: &str) -> String {
    hex_id(&["agentwarden-tool-call", session, call], 8)
}

fn attr(key: &str, v: impl Into<Value>) -> Value {
    let v = v.into();
    let value = match &v {
        Value::Bool(b) => json!({ "boolValue": b }),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({ "intValue": n.to_string() }),
        Value::Number(n) => json!({ "doubleValue": n }),
        Value::String(s) => json!({ "stringValue": s }),
        other => json!({ "stringValue": other.to_string() }),
    };
    json!({ "key": key, "value": value })
}

impl Batcher {
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty() && self.logs.is_empty()
    }

    pub fn pending(&self) -> usize {
        self.spans.len() + self.logs.len()
    }

    /// Takes one event: opens or ends a span, or adds a log record.
    pub fn take(&mut self, ev: &Event) {
        let sid = ev.session.id.clone();
        let t = ev.time_ns;
        match &ev.body {
            Body::SessionStart => {
                let mut attributes = vec![
                    attr("gen_ai.operation.name", "invoke_agent"),
                    attr("gen_ai.agent.name", ev.session.profile.clone()),
                    attr("agentwarden.session.id", sid.clone()),
                    attr("agentwarden.session.name", ev.session.name.clone()),
                ];
                if let Some(p) = &ev.process {
                    attributes.push(attr("agentwarden.principal.uid", p.uid));
                    if let Some(u) = &p.user {
                        attributes.push(attr("agentwarden.principal.user", u.clone()));
                    }
                }
                self.sessions.insert(
                    sid,
                    Open {
                        start_ns: t,
                        name: format!("invoke_agent {}", ev.session.profile),
                        attributes,
                    },
                );
            }
            Body::SessionEnd => {
                if let Some(open) = self.sessions.remove(&sid) {
                    let span = span(&sid, &session_span_id(&sid), None, open, t, None);
                    self.spans.push(span);
                }
            }
            Body::ToolCall(c) => {
                let mut attributes = vec![
                    attr("gen_ai.operation.name", "execute_tool"),
                    attr("gen_ai.tool.name", c.tool.clone()),
                    attr("gen_ai.tool.call.id", c.id.clone()),
                    attr("gen_ai.tool.call.arguments", c.input.clone()),
                    attr("agentwarden.reported_by", c.agent.clone()),
                ];
                if let Some(p) = &c.prompt_id {
                    attributes.push(attr("agentwarden.prompt.id", p.clone()));
                }
                let open = Open {
                    start_ns: t,
                    name: format!("execute_tool {}", c.tool),
                    attributes,
                };
                match &ev.decision {
                    // Refused before it ran: the span ends where it starts.
                    Some(d) if d.action.refused() => {
                        let mut open = open;
                        open.attributes
                            .push(attr("agentwarden.rule", d.rule.clone()));
                        let status = Some(format!("denied by {}", d.rule));
                        let span = span(
                            &sid,
                            &call_span_id(&sid, &c.id),
                            Some(session_span_id(&sid)),
                            open,
                            t,
                            status,
                        );
                        self.spans.push(span);
                    }
                    _ => {
                        self.calls.insert((sid, c.id.clone()), open);
                    }
                }
            }
            Body::ToolResult(r) => {
                let key = (sid.clone(), r.id.clone());
                let mut open = self.calls.remove(&key).unwrap_or_else(|| Open {
                    start_ns: t - r.duration_ms.unwrap_or(0) as i64 * 1_000_000,
                    name: format!("execute_tool {}", r.tool),
                    attributes: vec![
                        attr("gen_ai.operation.name", "execute_tool"),
                        attr("gen_ai.tool.name", r.tool.clone()),
                        attr("gen_ai.tool.call.id", r.id.clone()),
                    ],
                });
                open.attributes.push(attr("agentwarden.refused", r.refused));
                let status = if r.refused > 0 {
                    Some(format!("{} action(s) refused by policy", r.refused))
                } else if r.failed {
                    Some("the tool reported a failure".to_owned())
                } else {
                    None
                };
                let span = span(
                    &sid,
                    &call_span_id(&sid, &r.id),
                    Some(session_span_id(&sid)),
                    open,
                    t,
                    status,
                );
                self.spans.push(span);
            }
            Body::Fork(_) | Body::Exit(_) => {}
            // Opens only when a profile denied them.
            Body::Open(_)
                if ev
                    .decision
                    .as_ref()
                    .is_none_or(|d| d.decision != agent_common::vocab::Verdict::Deny) => {}
            Body::Exec(_)
            | Body::Open(_)
            | Body::Connect(_)
            | Body::NetDecision(_)
            | Body::SyscallDecision(_)
            | Body::SessionMapFull(_)
            | Body::Loss(_)
            | Body::Prompt(_)
            | Body::Approval(_)
            | Body::UnmanagedAgent(_)
            | Body::Drift(_) => self.logs.push(log(ev)),
        }
    }

    /// The bodies of a `/v1/traces` and a `/v1/logs` request for what is pending (each
    /// `None` when it has nothing), and the batch emptied.
    pub fn drain(&mut self, resource: &[Value]) -> (Option<Value>, Option<Value>) {
        let scope = json!({ "name": "agentwarden", "version": env!("CARGO_PKG_VERSION") });
        let res = json!({ "attributes": resource });
        let traces = (!self.spans.is_empty()).then(|| {
            json!({ "resourceSpans": [{ "resource": res, "scopeSpans": [{
                "scope": scope, "spans": std::mem::take(&mut self.spans) }] }] })
        });
        let logs = (!self.logs.is_empty()).then(|| {
            json!({ "resourceLogs": [{ "resource": res, "scopeLogs": [{
                "scope": scope, "logRecords": std::mem::take(&mut self.logs) }] }] })
        });
        (traces, logs)
    }
}

/// The resource of every batch: the service and the host.
pub fn resource(host: &str) -> Vec<Value> {
    vec![
        attr("service.name", "agentwarden"),
        attr("service.version", env!("CARGO_PKG_VERSION")),
        attr("host.name", host),
    ]
}

fn span(
    session: &str,
    span_id: &str,
    parent: Option<String>,
    open: Open,
    end_ns: i64,
    error: Option<String>,
) -> Value {
    let mut s = json!({
        "traceId": trace_id(session),
        "spanId": span_id,
        "name": open.name,
        // INTERNAL
        "kind": 1,
        "startTimeUnixNano": open.start_ns.to_string(),
        "endTimeUnixNano": end_ns.max(open.start_ns).to_string(),
        "attributes": open.attributes,
    });
    if let Some(p) = parent {
        s["parentSpanId"] = p.into();
    }
    if let Some(message) = error {
        // STATUS_CODE_ERROR
        s["status"] = json!({ "code": 2, "message": message });
    }
    s
}

fn log(ev: &Event) -> Value {
    let sid = &ev.session.id;
    let span_id = match &ev.context {
        Some(c) => call_span_id(sid, &c.tool_call),
        None => session_span_id(sid),
    };
    let mut attributes = vec![
        attr("event.name", format!("agentwarden.{}", ev.kind().as_str())),
        attr("agentwarden.session.id", sid.clone()),
        attr("agentwarden.event.seq", ev.seq),
    ];
    if let Some(p) = &ev.process {
        attributes.push(attr("process.pid", p.tgid));
        if let Some(exe) = &p.exe {
            attributes.push(attr("process.executable.path", exe.clone()));
        }
    }
    if let Some(d) = &ev.decision {
        attributes.push(attr("agentwarden.decision", d.decision.as_str()));
        attributes.push(attr("agentwarden.action", d.action.as_str()));
        attributes.push(attr("agentwarden.rule", d.rule.clone()));
        attributes.push(attr("agentwarden.enforced_by", d.enforced_by.as_str()));
    }
    if let Some(c) = &ev.context {
        attributes.push(attr("gen_ai.tool.call.id", c.tool_call.clone()));
        attributes.push(attr("agentwarden.attribution", c.how.as_str()));
    }
    let refused = ev.decision.as_ref().is_some_and(|d| d.action.refused());
    let mut rec = json!({
        "timeUnixNano": ev.time_ns.to_string(),
        "observedTimeUnixNano": ev.time_ns.to_string(),
        // WARN for a refusal, INFO otherwise.
        "severityNumber": if refused { 13 } else { 9 },
        "severityText": if refused { "WARN" } else { "INFO" },
        "body": { "stringValue": crate::output::detail(ev) },
        "attributes": attributes,
    });
    if !sid.is_empty() {
        rec["traceId"] = trace_id(sid).into();
        rec["spanId"] = span_id.into();
    }
    rec
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::event::{ExecInfo, SessionRef, ToolCallInfo, ToolResultInfo};

    fn at(ms: u64, body: Body) -> Event {
        Event::new(
            body,
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms),
            SessionRef {
                id: "00000000000000aa".into(),
                name: "s".into(),
                profile: "claude-code".into(),
                container: None,
            },
        )
    }

    /// A session with one call and one exec under it: the call's span is the session
    /// span's child, the exec's log record points at the call's span.
    #[test]
    fn a_call_is_a_child_span_and_its_actions_are_its_logs() {
        let mut b = Batcher::default();
        b.take(&at(0, Body::SessionStart));
        b.take(&at(
            10,
            Body::ToolCall(ToolCallInfo {
                agent: "claude-code".into(),
                agent_session: "a".into(),
                id: "toolu_1".into(),
                tool: "Bash".into(),
                target: "ls".into(),
                input: r#"{"command":"ls"}"#.into(),
                input_truncated: false,
                prompt_id: None,
                agent_pid: 5,
            }),
        ));
        let mut exec = at(
            20,
            Body::Exec(ExecInfo {
                path: "/usr/bin/ls".into(),
                path_truncated: false,
                argv: vec!["ls".into()],
                argv_truncated: false,
                cwd: "/".into(),
            }),
        );
        exec.context = Some(crate::event::ContextRef {
            tool_call: "toolu_1".into(),
            tool: "Bash".into(),
            prompt_id: None,
            how: crate::event::Attribution::Subtree,
        });
        b.take(&exec);
        b.take(&at(
            30,
            Body::ToolResult(ToolResultInfo {
                agent: "claude-code".into(),
                agent_session: "a".into(),
                id: "toolu_1".into(),
                tool: "Bash".into(),
                failed: false,
                duration_ms: Some(20),
                refused: 0,
                told: None,
            }),
        ));
        b.take(&at(40, Body::SessionEnd));
        let (traces, logs) = b.drain(&resource("h"));
        let spans = traces.unwrap()["resourceSpans"][0]["scopeSpans"][0]["spans"].clone();
        let sid = "00000000000000aa";
        assert_eq!(spans[0]["name"], "execute_tool Bash");
        assert_eq!(spans[0]["parentSpanId"], session_span_id(sid));
        assert_eq!(spans[0]["spanId"], call_span_id(sid, "toolu_1"));
        assert_eq!(spans[0]["startTimeUnixNano"], "1700000000010000000");
        assert_eq!(spans[1]["name"], "invoke_agent claude-code");
        assert_eq!(spans[1]["traceId"], trace_id(sid));
        assert_eq!(trace_id(sid).len(), 32);
        let rec = &logs.unwrap()["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
        assert_eq!(rec["spanId"], call_span_id(sid, "toolu_1"));
        assert!(b.is_empty());
    }
}
