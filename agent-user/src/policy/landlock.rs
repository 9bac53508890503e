//! The Landlock layer for `agentwarden run` sessions: a profile whose files (or exec)
//! default is `deny` grants only its allow lists, which Landlock expresses exactly when
//! every entry is a path or a `/dir/**` tree. The daemon computes the plan at enrolment;
//! `run` restricts itself with it before it executes the agent, so the agent and all it
//! spawns get `EACCES` outside the lists. (Deny lists inside allowed trees stay with the
//! kernel path rules: Landlock can only grant.)

use landlock::{
    ABI, AccessFs, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus,
};
use serde::{Deserialize, Serialize};

use super::{
    Default, Located, Mode, OnViolation, Profile,
    pattern::{KernelForm, Pattern},
};

/// The newest Landlock ABI this build asks for; older kernels get what they support,
/// which the status reports (never silently).
const ABI_WANTED: ABI = ABI::V5;

/// What a `run` session's Landlock domain allows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockPlan {
    /// File access outside these lists is refused (`files.default: deny`).
    pub files: bool,
    /// Execution outside `exec` is refused (`exec.default: deny`).
    pub exec_restricted: bool,
    pub read: Vec<String>,
    pub write: Vec<String>,
    pub exec: Vec<String>,
}

/// The plan for a profile, with `~` as `home`; `None` when the profile has no default-deny
/// category to enforce or an allow entry Landlock cannot express (then the allow list is
/// judged in userspace and recorded, as `lint` says).
pub fn plan(p: &Profile, home: &str) -> Option<LandlockPlan> {
    let f = &p.file;
    if f.mode != Mode::Enforce {
        return None;
    }
    let files = f.files.default == Default::Deny && f.files.on_violation == OnViolation::Block;
    let exec = f.exec.default == Default::Deny
        && f.exec.on_violation == OnViolation::Block
        && !p.exec_allow.is_empty();
    if !files && !exec {
        return None;
    }
    let paths = |list: &[Located<Pattern>]| -> Option<Vec<String>> {
        list.iter().map(|l| expressible(&l.value, home)).collect()
    };
    Some(LandlockPlan {
        files,
        exec_restricted: exec,
        read: if files {
            paths(&p.files_read)?
        } else {
            Vec::new()
        },
        write: if files {
            paths(&p.files_write)?
        } else {
            Vec::new()
        },
        exec: if exec {
            paths(&p.exec_allow)?
        } else {
            Vec::new()
        },
    })
}

/// The absolute path Landlock grants beneath for a pattern, if it is a path or a tree.
fn expressible(p: &Pattern, home: &str) -> Option<String> {
    let src = p.source();
    let text = match p.kernel_form() {
        KernelForm::Exact => src,
        KernelForm::Prefix => src.strip_suffix("/**").unwrap_or(src),
        KernelForm::Basename | KernelForm::UserspaceOnly => return None,
    };
    let text = if text.is_empty() { "/" } else { text };
    Some(match text.strip_prefix('~') {
        Some(rest) if p.is_home_relative() => format!("{}{rest}", home.trim_end_matches('/')),
        _ => text.to_owned(),
    })
}

/// How the restriction went.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Full,
    /// The kernel's Landlock ABI lacks some rights this build asks for.
    Partial,
}

/// Restricts the calling process (and everything it executes) to the plan. Paths that do
/// not exist are skipped. Fails when the kernel has no Landlock at all.
pub fn apply(plan: &LandlockPlan) -> anyhow::Result<Applied> {
    let read: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::ReadDir;
    let write = AccessFs::from_write(ABI_WANTED);
    let mut handled = BitFlags::<AccessFs>::empty();
    if plan.files {
        handled |= read | write;
    }
    if plan.exec_restricted {
        handled |= AccessFs::Execute;
    }
    let mut rules: Vec<(&str, BitFlags<AccessFs>)> = Vec::new();
    rules.extend(plan.read.iter().map(|p| (p.as_str(), read)));
    rules.extend(plan.write.iter().map(|p| (p.as_str(), read | write)));
    rules.extend(
        plan.exec
            .iter()
            .map(|p| (p.as_str(), BitFlags::from(AccessFs::Execute))),
    );
    let mut ruleset = Ruleset::default().handle_access(handled)?.create()?;
    for (path, access) in rules {
        let Ok(fd) = PathFd::new(path) else { continue };
        let is_dir = std::fs::metadata(path).is_ok_and(|m| m.is_dir());
        // Directory-only rights cannot be granted on a file.
        let access = if is_dir {
            access
        } else {
            access & AccessFs::from_file(ABI_WANTED)
        };
        ruleset = ruleset.add_rule(PathBeneath::new(fd, access & handled))?;
    }
    let status = ruleset.restrict_self()?;
    match status.ruleset {
        RulesetStatus::FullyEnforced => Ok(Applied::Full),
        RulesetStatus::PartiallyEnforced => Ok(Applied::Partial),
        RulesetStatus::NotEnforced => anyhow::bail!("the kernel does not enforce Landlock"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse;

    fn profile(files: &str) -> Profile {
        let text = format!(
            "name: t\ndescription: d\nowners: {{ business: b, technical: t }}\nmode: enforce\n{files}"
        );
        parse("t.yaml", &text).unwrap()
    }

    #[test]
    fn default_deny_allow_lists_become_a_plan() {
        let p = profile(
            "files:\n  default: deny\n  read: [/usr/**, ~/project/**, /etc/hosts]\n  write: [/tmp/**]\n",
        );
        let plan = plan(&p, "/home/a").expect("expressible");
        assert!(plan.files && !plan.exec_restricted);
        assert_eq!(plan.read, ["/usr", "/home/a/project", "/etc/hosts"]);
        assert_eq!(plan.write, ["/tmp"]);
    }

    #[test]
    fn no_plan_for_default_allow_alerts_or_wildcards() {
        assert_eq!(
            plan(&profile("files:\n  deny: [/etc/shadow]\n"), "/h"),
            None
        );
        let alert = "files:\n  default: deny\n  read: [/usr/**]\n  on_violation: alert\n";
        assert_eq!(plan(&profile(alert), "/h"), None);
        let wild = "files:\n  default: deny\n  read: [/usr/*/lib/**]\n";
        assert_eq!(plan(&profile(wild), "/h"), None, "not expressible");
    }
}
