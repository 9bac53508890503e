//! `match:`: which programs the kernel enrols into a session of the profile when a
//! process outside every session executes them (see `agent_common::selector` for how
//! the kernel judges them). Checked here with located diagnostics; compiled into map
//! entries by [`compile`].

use std::collections::BTreeMap;

use agent_common::{
    policy::{CATEGORY_EXEC, FORM_EXACT, FORM_PREFIX, PathRuleKey, PathRuleValue, fnv},
    selector::{
        ARGV_EXACT, ARGV_SUFFIX, ArgvKey, MAX_ARGV_PATTERNS, MAX_SELECTORS, NEEDS_ARGV,
        NEEDS_CGROUP, NEEDS_EXE, SELECTOR_PROFILE, SelectorConfig, SelectorEntry, argv_hash,
    },
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One selector as written: every condition it names must hold.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// The executable the kernel runs, by its resolved path: exact (`/usr/bin/node`) or
    /// a tree (`/opt/agents/**`). For a script this is its interpreter: name the script
    /// with `argv`.
    #[serde(default)]
    pub exe: Option<String>,
    /// Tokens the argument vector must hold, all of them: exact (`aider`, `-m`) or a
    /// path ending (`**/claude-code/cli.js`: the token is that or ends in `/` and that).
    #[serde(default)]
    pub argv: Vec<String>,
    /// A cgroup v2 path (`/system.slice/agent.service`): processes in it or below it,
    /// whether it exists yet or not.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// Labels of the process's container, as its runtime holds them (the kubelet's
    /// `io.kubernetes.pod.namespace`, `io.kubernetes.pod.name`, a pod's own labels):
    /// all must be equal.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A selector after checking, with where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedSelector {
    pub selector: Selector,
    /// `exe` and, where it exists and differs, the path it resolves to (the kernel
    /// sees the resolved executable).
    pub exe_paths: Vec<(u8, String)>,
    /// `argv` as `(form, text)`.
    pub argv: Vec<(u8, String)>,
    /// `file:line` of the selector, for the sessions it starts.
    pub place: String,
    pub field: String,
}

impl CheckedSelector {
    /// How a session it started says it was enrolled.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.place, self.field)
    }
}

/// `(form, text)` of a compiled condition.
pub type Form = (u8, String);
/// A problem with a selector: `(field suffix, message, hint)`.
pub type Problem = (String, String, String);

/// A selector's executable paths and argv patterns, or its problems.
pub fn check(s: &Selector) -> Result<(Vec<Form>, Vec<Form>), Vec<Problem>> {
    let mut errors = Vec::new();
    if s.exe.is_none() && s.argv.is_empty() && s.cgroup.is_none() && s.labels.is_empty() {
        errors.push((
            String::new(),
            "a selector needs at least one of `exe`, `argv`, `cgroup`, `labels`".to_owned(),
            "`- exe: /usr/bin/node` with `argv: [\"**/claude-code/cli.js\"]`".to_owned(),
        ));
    }
    if s.exe.is_none() && s.cgroup.is_none() && s.labels.is_empty() && !s.argv.is_empty() {
        errors.push((
            ".argv".to_owned(),
            "`argv` needs an `exe`, `cgroup` or `labels` beside it".to_owned(),
            "the kernel reads the arguments only of the executables (or cgroups) a selector \
             names: `exe: /usr/bin/python3` with `argv: [\"**/bin/aider\"]`"
                .to_owned(),
        ));
    }
    let mut exe_paths = Vec::new();
    if let Some(exe) = &s.exe {
        match exe_form(exe) {
            Some((form, text)) => {
                exe_paths.push((form, text.clone()));
                if form == FORM_EXACT
                    && let Ok(real) = std::fs::canonicalize(&text)
                    && real.to_str().is_some_and(|r| r != text)
                {
                    exe_paths.push((form, real.display().to_string()));
                }
            }
            None => errors.push((
                ".exe".to_owned(),
                format!("`{exe}` is not an absolute path or `/dir/**` tree"),
                "the kernel compares the executable's resolved path: `/usr/bin/node`, \
                 `/opt/agents/**`"
                    .to_owned(),
            )),
        }
    }
    let mut argv = Vec::new();
    for (i, t) in s.argv.iter().enumerate() {
        let (form, text) = match t.strip_prefix("**/") {
            Some(rest) => (ARGV_SUFFIX, rest),
            None => (ARGV_EXACT, t.as_str()),
        };
        if text.is_empty() || text.contains(['*', '?', '\0']) || text.len() > 255 {
            errors.push((
                format!(".argv[{i}]"),
                format!("`{t}` is not a token the kernel can match"),
                "an exact token (`aider`) or a path ending (`**/bin/aider`), without other \
                 wildcards, at most 255 bytes"
                    .to_owned(),
            ));
        } else {
            argv.push((form, text.to_owned()));
        }
    }
    if let Some(c) = &s.cgroup
        && (!c.starts_with('/')
            || c.len() >= agent_common::selector::CGROUP_PATH_MAX
            || c.contains("/../"))
    {
        errors.push((
            ".cgroup".to_owned(),
            format!("`{c}` is not a cgroup v2 path"),
            "a path from the v2 hierarchy's root, as /proc/PID/cgroup shows it after `0::`: \
             `/system.slice/agent.service`"
                .to_owned(),
        ));
    }
    if errors.is_empty() {
        Ok((exe_paths, argv))
    } else {
        Err(errors)
    }
}

fn exe_form(exe: &str) -> Option<(u8, String)> {
    if !exe.starts_with('/') || exe.contains("/../") || exe.contains("/./") {
        return None;
    }
    if let Some(dir) = exe.strip_suffix("/**") {
        return (!dir.is_empty() && !dir.contains('*')).then(|| (FORM_PREFIX, dir.to_owned()));
    }
    (!exe.contains(['*', '?']) && exe.len() > 1).then(|| (FORM_EXACT, exe.to_owned()))
}

/// The selectors of every profile compiled into the kernel's entries, in profile order
/// (the first match wins).
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    pub entries: Vec<SelectorEntry>,
    pub config: SelectorConfig,
    pub exe_rules: Vec<(PathRuleKey, PathRuleValue)>,
    pub argv: BTreeMap<ArgvKey, u64>,
    /// cgroup paths with the bits of the selectors naming them.
    pub cgroups: BTreeMap<String, u32>,
    /// Per selector index: the profile, the selector, its session flags.
    pub selectors: Vec<(String, CheckedSelector)>,
    /// Selectors left out, with why (more than the kernel holds).
    pub left_out: Vec<String>,
}

/// Compiles `(profile name, profile id, session flags, selectors)`.
pub fn compile<'a>(
    profiles: impl IntoIterator<Item = (&'a str, u32, u32, &'a [CheckedSelector])>,
) -> Compiled {
    let mut c = Compiled::default();
    let mut patterns: BTreeMap<(u8, String), u32> = BTreeMap::new();
    let mut exe: BTreeMap<(u8, String), u32> = BTreeMap::new();
    for (name, profile_id, flags, selectors) in profiles {
        for s in selectors {
            let index = c.entries.len() as u32;
            if index >= MAX_SELECTORS {
                c.left_out.push(format!(
                    "{}: more than {MAX_SELECTORS} selectors across all profiles",
                    s.describe()
                ));
                continue;
            }
            let mut mask = 0u64;
            let mut fits = true;
            for p in &s.argv {
                let next = patterns.len() as u32;
                let bit = *patterns.entry(p.clone()).or_insert(next);
                if bit >= MAX_ARGV_PATTERNS {
                    fits = false;
                    break;
                }
                mask |= 1 << bit;
            }
            if !fits {
                patterns.retain(|_, b| *b < MAX_ARGV_PATTERNS);
                c.left_out.push(format!(
                    "{}: more than {MAX_ARGV_PATTERNS} argv patterns across all profiles",
                    s.describe()
                ));
                continue;
            }
            let bit = 1u32 << index;
            let mut needs = 0;
            if !s.exe_paths.is_empty() {
                needs |= NEEDS_EXE;
                c.config.exe_selectors |= bit;
                for p in &s.exe_paths {
                    *exe.entry(p.clone()).or_default() |= bit;
                }
            }
            if mask != 0 {
                needs |= NEEDS_ARGV;
            }
            if let Some(cg) = &s.selector.cgroup {
                needs |= NEEDS_CGROUP;
                c.config.cgroup_selectors |= bit;
                *c.cgroups
                    .entry(cg.trim_end_matches('/').to_owned())
                    .or_default() |= bit;
            }
            if !s.selector.labels.is_empty() {
                // The daemon writes the bits of the containers whose labels match.
                needs |= NEEDS_CGROUP;
                c.config.cgroup_selectors |= bit;
                c.config.label_selectors |= bit;
            }
            c.entries.push(SelectorEntry {
                profile_id,
                needs,
                argv_mask: mask,
                session_flags: flags,
                _pad: 0,
            });
            c.selectors.push((name.to_owned(), s.clone()));
        }
    }
    c.config.count = c.entries.len() as u32;
    for ((form, text), bits) in exe {
        if form == FORM_PREFIX {
            c.config.exe_prefix_depths |= 1 << text.matches('/').count().min(63);
        }
        c.exe_rules.push((
            PathRuleKey {
                hash: fnv(text.as_bytes()),
                profile_id: SELECTOR_PROFILE,
                owner_uid: 0,
                category: CATEGORY_EXEC,
                form,
                _pad: [0; 6],
            },
            PathRuleValue {
                rule_id: bits,
                flags: 0,
            },
        ));
    }
    for ((form, text), bit) in patterns {
        *c.argv
            .entry(ArgvKey {
                hash: argv_hash(text.as_bytes()),
                form,
                _pad: [0; 7],
            })
            .or_default() |= 1 << bit;
    }
    c
}

impl Compiled {
    /// The bits of the selectors whose labels `labels` satisfies.
    pub fn label_bits(&self, labels: &BTreeMap<String, String>) -> u32 {
        let mut bits = 0;
        for (i, (_, s)) in self.selectors.iter().enumerate() {
            let l = &s.selector.labels;
            if !l.is_empty() && l.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                bits |= 1 << i;
            }
        }
        bits
    }

    /// Whether any selector names labels (the daemon then looks up containers).
    pub fn has_labels(&self) -> bool {
        self.selectors
            .iter()
            .any(|(_, s)| !s.selector.labels.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(s: Selector) -> CheckedSelector {
        let (exe_paths, argv) = check(&s).expect("valid");
        CheckedSelector {
            selector: s,
            exe_paths,
            argv,
            place: "x.yaml:3".into(),
            field: "match[0]".into(),
        }
    }

    #[test]
    fn argv_hashes_run_backwards_like_the_kernel_scan() {
        // The kernel folds a token's bytes from its last to its first.
        let mut h = agent_common::policy::FNV_OFFSET;
        for b in b"cli.js".iter().rev() {
            h = agent_common::policy::fnv_step(h, *b);
        }
        assert_eq!(argv_hash(b"cli.js"), h);
        assert_ne!(argv_hash(b"ab"), fnv(b"ab"));
    }

    #[test]
    fn selectors_compile_to_bits_per_condition() {
        let a = checked(Selector {
            exe: Some("/opt/agents/**".into()),
            ..Default::default()
        });
        let b = checked(Selector {
            exe: Some("/usr/bin/env".into()),
            argv: vec!["**/claude-code/cli.js".into(), "--print".into()],
            ..Default::default()
        });
        let c = checked(Selector {
            cgroup: Some("/system.slice/agent.service/".into()),
            labels: [("app".to_owned(), "claude".to_owned())].into(),
            ..Default::default()
        });
        let sels = [a, b];
        let more = [c];
        let out = compile([("p", 3, 0, &sels[..]), ("q", 4, 1, &more[..])]);
        assert_eq!(out.config.count, 3);
        assert_eq!(out.config.exe_selectors, 0b011);
        assert_eq!(out.config.cgroup_selectors, 0b100);
        assert_eq!(out.config.exe_prefix_depths, 1 << 2);
        assert_eq!(out.entries[1].needs, NEEDS_EXE | NEEDS_ARGV);
        assert_eq!(out.entries[1].argv_mask.count_ones(), 2);
        assert_eq!(
            (out.entries[2].profile_id, out.entries[2].session_flags),
            (4, 1)
        );
        assert_eq!(out.cgroups.get("/system.slice/agent.service"), Some(&0b100));
        let labels = [
            ("app".to_owned(), "claude".to_owned()),
            ("x".into(), "y".into()),
        ]
        .into();
        assert_eq!(out.label_bits(&labels), 0b100);
        assert_eq!(out.label_bits(&BTreeMap::new()), 0);
        let suffix = ArgvKey {
            hash: argv_hash(b"claude-code/cli.js"),
            form: ARGV_SUFFIX,
            _pad: [0; 7],
        };
        assert!(out.argv.contains_key(&suffix));
    }

    #[test]
    fn bad_selectors_name_their_field() {
        let errs = check(&Selector {
            exe: Some("node".into()),
            argv: vec!["**/*.js".into()],
            cgroup: Some("system.slice".into()),
            ..Default::default()
        })
        .unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(fields, [".exe", ".argv[0]", ".cgroup"]);
        assert!(check(&Selector::default()).is_err());
    }
}
