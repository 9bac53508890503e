//! The profiles the daemon knows: the shipped ones (embedded from `rules/`) and the
//! `*.yaml` files of an optional rules directory. A file that fails to parse is reported
//! with its location and the last good version of that profile stays in force.

use std::{collections::BTreeMap, fs, path::Path};

use crate::policy::{
    self, Diagnostic, Profile, Severity, landlock::LandlockPlan, pattern::KernelForm,
};

/// Shipped profiles, embedded so the daemon runs with no files on disk.
pub const EMBEDDED: &[(&str, &str)] = &[
    ("rules/demo.yaml", include_str!("../../rules/demo.yaml")),
    (
        "rules/lockdown.yaml",
        include_str!("../../rules/lockdown.yaml"),
    ),
    (
        "rules/claude-code.yaml",
        include_str!("../../rules/claude-code.yaml"),
    ),
    (
        "rules/codex-cli.yaml",
        include_str!("../../rules/codex-cli.yaml"),
    ),
    (
        "rules/gemini-cli.yaml",
        include_str!("../../rules/gemini-cli.yaml"),
    ),
    ("rules/aider.yaml", include_str!("../../rules/aider.yaml")),
    (
        "rules/mcp-server.yaml",
        include_str!("../../rules/mcp-server.yaml"),
    ),
];

/// Kernel session flags a profile asks for, and the program that must be attached to
/// carry them out. Rules live in the policy maps; the one flag is deny-every-exec
/// (`exec.default: deny` with no allow list, `block`, in enforce mode), decided in
/// `bprm_check_security` without a rule lookup.
pub fn session_flags(profile: &Profile) -> (u32, Option<&'static str>) {
    let f = &profile.file;
    if f.mode == policy::Mode::Enforce
        && f.exec.default == policy::Default::Deny
        && profile.exec_allow.is_empty()
        && f.exec.on_violation == policy::OnViolation::Block
    {
        (
            agent_common::session::SESSION_FLAG_DENY_EXEC,
            Some("bprm_check_security"),
        )
    } else {
        (0, None)
    }
}

/// The LSM program that refuses a category's denials before the operation.
fn lsm_program(category: &str) -> &'static str {
    if category == "exec" {
        "bprm_check_security"
    } else {
        "file_open"
    }
}

/// The settings of one path category (exec or files) that decide how denials are met.
struct Category<'a> {
    name: &'static str,
    default: policy::Default,
    on_violation: policy::OnViolation,
    fallback: Option<policy::Fallback>,
    deny: &'a [policy::Located<policy::pattern::Pattern>],
}

fn path_categories(p: &Profile) -> [Category<'_>; 2] {
    let f = &p.file;
    [
        Category {
            name: "exec",
            default: f.exec.default,
            on_violation: f.exec.on_violation,
            fallback: f.exec.fallback,
            deny: &p.exec_deny,
        },
        Category {
            name: "file",
            default: f.files.default,
            on_violation: f.files.on_violation,
            fallback: f.files.fallback,
            deny: &p.files_deny,
        },
    ]
}

/// Programs (or the `fanotify` refusal layer) that must be attached for the profile's
/// `block` and `kill` decisions to be carried out on this host (principle: never
/// downgrade silently); each entry lists alternatives, one of which must be attached. A
/// `block` of execs or opens needs BPF-LSM, or the refusal layer when every deny rule
/// names a file or a tree (a name pattern has nothing to mark), unless the profile names
/// `fallback: kill`.
pub fn required_programs(p: &Profile) -> Vec<&'static [&'static str]> {
    let mut out: Vec<&'static [&'static str]> = Vec::new();
    if let (_, Some(_)) = session_flags(p) {
        out.push(&["bprm_check_security"]);
    }
    let f = &p.file;
    if f.mode != policy::Mode::Enforce {
        return out;
    }
    for c in path_categories(p) {
        // Held by the refusal layer alone: there is no other way to hold an open.
        if c.on_violation == policy::OnViolation::Ask && !c.deny.is_empty() {
            out.push(&[REFUSAL]);
            continue;
        }
        let in_kernel = c
            .deny
            .iter()
            .any(|l| l.value.kernel_form() != KernelForm::UserspaceOnly);
        if in_kernel && c.on_violation == policy::OnViolation::Block && c.fallback.is_none() {
            let markable = !has_name_rules(c.deny);
            out.push(match (c.name, markable) {
                ("exec", true) => &["bprm_check_security", REFUSAL],
                ("exec", false) => &["bprm_check_security"],
                (_, true) => &["file_open", REFUSAL],
                (_, false) => &["file_open"],
            });
        }
    }
    let net = &f.network;
    // A held connection is answered through the refusal layer's book of requests.
    if net.on_violation == policy::OnViolation::Ask {
        out.push(&[REFUSAL]);
    }
    // A redirect is carried out by the same programs, whatever `on_violation` says.
    if (net.on_violation != policy::OnViolation::Alert
        && (net.default == policy::Default::Deny || !p.net_deny.is_empty()))
        || !p.net_redirect.is_empty()
    {
        out.extend([
            &["connect4"][..],
            &["connect6"][..],
            &["sendmsg4"][..],
            &["sendmsg6"][..],
        ]);
    }
    out
}

/// The refusal layer's name in the program table.
pub const REFUSAL: &str = "fanotify";

/// Whether any deny rule is a name pattern (`**/.env`): refused only by BPF-LSM, which
/// sees every open; the refusal layer marks named objects only.
fn has_name_rules(deny: &[policy::Located<policy::pattern::Pattern>]) -> bool {
    deny.iter()
        .any(|l| l.value.kernel_form() == KernelForm::Basename)
}

/// What the profile asks for that this host carries out differently than written: a
/// `block` done as its `kill` fallback where BPF-LSM is missing, and rules only judged in
/// userspace (recorded as `alerted`). Reported at enrolment, never silent.
pub fn enforcement_gaps(
    p: &Profile,
    attached: &dyn Fn(&str) -> bool,
    landlock: Option<&LandlockPlan>,
) -> Vec<String> {
    let f = &p.file;
    if f.mode != policy::Mode::Enforce {
        return Vec::new();
    }
    let mut gaps = Vec::new();
    for c in path_categories(p) {
        let (cat, deny) = (c.name, c.deny);
        let any = !deny.is_empty() || c.default == policy::Default::Deny;
        if !any
            || matches!(
                c.on_violation,
                policy::OnViolation::Alert | policy::OnViolation::Ask
            )
        {
            continue;
        }
        if cat == "exec" && session_flags(p).1.is_some() {
            continue;
        }
        if c.on_violation == policy::OnViolation::Block
            && c.fallback == Some(policy::Fallback::Kill)
            && !attached(lsm_program(cat))
        {
            if !attached(REFUSAL) {
                gaps.push(format!(
                    "{cat} `block` is carried out as its `fallback: kill` on this host: \
                     neither the BPF-LSM {} hook nor the fanotify refusal layer is attached",
                    lsm_program(cat)
                ));
            } else if has_name_rules(deny) {
                gaps.push(format!(
                    "{cat} deny rules naming a file or a tree are refused (fanotify), and so \
                     are the files name patterns (`**/name`) match in and above the session's \
                     directory when it starts; other files such a pattern matches (made \
                     later, or elsewhere) are met by the `fallback: kill` on this host: the \
                     BPF-LSM {} hook is not attached",
                    lsm_program(cat)
                ));
            }
        }
        let wildcard = deny
            .iter()
            .any(|l| l.value.kernel_form() == KernelForm::UserspaceOnly);
        if wildcard {
            gaps.push(format!(
                "{cat} deny patterns with a wildcard inside the path are judged in userspace \
                 and recorded as alerts"
            ));
        }
        let by_landlock = landlock.is_some_and(|l| {
            if cat == "exec" {
                l.exec_restricted
            } else {
                l.files
            }
        });
        if c.default == policy::Default::Deny && !by_landlock {
            gaps.push(format!(
                "{cat} allow lists under `default: deny` are judged in userspace and recorded \
                 as alerts (Landlock carries them for `run` sessions when every entry is a \
                 path or a `/dir/**` tree and the kernel has Landlock)"
            ));
        }
    }
    let net = &f.network;
    if net.default == policy::Default::Deny
        && net.on_violation != policy::OnViolation::Alert
        && !attached("socket_create")
    {
        gaps.push(
            "packet sockets are refused by dropping CAP_NET_RAW in `run` sessions; in \
             `attach` sessions they are killed at socket(2)'s exit, and one made through \
             io_uring is not stopped: the BPF-LSM socket_create hook is not attached"
                .to_owned(),
        );
    }
    gaps
}

/// Capabilities `run` drops before it executes the agent: `CAP_NET_RAW` where the
/// network default is deny and violations are acted on. Raw and packet sockets are then
/// refused by the kernel's own capability check, by every route (io_uring included) and
/// on every kernel, and setuid or file-capability programs cannot bring it back (it
/// leaves the bounding set). Monitor and `alert` keep it: they record, not refuse.
pub fn dropped_capabilities(p: &Profile) -> Vec<String> {
    let f = &p.file;
    if f.mode == policy::Mode::Enforce
        && f.network.default == policy::Default::Deny
        && f.network.on_violation != policy::OnViolation::Alert
    {
        vec!["CAP_NET_RAW".to_owned()]
    } else {
        Vec::new()
    }
}

/// Profiles by name.
#[derive(Clone, Debug, Default)]
pub struct ProfileSet {
    profiles: BTreeMap<String, Profile>,
}

impl ProfileSet {
    /// The shipped profiles (a broken shipped profile is a build bug, caught by tests).
    pub fn embedded() -> Result<Self, Vec<Diagnostic>> {
        let mut set = Self::default();
        for (source, text) in EMBEDDED {
            let p = policy::parse(source, text)?;
            set.profiles.insert(p.file.name.clone(), p);
        }
        Ok(set)
    }

    /// Loads `dir/*.yaml` over the current set. Returns every diagnostic; a file with
    /// errors leaves the previous version of its profile (if any) in place.
    pub fn load_dir(&mut self, dir: &Path) -> Vec<Diagnostic> {
        let mut diags = Vec::new();
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                diags.push(Diagnostic {
                    file: dir.display().to_string(),
                    line: 0,
                    column: 0,
                    field: String::new(),
                    message: format!("cannot read the rules directory: {e}"),
                    hint: None,
                    severity: Severity::Error,
                });
                return diags;
            }
        };
        let mut paths: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        paths.sort();
        for path in paths {
            match policy::load(&path) {
                Ok(p) => {
                    diags.extend(p.warnings.iter().cloned());
                    self.profiles.insert(p.file.name.clone(), p);
                }
                Err(errors) => diags.extend(errors),
            }
        }
        diags
    }

    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.profiles.keys().cloned().collect()
    }

    /// The profiles that shadow `agent` (`shadow_of`).
    pub fn shadows_of<'a>(&'a self, agent: &'a str) -> impl Iterator<Item = &'a Profile> + 'a {
        self.profiles
            .values()
            .filter(move |p| p.file.shadow_of.as_deref() == Some(agent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_profiles_parse_without_errors() {
        let set = ProfileSet::embedded().unwrap_or_else(|d| panic!("{d:#?}"));
        for name in [
            "demo",
            "lockdown",
            "claude-code",
            "codex-cli",
            "gemini-cli",
            "aider",
            "mcp-server",
        ] {
            let p = set.get(name).unwrap_or_else(|| panic!("{name} missing"));
            // Coding-agent profiles deny credentials and all but their declared network.
            if !matches!(name, "demo" | "lockdown") {
                let deny: Vec<&str> = p.files_deny.iter().map(|l| l.value.source()).collect();
                for cred in [
                    "~/.ssh/**",
                    "~/.aws/**",
                    "~/.config/gcloud/**",
                    "~/.kube/**",
                    "/etc/shadow",
                    "**/.env",
                ] {
                    assert!(deny.contains(&cred), "{name} does not deny {cred}");
                }
                assert_eq!(p.file.network.default, policy::Default::Deny, "{name}");
            }
        }
        assert_eq!(
            session_flags(set.get("lockdown").unwrap()).0,
            agent_common::session::SESSION_FLAG_DENY_EXEC
        );
        assert_eq!(session_flags(set.get("claude-code").unwrap()).0, 0);
    }

    /// An `ask` can only be held by the refusal layer: a host without it refuses the
    /// session; monitor mode holds nothing and needs nothing.
    #[test]
    fn ask_needs_the_refusal_layer_alone() {
        let text = |mode: &str| {
            format!(
                "name: t\ndescription: d\nowners: {{ business: b, technical: t }}\nmode: {mode}\n\
                 files:\n  deny: [/srv/a]\n  on_violation: ask\n"
            )
        };
        let p = policy::parse("t.yaml", &text("enforce")).unwrap();
        assert_eq!(required_programs(&p), [&[REFUSAL][..]]);
        assert!(enforcement_gaps(&p, &|_| false, None).is_empty());
        let p = policy::parse("t.yaml", &text("monitor")).unwrap();
        assert!(required_programs(&p).is_empty());
    }

    #[test]
    fn shipped_schema_is_current() {
        let shipped = include_str!("../../rules/agentwarden-profile.schema.json");
        assert_eq!(
            shipped,
            policy::json_schema(),
            "run `agentwarden profile schema > rules/agentwarden-profile.schema.json`"
        );
    }

    #[test]
    fn a_bad_file_keeps_the_last_good_version() {
        let dir = tempfile::tempdir().unwrap();
        let good =
            "name: team\ndescription: d\nowners: { business: b, technical: t }\nmode: monitor\n";
        fs::write(dir.path().join("team.yaml"), good).unwrap();
        let mut set = ProfileSet::embedded().unwrap();
        assert!(set.load_dir(dir.path()).is_empty());
        assert_eq!(set.get("team").unwrap().file.mode, policy::Mode::Monitor);
        let bad =
            "name: team\ndescription: d\nowners: { business: b, technical: t }\nmode: sometimes\n";
        fs::write(dir.path().join("team.yaml"), bad).unwrap();
        let diags = set.load_dir(dir.path());
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!((diags[0].line, diags[0].field.as_str()), (4, "mode"));
        assert!(diags[0].file.ends_with("team.yaml"));
        assert_eq!(
            set.get("team").unwrap().file.mode,
            policy::Mode::Monitor,
            "last good state kept"
        );
    }
}
