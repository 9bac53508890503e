//! Agent hooks: the agents' own mechanisms for running a command at each prompt and
//! around each tool call, with `agentwarden hook <dialect>` as that command. The hook
//! reads the agent's JSON on stdin, asks the daemon over the hook socket (which only
//! processes inside a session may use, and only about their own session), and answers
//! the agent in its dialect: a `tools:` refusal before the call, the reason for a
//! refusal inside the call after it.
//!
//! What a hook reports is the agent's claim: the daemon records it as such, and the
//! kernel's actions stay the ground truth.

pub mod claude;
pub mod cmd;
pub mod codex;
pub mod gemini;
pub mod install;

use clap::ValueEnum;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default hook socket: beside the control socket, connectable by every user (what it
/// accepts is decided from the peer's session, not its uid).
pub const DEFAULT_HOOK_SOCKET: &str = "/run/agentwarden/hook.sock";

/// Set by `agentwarden run` for the agent: the hook socket its hooks ask.
pub const HOOK_SOCKET_ENV: &str = "AGENTWARDEN_HOOK_SOCKET";
/// Set by `run` where a `tools:` rule may hold a call for a person: how long the hook
/// waits for the daemon's answer, in seconds.
pub const HOOK_ANSWER_ENV: &str = "AGENTWARDEN_HOOK_ANSWER_SECS";

/// Largest hook input taken (a tool input is the agent's whole command or file text).
pub const INPUT_MAX: usize = 1024 * 1024;

/// An agent's hook mechanism.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Dialect {
    /// Claude Code's hooks (`PreToolUse`, `PostToolUse`, `UserPromptSubmit`, …), wired
    /// by `run` through its `--settings` option.
    ClaudeCode,
    /// Codex CLI's hooks (the same events and JSON, the turn's id as `turn_id`), wired
    /// by `run` through `-c hooks.<event>=…` overrides.
    CodexCli,
    /// Gemini CLI's hooks (`BeforeAgent`, `BeforeTool`, `AfterTool`, …; no call id),
    /// wired by `run` through a system-defaults file of the session's.
    GeminiCli,
}

/// How `run` wires an agent's hooks: options on its command line, or environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wiring {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::ClaudeCode => "claude-code",
            Dialect::CodexCli => "codex-cli",
            Dialect::GeminiCli => "gemini-cli",
        }
    }

    /// Whether a raw input (perhaps not JSON at all) is a question before a tool call:
    /// one the hook must refuse when it cannot be asked.
    pub fn asks_before_a_call(self, raw: &[u8]) -> bool {
        match self {
            Dialect::ClaudeCode | Dialect::CodexCli => claude::asks_before_a_call(raw),
            Dialect::GeminiCli => gemini::asks_before_a_call(raw),
        }
    }

    /// Whether the agent gives no id to its calls: the daemon numbers them by what they
    /// are ([`gemini::call_key`]).
    pub fn numbers_calls(self) -> bool {
        self == Dialect::GeminiCli
    }

    /// Whether `cmd` starts this agent (its program, or the script an interpreter runs,
    /// names it): `run` only adds the agent's own options to the agent.
    pub fn is_agent_command(self, cmd: &[std::ffi::OsString]) -> bool {
        let word = match self {
            Dialect::ClaudeCode => "claude",
            Dialect::CodexCli => "codex",
            Dialect::GeminiCli => "gemini",
        };
        cmd.iter().take(2).any(|a| {
            std::path::Path::new(a)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().contains(word))
        })
    }

    /// What wires hooks running `command` into the agent of session `session` (hex id):
    /// options `run` appends to its command line, environment it sets.
    /// `timeout_secs`: how long the agent lets each hook run (where a tool call may be
    /// held for a person; else the agent's default).
    pub fn wiring(
        self,
        command: &str,
        timeout_secs: Option<u64>,
        session: &str,
    ) -> anyhow::Result<Wiring> {
        Ok(match self {
            Dialect::ClaudeCode => Wiring {
                args: vec![
                    "--settings".into(),
                    claude::settings_timed(command, timeout_secs).to_string(),
                ],
                env: Vec::new(),
            },
            Dialect::CodexCli => Wiring {
                args: codex::wiring_args(command),
                env: Vec::new(),
            },
            Dialect::GeminiCli => {
                let path =
                    gemini::write_defaults(session, command, timeout_secs.map(|s| s * 1000))?;
                Wiring {
                    args: Vec::new(),
                    env: vec![(gemini::DEFAULTS_ENV.into(), path.display().to_string())],
                }
            }
        })
    }

    /// The hook's output for `answer` to the event named `event`, and its exit code.
    pub fn render(self, event: &str, answer: &HookAnswer) -> (Option<String>, u8) {
        match self {
            // Codex takes Claude Code's answers as they are.
            Dialect::ClaudeCode | Dialect::CodexCli => claude::render(event, answer),
            Dialect::GeminiCli => gemini::render(event, answer),
        }
    }
}

/// What the daemon keeps of a prompt's text (`daemon --prompts`): prompts can carry
/// what people paste into them (secrets, personal data).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum PromptText {
    /// The text.
    Store,
    /// Only its SHA-256 (a prompt can still be matched against a known text).
    #[default]
    Sha256,
    /// Neither: that there was a prompt, and its length.
    None,
}

/// What a hook reported, in the daemon's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookEvent {
    /// The agent's session started (or resumed).
    SessionStart { agent_session: String },
    /// A prompt: the start of a turn.
    Prompt {
        agent_session: String,
        prompt_id: Option<String>,
        text: String,
    },
    /// A tool call is about to be made: the daemon answers it.
    ToolStart(ToolReport),
    /// A tool call ended.
    ToolEnd {
        call: ToolReport,
        failed: bool,
        duration_ms: Option<u64>,
    },
    /// The turn ended.
    Stop { agent_session: String },
    /// The agent's session ended.
    SessionEnd { agent_session: String },
}

/// A tool call as reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolReport {
    pub agent_session: String,
    pub id: String,
    pub tool: String,
    pub input: serde_json::Value,
    pub prompt_id: Option<String>,
}

/// The daemon's answer to a hook.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HookAnswer {
    /// The caller is in no session: nothing was recorded, nothing to say.
    #[serde(default)]
    pub outside: bool,
    /// The tool call must not be made: why (rule, file:line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny: Option<String>,
    /// Text for the model after the call: what agentwarden refused in it, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

/// A hook input the daemon cannot take, with what is wrong.
pub fn parse(dialect: Dialect, input: &serde_json::Value) -> Result<HookEvent, String> {
    match dialect {
        Dialect::ClaudeCode => claude::parse(input, "prompt_id"),
        Dialect::CodexCli => claude::parse(input, "turn_id"),
        Dialect::GeminiCli => gemini::parse(input),
    }
}
