//! `agentwarden hooks install`: agentwarden's hooks written into an agent's settings, for
//! agents started any other way than `agentwarden run` (which wires them itself).
//! Existing settings and hooks are kept; installing twice changes nothing.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use clap::ValueEnum;
use serde_json::Value;

use super::{Dialect, claude};

/// Whose settings get the hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scope {
    /// The user's own settings (`~/.claude/settings.json`).
    User,
    /// The project's shared settings (`<dir>/.claude/settings.json`).
    Project,
    /// Every user of the host, not overridable by them: Claude Code's managed settings
    /// drop-in (`/etc/claude-code/managed-settings.d/50-agentwarden.json`).
    Managed,
}

/// Claude Code's host-wide managed settings drop-in directory.
pub const CLAUDE_MANAGED_DIR: &str = "/etc/claude-code/managed-settings.d";

/// The settings file of `scope` (`dir`: the project, or the home for `user`).
pub fn settings_path(dialect: Dialect, scope: Scope, dir: &Path) -> PathBuf {
    match (dialect, scope) {
        (Dialect::ClaudeCode, Scope::User | Scope::Project) => dir.join(".claude/settings.json"),
        (Dialect::ClaudeCode, Scope::Managed) => {
            Path::new(CLAUDE_MANAGED_DIR).join("50-agentwarden.json")
        }
        // Codex keeps hooks in `hooks.json` beside its config; trusted when managed.
        (Dialect::CodexCli, Scope::User | Scope::Project) => dir.join(".codex/hooks.json"),
        (Dialect::CodexCli, Scope::Managed) => Path::new("/etc/codex/hooks.json").to_owned(),
        (Dialect::GeminiCli, Scope::User | Scope::Project) => dir.join(".gemini/settings.json"),
        // Gemini CLI's system settings: they win over the user's and the project's (and
        // must be owned by root).
        (Dialect::GeminiCli, Scope::Managed) => {
            Path::new("/etc/gemini-cli/settings.json").to_owned()
        }
    }
}

/// `settings` with agentwarden's hook `command` added to every event it registers;
/// false when every one was there already.
pub fn merge(dialect: Dialect, settings: &mut Value, command: &str) -> Result<bool> {
    let Some(obj) = settings.as_object_mut() else {
        bail!("the settings are not a JSON object");
    };
    let hooks = obj
        .entry("hooks")
        .or_insert_with(|| Value::Object(Default::default()));
    let Some(hooks) = hooks.as_object_mut() else {
        bail!("`hooks` is not a JSON object");
    };
    // Codex's hooks.json has Claude Code's shape.
    let ours = match dialect {
        Dialect::ClaudeCode => claude::settings(command),
        Dialect::CodexCli => claude::settings_for(super::codex::EVENTS, command),
        Dialect::GeminiCli => super::gemini::settings(command, None),
    };
    let mut changed = false;
    for (event, entries) in ours["hooks"].as_object().into_iter().flatten() {
        let list = hooks
            .entry(event.clone())
            .or_insert_with(|| Value::Array(Vec::new()));
        let Some(list) = list.as_array_mut() else {
            bail!("`hooks.{event}` is not a JSON list");
        };
        let present = list.iter().any(|m| {
            m["hooks"]
                .as_array()
                .is_some_and(|hs| hs.iter().any(|h| h["command"] == command))
        });
        if !present {
            list.extend(entries.as_array().cloned().unwrap_or_default());
            changed = true;
        }
    }
    Ok(changed)
}

/// Installs the hooks running `command` into the settings at `path` (created if absent,
/// written whole through a temporary file).
pub fn install(dialect: Dialect, path: &Path, command: &str) -> Result<bool> {
    let mut settings = match fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON; nothing was changed", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Object(Default::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let changed = merge(dialect, &mut settings, command)
        .with_context(|| format!("{}: nothing was changed", path.display()))?;
    if changed {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = path.with_extension("json.agentwarden-tmp");
        fs::write(&tmp, serde_json::to_string_pretty(&settings)? + "\n")
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn installing_keeps_what_is_there_and_twice_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".claude/settings.json");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let theirs = json!({
            "model": "x",
            "hooks": { "PreToolUse": [{ "matcher": "Bash", "hooks": [{ "type": "command", "command": "their-hook" }] }] },
        });
        fs::write(&path, theirs.to_string()).unwrap();
        assert!(
            install(
                Dialect::ClaudeCode,
                &path,
                "/usr/bin/agentwarden hook claude-code"
            )
            .unwrap()
        );
        let v: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["model"], "x");
        let pre = v["hooks"]["PreToolUse"].as_array().unwrap();
        assert_eq!(pre.len(), 2);
        assert_eq!(pre[0]["hooks"][0]["command"], "their-hook");
        assert_eq!(
            pre[1]["hooks"][0]["command"],
            "/usr/bin/agentwarden hook claude-code"
        );
        for e in claude::EVENTS {
            assert!(v["hooks"][e].is_array(), "{e}");
        }
        assert!(
            !install(
                Dialect::ClaudeCode,
                &path,
                "/usr/bin/agentwarden hook claude-code"
            )
            .unwrap()
        );
    }

    /// Gemini CLI's settings get its events, for every tool (a `matcher` there is a
    /// regular expression: none is written), beside what the user has.
    #[test]
    fn gemini_clis_settings_get_its_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = settings_path(Dialect::GeminiCli, Scope::Project, dir.path());
        assert!(path.ends_with(".gemini/settings.json"));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, json!({ "general": { "vimMode": true } }).to_string()).unwrap();
        assert!(install(Dialect::GeminiCli, &path, "aw hook gemini-cli").unwrap());
        let v: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["general"]["vimMode"], true);
        for e in super::super::gemini::EVENTS {
            let h = &v["hooks"][e][0];
            assert_eq!(h["hooks"][0]["command"], "aw hook gemini-cli", "{e}");
            assert!(h.get("matcher").is_none(), "{e}");
        }
        assert!(!install(Dialect::GeminiCli, &path, "aw hook gemini-cli").unwrap());
    }

    #[test]
    fn broken_settings_are_left_alone_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.json");
        fs::write(&path, "{ not json").unwrap();
        let e = format!(
            "{:#}",
            install(Dialect::ClaudeCode, &path, "x").unwrap_err()
        );
        assert!(e.contains("settings.json: not valid JSON"), "{e}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "{ not json");
    }
}
