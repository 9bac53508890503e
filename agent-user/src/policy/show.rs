//! `agentwarden profile lint` and `profile show`: what a profile compiles to.

use std::fmt::Write as _;

use super::{
    CompiledDestination, Located, Profile, Target,
    pattern::{KernelForm, Pattern},
};

/// How a deny rule is matched, and which layers refuse it by which routes.
fn form(p: &Pattern) -> &'static str {
    match p.kernel_form() {
        KernelForm::Exact => {
            "kernel: exact path (hash) and its inode; refused by lsm, else by fanotify \
             (any open, read of a held descriptor, exec or copy by content)"
        }
        KernelForm::Prefix => {
            "kernel: directory tree (hash per level) and its files' inodes; refused by lsm, \
             else by fanotify (marks on the tree's directories: files added later too)"
        }
        KernelForm::Basename => {
            "kernel: file name (hash); refused by lsm only, else its fallback (kill at the \
             syscall's exit: open syscalls and execs, not io_uring or handles)"
        }
        KernelForm::UserspaceOnly => "userspace: alert-only",
    }
}

/// How an allow-list entry (meaningful under `default: deny`) is carried out.
fn allow_form(p: &Pattern) -> &'static str {
    match p.kernel_form() {
        KernelForm::Exact | KernelForm::Prefix => {
            "landlock in `run` sessions; userspace alert-only for `attach`"
        }
        KernelForm::Basename | KernelForm::UserspaceOnly => "userspace: alert-only",
    }
}

fn patterns(out: &mut String, label: &str, list: &[Located<Pattern>]) {
    let form = if label == "deny" { form } else { allow_form };
    for l in list {
        let _ = writeln!(
            out,
            "    {label:<6} {:<32} line {:<4} {}",
            l.value.source(),
            l.line,
            form(&l.value)
        );
    }
}

fn destinations(out: &mut String, label: &str, list: &[Located<CompiledDestination>]) {
    for l in list {
        let target = match &l.value.target {
            Target::Cidr(c) => format!("{}/{}", c.addr, c.prefix),
            Target::Host(h) => format!("{h} (resolved by the daemon)"),
            Target::Nameservers => "the system's name servers (from /etc/resolv.conf)".to_owned(),
        };
        let ports: Vec<String> = l
            .value
            .ports
            .iter()
            .map(|r| {
                if r.lo == r.hi {
                    r.lo.to_string()
                } else {
                    format!("{}-{}", r.lo, r.hi)
                }
            })
            .collect();
        let _ = writeln!(
            out,
            "    {label:<6} {target:<40} ports {:<12} line {}",
            ports.join(","),
            l.line
        );
    }
}

/// Human-readable compiled form.
pub fn show(p: &Profile) -> String {
    let f = &p.file;
    let mut out = String::new();
    let _ = writeln!(out, "profile {} ({})", f.name, p.source);
    let _ = writeln!(out, "  {}", f.description);
    let _ = writeln!(
        out,
        "  owners: business={}, technical={}",
        f.owners.business, f.owners.technical
    );
    let _ = writeln!(out, "  mode: {:?}", f.mode);
    let cat = |out: &mut String,
               name: &str,
               d: super::Default,
               v: super::OnViolation,
               fb: Option<super::Fallback>| {
        let _ = writeln!(
            out,
            "  {name}: default {d:?}, on violation {v:?}, fallback {}",
            fb.map_or("none".into(), |x| format!("{x:?}"))
        );
    };
    cat(
        &mut out,
        "exec",
        f.exec.default,
        f.exec.on_violation,
        f.exec.fallback,
    );
    patterns(&mut out, "allow", &p.exec_allow);
    patterns(&mut out, "deny", &p.exec_deny);
    let _ = writeln!(
        out,
        "    fileless {:?}: programs with no name (memfd, O_TMPFILE, deleted) — deleted and \
         O_TMPFILE ones refused by fanotify, memory files by lsm, else killed at exec",
        f.exec.fileless
    );
    cat(
        &mut out,
        "files",
        f.files.default,
        f.files.on_violation,
        f.files.fallback,
    );
    patterns(&mut out, "read", &p.files_read);
    patterns(&mut out, "write", &p.files_write);
    patterns(&mut out, "deny", &p.files_deny);
    cat(
        &mut out,
        "network",
        f.network.default,
        f.network.on_violation,
        f.network.fallback,
    );
    destinations(&mut out, "allow", &p.net_allow);
    destinations(&mut out, "deny", &p.net_deny);
    out
}

/// One line per file for `lint`.
pub fn summary(p: &Profile) -> String {
    let all: Vec<&Located<Pattern>> = p
        .exec_allow
        .iter()
        .chain(&p.exec_deny)
        .chain(&p.files_read)
        .chain(&p.files_write)
        .chain(&p.files_deny)
        .collect();
    let count = |k: KernelForm| all.iter().filter(|l| l.value.kernel_form() == k).count();
    format!(
        "{}: ok — profile `{}`: {} path rules ({} exact, {} prefix, {} file name, {} alert-only), \
         {} network rules",
        p.source,
        p.file.name,
        all.len(),
        count(KernelForm::Exact),
        count(KernelForm::Prefix),
        count(KernelForm::Basename),
        count(KernelForm::UserspaceOnly),
        p.net_allow.len() + p.net_deny.len()
    )
}
