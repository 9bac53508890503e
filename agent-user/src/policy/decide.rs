//! Decisions on exec and file paths taken in userspace from the event stream. They
//! complete what the kernel does not (yet) decide itself, so they can only record:
//! a denied action is reported as `alerted`, enforced by `none`.

use super::{Default, Located, Profile, pattern::Pattern};

/// What a path access is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Exec,
    Read,
    Write,
}

/// A profile's verdict and the rule behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub denied: bool,
    /// `file:line (field[i])` or `<category>.default`.
    pub rule: String,
}

/// A rule list with its field name.
type Rules<'a> = (&'static str, &'a [Located<Pattern>]);

fn first_match(
    p: &Profile,
    field: &str,
    list: &[Located<Pattern>],
    path: &str,
    home: &str,
) -> Option<String> {
    list.iter()
        .position(|l| l.value.matches(path, home))
        .map(|i| format!("{}:{} ({field}[{i}])", p.source, list[i].line))
}

/// Whether the kernel's decision is the whole decision for `access`: the default allows,
/// every deny rule has a kernel form and no allow list names a rule. A path the kernel
/// let through is then allowed by the category default, and userspace need not match it.
pub fn kernel_decides(p: &Profile, access: Access) -> bool {
    use super::pattern::KernelForm;
    let (default, deny, allows): (_, &[Located<Pattern>], [&[Located<Pattern>]; 2]) = match access {
        Access::Exec => (p.file.exec.default, &p.exec_deny, [&p.exec_allow, &[]]),
        Access::Read | Access::Write => (
            p.file.files.default,
            &p.files_deny,
            [&p.files_read, &p.files_write],
        ),
    };
    default == Default::Allow
        && deny
            .iter()
            .all(|l| l.value.kernel_form() != KernelForm::UserspaceOnly)
        && allows.iter().all(|a| a.is_empty())
}

/// Deny wins over allow; then the allow lists; then the category default.
pub fn decide(p: &Profile, access: Access, path: &str, home: &str) -> Verdict {
    let (category, default, deny, allows): (_, _, Rules<'_>, Vec<Rules<'_>>) = match access {
        Access::Exec => (
            "exec",
            p.file.exec.default,
            ("exec.deny", &p.exec_deny[..]),
            vec![("exec.allow", &p.exec_allow[..])],
        ),
        Access::Read => (
            "files",
            p.file.files.default,
            ("files.deny", &p.files_deny[..]),
            vec![
                ("files.read", &p.files_read[..]),
                ("files.write", &p.files_write[..]),
            ],
        ),
        Access::Write => (
            "files",
            p.file.files.default,
            ("files.deny", &p.files_deny[..]),
            vec![("files.write", &p.files_write[..])],
        ),
    };
    if let Some(rule) = first_match(p, deny.0, deny.1, path, home) {
        return Verdict { denied: true, rule };
    }
    for (field, list) in allows {
        if let Some(rule) = first_match(p, field, list, path, home) {
            return Verdict {
                denied: false,
                rule,
            };
        }
    }
    Verdict {
        denied: default == Default::Deny,
        rule: format!("{category}.default"),
    }
}

/// Whether `O_*` flags ask for write access.
/// An `O_PATH` open: a handle on the path, with no access to the content. Not judged
/// (as the kernel's open hook does not see it either).
pub fn is_path_only(flags: u32) -> bool {
    const O_PATH: u32 = 0o10_000_000;
    flags & O_PATH != 0
}

pub fn is_write(flags: u32) -> bool {
    const O_ACCMODE: u32 = 0o3;
    const O_CREAT: u32 = 0o100;
    const O_TRUNC: u32 = 0o1000;
    flags & O_ACCMODE != 0 || flags & (O_CREAT | O_TRUNC) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse;

    const P: &str = "name: t\ndescription: d\nowners: { business: b, technical: t }\nmode: enforce\n\
exec:\n  default: allow\n  deny: [/usr/bin/nc]\n\
files:\n  default: deny\n  read: [/etc/**]\n  write: [~/project/**]\n  deny: [/etc/shadow, ~/.ssh/**]\n";

    #[test]
    fn deny_wins_then_allow_lists_then_default() {
        let p = parse("t.yaml", P).unwrap();
        let h = "/home/a";
        let d = |acc, path: &str| decide(&p, acc, path, h);
        assert_eq!(
            d(Access::Read, "/etc/shadow"),
            Verdict {
                denied: true,
                rule: "t.yaml:12 (files.deny[0])".into()
            }
        );
        assert!(!d(Access::Read, "/etc/hostname").denied);
        assert!(
            d(Access::Write, "/etc/hostname").denied,
            "read list does not grant writes"
        );
        assert!(!d(Access::Write, "/home/a/project/x").denied);
        assert!(
            !d(Access::Read, "/home/a/project/x").denied,
            "writable implies readable"
        );
        assert!(d(Access::Read, "/home/a/.ssh/id_rsa").denied);
        assert_eq!(d(Access::Read, "/var/x").rule, "files.default");
        assert!(d(Access::Exec, "/usr/bin/nc").denied);
        assert_eq!(
            d(Access::Exec, "/usr/bin/git"),
            Verdict {
                denied: false,
                rule: "exec.default".into()
            }
        );
        assert!(is_write(0o1) && is_write(0o100) && !is_write(0o2000000));
    }
}
