//! Claude Code's hooks: JSON on stdin with `hook_event_name`, `session_id`,
//! `prompt_id`, and per event `prompt`, `tool_name`, `tool_input`, `tool_use_id`,
//! `tool_response`, `duration_ms` (as 2.1.x sends them); answers as `hookSpecificOutput`
//! JSON on stdout (`permissionDecision: deny` before a call, `additionalContext` after
//! one, which the model reads with the tool's result).

use serde_json::{Value, json};

use super::{HookAnswer, HookEvent, ToolReport};

/// The hook events agentwarden registers, each with `agentwarden hook claude-code`.
pub const EVENTS: &[&str] = &[
    "SessionStart",
    "UserPromptSubmit",
    "PreToolUse",
    "PostToolUse",
    "PostToolUseFailure",
    "Stop",
    "SessionEnd",
];

/// The string at `key`, or what is wrong with it (shared by the dialects' parsers).
pub(super) fn text(v: &Value, key: &str) -> Result<String, String> {
    match v.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("`{key}` is not a string")),
        None => Err(format!("no `{key}`")),
    }
}

fn opt_text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn tool(v: &Value, prompt_key: &str) -> Result<ToolReport, String> {
    Ok(ToolReport {
        agent_session: text(v, "session_id")?,
        id: text(v, "tool_use_id")?,
        tool: text(v, "tool_name")?,
        input: v.get("tool_input").cloned().unwrap_or(Value::Null),
        prompt_id: opt_text(v, prompt_key),
    })
}

/// The event a Claude Code hook input reports (Codex CLI's too: its turn's id is
/// `prompt_key`).
pub fn parse(v: &Value, prompt_key: &str) -> Result<HookEvent, String> {
    if !v.is_object() {
        return Err("not a JSON object".to_owned());
    }
    let agent_session = text(v, "session_id")?;
    Ok(match text(v, "hook_event_name")?.as_str() {
        "SessionStart" => HookEvent::SessionStart { agent_session },
        "UserPromptSubmit" => HookEvent::Prompt {
            agent_session,
            prompt_id: opt_text(v, prompt_key),
            text: text(v, "prompt")?,
        },
        "PreToolUse" => HookEvent::ToolStart(tool(v, prompt_key)?),
        name @ ("PostToolUse" | "PostToolUseFailure") => {
            // A failed call: its own event, or an error in the response.
            let response = v.get("tool_response");
            let failed = name == "PostToolUseFailure"
                || response
                    .and_then(|r| r.get("is_error"))
                    .and_then(Value::as_bool)
                    == Some(true)
                || response
                    .and_then(|r| r.get("interrupted"))
                    .and_then(Value::as_bool)
                    == Some(true);
            HookEvent::ToolEnd {
                call: tool(v, prompt_key)?,
                failed,
                duration_ms: v.get("duration_ms").and_then(Value::as_u64),
            }
        }
        "Stop" | "SubagentStop" => HookEvent::Stop { agent_session },
        "SessionEnd" => HookEvent::SessionEnd { agent_session },
        other => {
            return Err(format!(
                "`hook_event_name` `{other}` is not one agentwarden takes"
            ));
        }
    })
}

/// What the hook prints for `answer` to the event named `event`, and its exit code.
pub fn render(event: &str, answer: &HookAnswer) -> (Option<String>, u8) {
    match (event, &answer.deny, &answer.context) {
        ("PreToolUse", Some(reason), _) => (
            Some(
                json!({ "hookSpecificOutput": {
                    "hookEventName": "PreToolUse",
                    "permissionDecision": "deny",
                    "permissionDecisionReason": reason,
                } })
                .to_string(),
            ),
            0,
        ),
        (e @ ("PostToolUse" | "PostToolUseFailure"), _, Some(context)) => (
            Some(
                json!({ "hookSpecificOutput": {
                    "hookEventName": e,
                    "additionalContext": context,
                } })
                .to_string(),
            ),
            0,
        ),
        _ => (None, 0),
    }
}

/// Whether a raw input (perhaps not JSON at all) is a question before a tool call: one
/// the hook must refuse when it cannot be asked.
pub fn asks_before_a_call(raw: &[u8]) -> bool {
    raw.windows(b"PreToolUse".len()).any(|w| w == b"PreToolUse")
}

/// The hooks block of a Claude Code settings file running `command` for every event.
pub fn settings(command: &str) -> Value {
    settings_for(EVENTS, command)
}

/// As [`settings`], each hook allowed `timeout_secs` (Claude Code's own default is 60 s,
/// and a hook it stops is an error it goes on after: a call held for a person longer than
/// that would run unanswered).
pub fn settings_timed(command: &str, timeout_secs: Option<u64>) -> Value {
    let mut s = settings(command);
    if let Some(t) = timeout_secs
        && let Some(hooks) = s["hooks"].as_object_mut()
    {
        for entry in hooks.values_mut() {
            for matcher in entry.as_array_mut().into_iter().flatten() {
                for h in matcher["hooks"].as_array_mut().into_iter().flatten() {
                    h["timeout"] = t.into();
                }
            }
        }
    }
    s
}

/// A hooks block running `command` for `events`.
pub fn settings_for(events: &[&str], command: &str) -> Value {
    let mut hooks = serde_json::Map::new();
    for e in events {
        let entry = if e.contains("Tool") {
            json!([{ "matcher": "*", "hooks": [{ "type": "command", "command": command }] }])
        } else {
            json!([{ "hooks": [{ "type": "command", "command": command }] }])
        };
        hooks.insert((*e).to_owned(), entry);
    }
    json!({ "hooks": hooks })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where a call may be held for a person, every hook is allowed the wait (Claude
    /// Code would stop it at its own 60 s and go on with the call).
    #[test]
    fn a_held_call_s_hook_is_allowed_its_wait() {
        let s = settings_timed("aw hook claude-code", Some(310));
        let pre = &s["hooks"]["PreToolUse"][0]["hooks"][0];
        assert_eq!(
            (pre["command"].as_str(), pre["timeout"].as_u64()),
            (Some("aw hook claude-code"), Some(310))
        );
        assert!(
            settings_timed("x", None)["hooks"]["PreToolUse"][0]["hooks"][0]
                .get("timeout")
                .is_none()
        );
    }

    fn pre() -> Value {
        json!({
            "session_id": "s1", "prompt_id": "p1", "hook_event_name": "PreToolUse",
            "tool_name": "Bash", "tool_input": {"command": "ls"}, "tool_use_id": "toolu_1",
        })
    }

    #[test]
    fn the_events_of_a_turn_are_read() {
        let HookEvent::ToolStart(t) = parse(&pre(), "prompt_id").unwrap() else {
            panic!()
        };
        assert_eq!(
            (t.id.as_str(), t.tool.as_str(), t.prompt_id.as_deref()),
            ("toolu_1", "Bash", Some("p1"))
        );
        let mut post = pre();
        post["hook_event_name"] = "PostToolUse".into();
        post["tool_response"] = json!({"stdout": "", "interrupted": false});
        post["duration_ms"] = 12.into();
        assert!(matches!(
            parse(&post, "prompt_id").unwrap(),
            HookEvent::ToolEnd {
                failed: false,
                duration_ms: Some(12),
                ..
            }
        ));
        let prompt =
            json!({"session_id": "s1", "hook_event_name": "UserPromptSubmit", "prompt": "hi"});
        assert!(
            matches!(parse(&prompt, "prompt_id").unwrap(), HookEvent::Prompt { text, .. } if text == "hi")
        );
    }

    #[test]
    fn bad_input_says_what_is_wrong() {
        assert_eq!(
            parse(&json!([1]), "prompt_id").unwrap_err(),
            "not a JSON object"
        );
        let mut v = pre();
        v.as_object_mut().unwrap().remove("tool_use_id");
        assert_eq!(parse(&v, "prompt_id").unwrap_err(), "no `tool_use_id`");
        v["hook_event_name"] = "Bogus".into();
        assert!(parse(&v, "prompt_id").unwrap_err().contains("`Bogus`"));
        v["session_id"] = 5.into();
        assert_eq!(
            parse(&v, "prompt_id").unwrap_err(),
            "`session_id` is not a string"
        );
    }

    #[test]
    fn a_refusal_and_a_reason_are_said_in_claude_codes_terms() {
        let deny = HookAnswer {
            deny: Some("no".into()),
            ..HookAnswer::default()
        };
        let (out, code) = render("PreToolUse", &deny);
        let v: Value = serde_json::from_str(&out.unwrap()).unwrap();
        assert_eq!(v["hookSpecificOutput"]["permissionDecision"], "deny");
        assert_eq!(code, 0);
        let why = HookAnswer {
            context: Some("refused".into()),
            ..HookAnswer::default()
        };
        let (out, _) = render("PostToolUse", &why);
        assert!(out.unwrap().contains("additionalContext"));
        assert_eq!(render("Stop", &why), (None, 0));
    }
}
