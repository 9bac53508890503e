//! Gemini CLI's hooks (0.61): JSON on stdin with `hook_event_name`, `session_id`,
//! `timestamp`, and per event `prompt` (`BeforeAgent`), `tool_name` and `tool_input`
//! (`BeforeTool`, `AfterTool`, with `tool_response` after), answered on stdout:
//! `{"decision": "deny", "reason": …}` before a call (the model reads the reason as the
//! call's error), `hookSpecificOutput.additionalContext` after one (appended to the
//! call's result).
//!
//! Its hooks carry no call id and its scheduler runs a turn's read-only calls side by
//! side: a call is known by what it is (tool and input, [`call_key`]), and the daemon
//! numbers the calls of each key in order ([`crate::daemon`]'s tool calls), so the
//! `AfterTool` of a call ends the oldest open call of the same tool and input. Nor has a
//! turn an id: the prompt's is made from the session, the time and the text.
//!
//! Wiring per run: Gemini CLI concatenates the `hooks` of every settings scope, and the
//! lowest, the system defaults, can be moved per process with
//! `GEMINI_CLI_SYSTEM_DEFAULTS_PATH`. `run` writes that file (the host's own system
//! defaults, if any, with agentwarden's hooks added) where Gemini CLI takes it: owned by
//! root, in directories owned by root that no one else may write ([`RUN_DIR`]). Gemini CLI
//! runs no hook in a folder it does not trust; a run it does not trust ends anyway in
//! headless mode, and interactive ones are asked.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};
use sha2::Digest as _;

use super::{HookAnswer, HookEvent, ToolReport, claude::text};

/// The hook events agentwarden registers.
pub const EVENTS: &[&str] = &[
    "SessionStart",
    "BeforeAgent",
    "BeforeTool",
    "AfterTool",
    "AfterAgent",
    "SessionEnd",
];

/// Where `run` writes a session's system defaults: root-owned directories only, as
/// Gemini CLI requires of that file and of each directory above it.
pub const RUN_DIR: &str = "/run/agentwarden-gemini";

/// The environment variable that moves Gemini CLI's system defaults.
pub const DEFAULTS_ENV: &str = "GEMINI_CLI_SYSTEM_DEFAULTS_PATH";

/// The host's own system defaults, kept under the session's.
const HOST_DEFAULTS: &str = "/etc/gemini-cli/system-defaults.json";

/// Prefix of the ids the daemon gives Gemini CLI's calls (`gemini-<key>.<n>`).
pub const KEY_PREFIX: &str = "gemini-";

/// What a call is, as a key: its tool and its input (serde_json keeps object keys
/// sorted, so the same input gives the same key before and after the call).
pub fn call_key(tool: &str, input: &Value) -> String {
    let mut h = sha2::Sha256::new();
    h.update(tool.as_bytes());
    h.update([0]);
    h.update(input.to_string().as_bytes());
    let d = h.finalize();
    format!(
        "{KEY_PREFIX}{}",
        crate::audit::chain::hex(&d[..6]).to_ascii_lowercase()
    )
}

fn tool(v: &Value) -> Result<ToolReport, String> {
    let name = text(v, "tool_name")?;
    let input = v.get("tool_input").cloned().unwrap_or(Value::Null);
    Ok(ToolReport {
        agent_session: text(v, "session_id")?,
        id: call_key(&name, &input),
        tool: name,
        input,
        prompt_id: None,
    })
}

/// The event a Gemini CLI hook input reports.
pub fn parse(v: &Value) -> Result<HookEvent, String> {
    if !v.is_object() {
        return Err("not a JSON object".to_owned());
    }
    let agent_session = text(v, "session_id")?;
    Ok(match text(v, "hook_event_name")?.as_str() {
        "SessionStart" => HookEvent::SessionStart { agent_session },
        "BeforeAgent" => {
            let prompt = text(v, "prompt")?;
            // No turn id: one made of what identifies this prompt's submission.
            let mut h = sha2::Sha256::new();
            for part in [&agent_session, &text(v, "timestamp")?, &prompt] {
                h.update(part.as_bytes());
                h.update([0]);
            }
            HookEvent::Prompt {
                agent_session,
                prompt_id: Some(format!(
                    "gemini-turn-{}",
                    crate::audit::chain::hex(&h.finalize()[..8]).to_ascii_lowercase()
                )),
                text: prompt,
            }
        }
        "BeforeTool" => HookEvent::ToolStart(tool(v)?),
        "AfterTool" => HookEvent::ToolEnd {
            call: tool(v)?,
            failed: v
                .get("tool_response")
                .and_then(|r| r.get("error"))
                .is_some_and(|e| !e.is_null()),
            duration_ms: None,
        },
        "AfterAgent" => HookEvent::Stop { agent_session },
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
        ("BeforeTool", Some(reason), _) => (
            Some(json!({ "decision": "deny", "reason": reason }).to_string()),
            0,
        ),
        ("AfterTool", _, Some(context)) => (
            Some(
                json!({ "hookSpecificOutput": {
                    "hookEventName": "AfterTool",
                    "additionalContext": context,
                } })
                .to_string(),
            ),
            0,
        ),
        _ => (None, 0),
    }
}

/// Whether a raw input (perhaps not JSON at all) is a question before a tool call.
pub fn asks_before_a_call(raw: &[u8]) -> bool {
    raw.windows(b"BeforeTool".len()).any(|w| w == b"BeforeTool")
}

/// The hooks block of a Gemini CLI settings file running `command` for every event
/// (no `matcher`: every tool; `timeout_ms` where a call may be held for a person, else
/// Gemini CLI's own 60 s).
pub fn settings(command: &str, timeout_ms: Option<u64>) -> Value {
    let mut hook = json!({ "type": "command", "command": command, "name": "agentwarden" });
    if let Some(t) = timeout_ms {
        hook["timeout"] = t.into();
    }
    let mut hooks = serde_json::Map::new();
    for e in EVENTS {
        hooks.insert((*e).to_owned(), json!([{ "hooks": [hook.clone()] }]));
    }
    json!({ "hooks": hooks })
}

/// The system-defaults file of the session `session` (its id, hex).
pub fn defaults_path(session: &str) -> PathBuf {
    Path::new(RUN_DIR).join(format!("session-{session}.json"))
}

/// Writes the session's system defaults (the host's, with the hooks running `command`
/// added) and returns its path, for [`DEFAULTS_ENV`]. Needs root: Gemini CLI takes the
/// file only from root.
pub fn write_defaults(session: &str, command: &str, timeout_ms: Option<u64>) -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let host = std::env::var_os(DEFAULTS_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(HOST_DEFAULTS));
    let mut defaults = match std::fs::read_to_string(&host) {
        Ok(t) => serde_json::from_str(&t)
            .with_context(|| format!("{}: not valid JSON", host.display()))?,
        Err(_) => Value::Object(Default::default()),
    };
    let ours = settings(command, timeout_ms);
    let hooks = defaults
        .as_object_mut()
        .with_context(|| format!("{}: not a JSON object", host.display()))?
        .entry("hooks")
        .or_insert_with(|| Value::Object(Default::default()));
    let hooks = hooks
        .as_object_mut()
        .with_context(|| format!("{}: `hooks` is not a JSON object", host.display()))?;
    for (event, entries) in ours["hooks"].as_object().into_iter().flatten() {
        let list = hooks
            .entry(event.clone())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(list) = list.as_array_mut() {
            list.extend(entries.as_array().cloned().unwrap_or_default());
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(RUN_DIR)
        .with_context(|| format!("creating {RUN_DIR}"))?;
    // Gemini CLI refuses the file if its directory is writable by others.
    std::fs::set_permissions(RUN_DIR, std::fs::Permissions::from_mode(0o755))?;
    let path = defaults_path(session);
    std::fs::write(&path, serde_json::to_string_pretty(&defaults)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn before() -> Value {
        json!({
            "session_id": "g1", "hook_event_name": "BeforeTool", "timestamp": "t",
            "tool_name": "run_shell_command", "tool_input": {"command": "ls", "description": "list"},
        })
    }

    /// A call's start and end name the same key; another input, another key.
    #[test]
    fn a_call_is_known_by_its_tool_and_input() {
        let HookEvent::ToolStart(start) = parse(&before()).unwrap() else {
            panic!()
        };
        let mut after = before();
        after["hook_event_name"] = "AfterTool".into();
        // The keys of the input in another order: the same call.
        after["tool_input"] = json!({"description": "list", "command": "ls"});
        after["tool_response"] = json!({"llmContent": "x", "error": "EPERM"});
        let HookEvent::ToolEnd { call, failed, .. } = parse(&after).unwrap() else {
            panic!()
        };
        assert_eq!(start.id, call.id);
        assert!(start.id.starts_with(KEY_PREFIX));
        assert!(failed);
        let mut other = before();
        other["tool_input"]["command"] = "pwd".into();
        let HookEvent::ToolStart(o) = parse(&other).unwrap() else {
            panic!()
        };
        assert_ne!(o.id, start.id);
    }

    #[test]
    fn a_prompt_gets_an_id_of_its_own() {
        let p = json!({"session_id": "g1", "hook_event_name": "BeforeAgent",
                       "timestamp": "2026-12-02T00:00:00Z", "prompt": "hi"});
        let HookEvent::Prompt {
            prompt_id, text, ..
        } = parse(&p).unwrap()
        else {
            panic!()
        };
        assert_eq!(text, "hi");
        assert!(prompt_id.unwrap().starts_with("gemini-turn-"));
        let mut bad = p.clone();
        bad.as_object_mut().unwrap().remove("prompt");
        assert_eq!(parse(&bad).unwrap_err(), "no `prompt`");
    }

    #[test]
    fn a_refusal_and_a_reason_are_said_in_gemini_clis_terms() {
        let deny = HookAnswer {
            deny: Some("no".into()),
            ..HookAnswer::default()
        };
        let (out, code) = render("BeforeTool", &deny);
        let v: Value = serde_json::from_str(&out.unwrap()).unwrap();
        assert_eq!(
            (v["decision"].as_str(), v["reason"].as_str()),
            (Some("deny"), Some("no"))
        );
        assert_eq!(code, 0);
        let why = HookAnswer {
            context: Some("refused".into()),
            ..HookAnswer::default()
        };
        let (out, _) = render("AfterTool", &why);
        let v: Value = serde_json::from_str(&out.unwrap()).unwrap();
        assert_eq!(v["hookSpecificOutput"]["additionalContext"], "refused");
        assert_eq!(render("AfterAgent", &why), (None, 0));
    }

    #[test]
    fn every_event_runs_the_hook_for_every_tool() {
        let s = settings("aw hook gemini-cli", Some(310_000));
        for e in EVENTS {
            let h = &s["hooks"][e][0];
            assert!(h.get("matcher").is_none(), "{e}");
            assert_eq!(h["hooks"][0]["command"], "aw hook gemini-cli");
            assert_eq!(h["hooks"][0]["timeout"], 310_000);
        }
    }
}
