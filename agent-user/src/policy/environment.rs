//! `environment:` rules for `run` sessions: variables removed or set before the agent
//! starts, so an agent does not inherit credentials its profile does not need (cloud
//! keys, tokens). The daemon reads the enrolling process's environment, works out the
//! change by name, records the names (never the values) in the session's identity
//! context, and `run` applies it to the agent it executes. In `monitor` mode the change
//! is recorded as what would be done, and nothing changes.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use wildmatch::WildMatch;

use super::{Located, Mode, Profile};

/// The `environment:` section.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvRules {
    /// Variable names (or patterns, `*` and `?`: `AWS_*`, `*_TOKEN`) removed.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub remove: Vec<Spanned<String>>,
    /// Variables set to these values (replacing the inherited ones): a proxy, a
    /// credential helper, a scoped token's file.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
}

/// A validated name pattern.
#[derive(Clone, Debug)]
pub struct EnvPattern {
    pub text: String,
    matcher: WildMatch,
}

impl EnvPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty()
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '*' | '?'))
        {
            return Err(format!(
                "`{s}` is not a variable name or a pattern of one (letters, digits, `_`, `*`, `?`)"
            ));
        }
        Ok(Self {
            text: s.to_owned(),
            matcher: WildMatch::new(s),
        })
    }

    pub fn matches(&self, name: &str) -> bool {
        self.matcher.matches(name)
    }
}

/// Whether `name` can be set (a shell could name it).
pub fn settable(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What `run` does to its environment before executing the agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvPlan {
    pub remove: Vec<String>,
    pub set: Vec<(String, String)>,
}

/// The change, by name only: what the session's identity context records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvChange {
    /// Inherited variables taken away.
    pub removed: Vec<String>,
    /// Inherited variables given the profile's value.
    pub replaced: Vec<String>,
    /// Variables the agent gets that it did not inherit.
    pub added: Vec<String>,
    /// Whether the change was made (`monitor` mode records it only).
    pub applied: bool,
}

impl EnvChange {
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.replaced.is_empty() && self.added.is_empty()
    }
}

/// The plan and the change for an enrolling process with these variable names; no plan
/// in `monitor` mode (nothing changes) or when there is nothing to do.
pub fn plan<'a>(
    p: &Profile,
    inherited: impl IntoIterator<Item = &'a str>,
) -> (Option<EnvPlan>, EnvChange) {
    let set = &p.file.environment.set;
    let mut inherited: Vec<&str> = inherited.into_iter().collect();
    inherited.sort_unstable();
    inherited.dedup();
    let mut change = EnvChange {
        applied: p.file.mode == Mode::Enforce,
        ..EnvChange::default()
    };
    for name in &inherited {
        if set.contains_key(*name) {
            change.replaced.push((*name).to_owned());
        } else if p.env_remove.iter().any(|r| r.value.matches(name)) {
            change.removed.push((*name).to_owned());
        }
    }
    change.added = set
        .keys()
        .filter(|k| inherited.binary_search(&k.as_str()).is_err())
        .cloned()
        .collect();
    let plan = (change.applied && !change.is_empty()).then(|| EnvPlan {
        remove: change.removed.clone(),
        set: set.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    });
    (plan, change)
}

/// Validates the section: located errors for bad patterns and names.
pub fn check(
    rules: &EnvRules,
    text: &str,
    errors: &mut Vec<(u64, u64, String, String)>,
) -> Vec<Located<EnvPattern>> {
    let mut out = Vec::new();
    for (i, s) in rules.remove.iter().enumerate() {
        let (line, column) = (s.referenced.line(), s.referenced.column());
        match EnvPattern::parse(&s.value) {
            Ok(value) => out.push(Located {
                value,
                line,
                column,
            }),
            Err(e) => errors.push((line, column, format!("environment.remove[{i}]"), e)),
        }
    }
    for (k, v) in &rules.set {
        let line = text
            .lines()
            .position(|l| l.trim_start().starts_with(&format!("{k}:")))
            .map_or(0, |i| i as u64 + 1);
        if !settable(k) {
            errors.push((
                line,
                1,
                format!("environment.set.{k}"),
                format!("`{k}` is not a variable name"),
            ));
        }
        if v.contains('\0') {
            errors.push((
                line,
                1,
                format!("environment.set.{k}"),
                "a value cannot hold a NUL byte".to_owned(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(mode: &str, env: &str) -> Profile {
        let text = format!(
            "name: t\ndescription: t\nowners: {{ business: b, technical: t }}\nmode: {mode}\nenvironment:\n{env}"
        );
        crate::policy::parse("t.yaml", &text).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn credentials_go_a_proxy_comes_and_only_names_are_recorded() {
        let p = profile(
            "enforce",
            "  remove: [\"AWS_*\", \"*_TOKEN\", NPM_CONFIG_PROXY]\n  set:\n    HTTPS_PROXY: http://127.0.0.1:3128\n    GITHUB_TOKEN: none\n",
        );
        let (plan, change) = plan(
            &p,
            [
                "AWS_SECRET_ACCESS_KEY",
                "GITHUB_TOKEN",
                "PATH",
                "GITLAB_TOKEN",
                "HOME",
            ],
        );
        assert_eq!(change.removed, ["AWS_SECRET_ACCESS_KEY", "GITLAB_TOKEN"]);
        assert_eq!(change.replaced, ["GITHUB_TOKEN"], "set wins over remove");
        assert_eq!(change.added, ["HTTPS_PROXY"]);
        assert!(change.applied);
        let plan = plan.expect("a plan");
        assert_eq!(plan.remove, change.removed);
        assert!(
            plan.set
                .contains(&("HTTPS_PROXY".into(), "http://127.0.0.1:3128".into()))
        );
        let json = serde_json::to_string(&change).unwrap();
        assert!(!json.contains("3128"), "values are never recorded: {json}");
    }

    #[test]
    fn monitor_mode_records_what_would_change_and_changes_nothing() {
        let p = profile("monitor", "  remove: [\"AWS_*\"]\n");
        let (plan, change) = plan(&p, ["AWS_ACCESS_KEY_ID"]);
        assert_eq!(plan, None);
        assert_eq!((change.removed.len(), change.applied), (1, false));
    }

    #[test]
    fn bad_names_are_refused_with_their_line() {
        let text = "name: t\ndescription: t\nowners: { business: b, technical: t }\nmode: enforce\nenvironment:\n  remove: [\"AWS KEY\"]\n  set:\n    1BAD: x\n";
        let e = crate::policy::parse("t.yaml", text).unwrap_err();
        let fields: Vec<(u64, &str)> = e.iter().map(|d| (d.line, d.field.as_str())).collect();
        assert_eq!(
            fields,
            [(6, "environment.remove[0]"), (8, "environment.set.1BAD")],
            "{e:?}"
        );
    }
}
