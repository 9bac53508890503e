//! Tool-level rules (`tools:`): which of the agent's tools it may call, decided before
//! the call by the daemon when the agent's hook asks (`PreToolUse` in Claude Code). The
//! hook is the agent's cooperation: an agent that bypasses it meets the kernel layers,
//! which stay the backstop.
//!
//! A rule is `NAME` or `NAME(INPUT)`: `*` matches any run of characters and `?` one, in
//! both (tool names and commands are not paths: `*` crosses `/`). `INPUT` is matched
//! against what the call acts on (the command of a shell tool, the path of a file tool,
//! the URL of a fetch: [`crate::event::agent::target_of`]), the syntax Claude Code's own
//! permission rules use (`Bash(curl *)`).

use agent_common::vocab::{Action, Layer, Verdict};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use wildmatch::WildMatch;

use super::{Default, Located, Profile};
use crate::event::DecisionInfo;

/// The `tools:` section.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolRules {
    /// Tools no rule names: `allow` (the default) or `deny` (only `allow` runs).
    #[serde(default)]
    pub default: Default,
    /// `NAME` or `NAME(INPUT)` patterns that may run (with `default: deny`).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub allow: Vec<Spanned<String>>,
    /// Patterns that never run; wins over `allow`.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub deny: Vec<Spanned<String>>,
    /// `block` (the hook tells the agent no), `alert` (record only) or `ask` (the hook
    /// holds the call until a person answers: `agentwarden approve|deny`).
    #[serde(default)]
    pub on_violation: ToolViolation,
    /// `ask`: how long a held call waits for an answer (`30s`, `5m`; default 2m, at most
    /// 1h).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
    /// `ask`: what a call nobody answered in time comes to (default `deny`).
    #[serde(default)]
    pub on_timeout: super::OnTimeout,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ToolViolation {
    #[default]
    Block,
    Alert,
    Ask,
}

/// A validated `NAME(INPUT)` rule.
#[derive(Clone, Debug)]
pub struct ToolPattern {
    pub text: String,
    /// Where it is written: `tools.deny[2]`.
    pub field: String,
    name: WildMatch,
    input: Option<WildMatch>,
}

impl ToolPattern {
    /// Parses a rule; the error says what is wrong.
    pub fn parse(s: &str, field: &str) -> Result<Self, String> {
        let s = s.trim();
        let (name, input) = match s.split_once('(') {
            None => (s, None),
            Some((name, rest)) => {
                let Some(input) = rest.strip_suffix(')') else {
                    return Err(format!("`{s}`: an input pattern ends with `)`"));
                };
                (name, Some(input))
            }
        };
        if name.is_empty() || name.contains(')') || name.chars().any(char::is_whitespace) {
            return Err(format!(
                "`{s}`: a tool name (or a pattern of one) comes first"
            ));
        }
        Ok(Self {
            text: s.to_owned(),
            field: field.to_owned(),
            name: WildMatch::new(name),
            input: input.map(WildMatch::new),
        })
    }

    pub fn matches(&self, tool: &str, target: &str) -> bool {
        self.name.matches(tool) && self.input.as_ref().is_none_or(|i| i.matches(target))
    }
}

/// The profile's decision on calling `tool` on `target`; `None` where nothing is said
/// (no rule matched and the default allows).
pub fn decide(p: &Profile, tool: &str, target: &str) -> Option<DecisionInfo> {
    let rule = |l: &Located<ToolPattern>| format!("{}:{} ({})", p.source, l.line, l.value.field);
    let found = |list: &[Located<ToolPattern>]| {
        list.iter().find(|l| l.value.matches(tool, target)).cloned()
    };
    let (verdict, rule) = if let Some(l) = found(&p.tools_deny) {
        (Verdict::Deny, rule(&l))
    } else if let Some(l) = found(&p.tools_allow) {
        (Verdict::Allow, rule(&l))
    } else if p.file.tools.default == Default::Deny {
        (Verdict::Deny, "tools.default".to_owned())
    } else {
        return None;
    };
    let enforce = p.file.mode == super::Mode::Enforce;
    let (action, layer) = match (verdict, p.file.tools.on_violation) {
        (Verdict::Allow, _) => (Action::Allowed, Layer::None),
        (Verdict::Deny, ToolViolation::Block) if enforce => (Action::Blocked, Layer::Hook),
        // Held by the hook until a person answers (the answer makes it `approved` or
        // `blocked`).
        (Verdict::Deny, ToolViolation::Ask) if enforce => (Action::Held, Layer::Hook),
        (Verdict::Deny, ToolViolation::Ask) => (Action::WouldAsk, Layer::None),
        (Verdict::Deny, ToolViolation::Block | ToolViolation::Alert) => {
            (Action::Alerted, Layer::None)
        }
    };
    Some(DecisionInfo {
        decision: verdict,
        action,
        rule,
        enforced_by: layer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(extra: &str) -> Profile {
        let text = format!(
            "name: t\ndescription: t\nowners: {{ business: b, technical: t }}\nmode: enforce\n{extra}"
        );
        crate::policy::parse("t.yaml", &text).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn deny_wins_and_names_its_line() {
        let p = profile(
            "tools:\n  allow:\n    - Bash\n  deny:\n    - WebFetch\n    - \"mcp__*__delete_*\"\n    - \"Bash(*curl *)\"\n",
        );
        let d = decide(&p, "WebFetch", "https://x").expect("decision");
        assert_eq!(
            (d.decision, d.action, d.enforced_by, d.rule.as_str()),
            (
                Verdict::Deny,
                Action::Blocked,
                Layer::Hook,
                "t.yaml:9 (tools.deny[0])"
            )
        );
        let d = decide(&p, "mcp__github__delete_repo", "{}").expect("decision");
        assert_eq!(d.rule, "t.yaml:10 (tools.deny[1])");
        let d = decide(&p, "Bash", "echo x | curl -d @- http://e").expect("decision");
        assert_eq!(d.rule, "t.yaml:11 (tools.deny[2])");
        let d = decide(&p, "Bash", "ls -l").expect("allowed by its rule");
        assert_eq!(
            (d.decision, d.rule.as_str()),
            (Verdict::Allow, "t.yaml:7 (tools.allow[0])")
        );
        assert_eq!(decide(&p, "Read", "/etc/hosts"), None);
    }

    #[test]
    fn default_deny_lets_only_the_allow_list_run_and_monitor_only_records() {
        let p = profile("tools:\n  default: deny\n  allow: [Read]\n");
        assert_eq!(decide(&p, "Read", "/x").unwrap().decision, Verdict::Allow);
        let d = decide(&p, "Write", "/x").unwrap();
        assert_eq!(
            (d.action, d.rule.as_str()),
            (Action::Blocked, "tools.default")
        );
        let p = profile("tools:\n  deny: [Write]\n  on_violation: alert\n");
        let d = decide(&p, "Write", "/x").unwrap();
        assert_eq!(
            (d.decision, d.action, d.enforced_by),
            (Verdict::Deny, Action::Alerted, Layer::None)
        );
    }

    #[test]
    fn a_malformed_rule_is_refused_naming_its_line_and_field() {
        let text = "name: t\ndescription: t\nowners: { business: b, technical: t }\nmode: enforce\ntools:\n  deny:\n    - \"Bash(curl *\"\n";
        let e = crate::policy::parse("t.yaml", text).unwrap_err();
        assert_eq!(
            (e[0].line, e[0].field.as_str()),
            (7, "tools.deny[0]"),
            "{e:?}"
        );
        assert!(e[0].message.contains("ends with `)`"), "{e:?}");
    }
}
