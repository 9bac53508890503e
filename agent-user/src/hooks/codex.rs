//! Codex CLI's hooks: Claude Code's events and JSON (`tool_use_id` is the model's call
//! id, `turn_id` the turn's), configured per run with `-c hooks.<Event>=[…]` overrides.
//! Hooks from the command line run only when trusted: `run` passes
//! `--dangerously-bypass-hook-trust`, which trusts exactly the hooks it adds (the
//! user's own untrusted hooks stay as the user configured them), and
//! `-c features.hooks=true`, so a user's `hooks = false` cannot switch agentwarden's off.

/// The events agentwarden registers.
pub const EVENTS: &[&str] = &[
    "SessionStart",
    "UserPromptSubmit",
    "PreToolUse",
    "PostToolUse",
    "Stop",
    "SessionEnd",
];

/// `command` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The overrides that make Codex run `command` at every event agentwarden takes.
pub fn wiring_args(command: &str) -> Vec<String> {
    let mut args = vec![
        "--dangerously-bypass-hook-trust".to_owned(),
        "-c".to_owned(),
        "features.hooks=true".to_owned(),
    ];
    for e in EVENTS {
        args.push("-c".to_owned());
        args.push(format!(
            "hooks.{e}=[{{hooks=[{{type=\"command\",command={}}}]}}]",
            toml_string(command)
        ));
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_is_quoted_for_toml() {
        let args = wiring_args("'/opt/a \"b\"/agentwarden' hook codex-cli");
        assert!(args.contains(&"--dangerously-bypass-hook-trust".to_owned()));
        let pre = args
            .iter()
            .find(|a| a.starts_with("hooks.PreToolUse="))
            .unwrap();
        assert_eq!(
            pre,
            r#"hooks.PreToolUse=[{hooks=[{type="command",command="'/opt/a \"b\"/agentwarden' hook codex-cli"}]}]"#
        );
    }
}
