//! Agent context: prompts and tool calls as the agent's hook reported them, and the
//! tool call a kernel action happened under. All of it is the agent's own claim (its
//! hook runs inside the session and can lie); the kernel's actions stay the ground
//! truth, and every record of this module says which process reported it.

use serde::{Deserialize, Serialize};

/// A prompt the agent was given: the start of a turn.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PromptInfo {
    /// The hook dialect that reported it (`claude-code`, `gemini-cli`, …).
    pub agent: String,
    /// The agent's own session id.
    pub agent_session: String,
    /// The agent's id of the prompt, where it gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_id: Option<String>,
    /// The text, unless the daemon keeps only its digest or nothing (`--prompts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// SHA-256 of the text, hex (absent with `--prompts none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Characters in the text.
    pub chars: u64,
}

/// A tool call the agent is about to make.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ToolCallInfo {
    pub agent: String,
    pub agent_session: String,
    /// The agent's id of the call (Claude Code's `tool_use_id`).
    pub id: String,
    pub tool: String,
    /// What the call acts on: the command, path, URL or query (else the input).
    pub target: String,
    /// The whole input as JSON text, cut at [`INPUT_MAX`] bytes.
    pub input: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub input_truncated: bool,
    /// The prompt of the turn the call belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_id: Option<String>,
    /// The agent's process (the one that runs its tools), as the daemon found it.
    pub agent_pid: u32,
}

/// A tool call ended.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ToolResultInfo {
    pub agent: String,
    pub agent_session: String,
    pub id: String,
    pub tool: String,
    /// Whether the agent reported the call as failed.
    pub failed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Actions of the call that a profile refused (blocked or killed).
    pub refused: u64,
    /// What agentwarden told the agent about the call (why it was refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub told: Option<String>,
}

/// How an action was tied to its tool call.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Attribution {
    /// A process forked by the agent while the call was open, or a descendant of one:
    /// the call's own subtree (it stays the call's when it outlives it).
    Subtree,
    /// The agent's own process, while the call was open (its in-process tools).
    Interval,
    /// Several calls were open when the process was forked or the action made: the
    /// latest is named.
    Ambiguous,
    /// No hook reported calls in this session: each direct child of the agent is one
    /// invocation, named by its command line.
    Inferred,
}

impl Attribution {
    pub fn as_str(self) -> &'static str {
        match self {
            Attribution::Subtree => "subtree",
            Attribution::Interval => "interval",
            Attribution::Ambiguous => "ambiguous",
            Attribution::Inferred => "inferred",
        }
    }
}

/// The tool call an event happened under.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContextRef {
    pub tool_call: String,
    pub tool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_id: Option<String>,
    pub how: Attribution,
}

/// Bytes of a tool input kept in a record.
pub const INPUT_MAX: usize = 8 * 1024;

/// The input keys that name what a tool acts on, in the order they are looked for
/// (Claude Code, Gemini CLI and Codex CLI spell them so).
const TARGET_KEYS: &[&str] = &[
    "command",
    "file_path",
    "notebook_path",
    "absolute_path",
    "path",
    "url",
    "query",
    "pattern",
    "prompt",
];

/// What a tool call acts on, for rules and display: the first of [`TARGET_KEYS`] that
/// the input holds as a string (a command given as a list is joined with spaces), else
/// the input as JSON.
pub fn target_of(input: &serde_json::Value) -> String {
    for key in TARGET_KEYS {
        match input.get(key) {
            Some(serde_json::Value::String(s)) => return s.clone(),
            Some(serde_json::Value::Array(parts)) if parts.iter().all(|p| p.is_string()) => {
                return parts
                    .iter()
                    .filter_map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(" ");
            }
            _ => {}
        }
    }
    match input {
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `s` cut to at most `max` bytes on a character boundary, and whether it was cut.
pub fn cut(s: &str, max: usize) -> (String, bool) {
    if s.len() <= max {
        return (s.to_owned(), false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (s[..end].to_owned(), true)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_target_is_the_command_path_or_url() {
        assert_eq!(
            target_of(&json!({"command": "ls -l", "description": "x"})),
            "ls -l"
        );
        assert_eq!(target_of(&json!({"file_path": "/etc/hosts"})), "/etc/hosts");
        assert_eq!(
            target_of(&json!({"url": "https://x", "prompt": "p"})),
            "https://x"
        );
        assert_eq!(
            target_of(&json!({"command": ["bash", "-lc", "ls"]})),
            "bash -lc ls"
        );
        assert_eq!(target_of(&json!({"a": 1})), r#"{"a":1}"#);
    }

    #[test]
    fn cutting_keeps_whole_characters() {
        assert_eq!(cut("héllo", 2), ("h".to_owned(), true));
        assert_eq!(cut("abc", 3), ("abc".to_owned(), false));
    }
}
