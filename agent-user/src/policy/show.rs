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

/// A destination's target, and its ports (`443,8000-8080`; empty for all).
pub fn destination_parts(d: &CompiledDestination) -> (String, String) {
    let target = match &d.target {
        Target::Cidr(c) => format!("{}/{}", c.addr, c.prefix),
        Target::Host(h) => format!("{h} (resolved by the daemon)"),
        Target::Nameservers => "the system's name servers (from /etc/resolv.conf)".to_owned(),
    };
    let ports: Vec<String> = d
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
    (target, ports.join(","))
}

/// A destination in one line: `api.example.com (resolved by the daemon) ports 443`.
pub fn destination_text(d: &CompiledDestination) -> String {
    match destination_parts(d) {
        (target, ports) if ports.is_empty() => format!("{target}, all ports"),
        (target, ports) => format!("{target} ports {ports}"),
    }
}

fn destinations(out: &mut String, label: &str, list: &[Located<CompiledDestination>]) {
    for l in list {
        let (target, ports) = destination_parts(&l.value);
        let _ = writeln!(
            out,
            "    {label:<6} {target:<40} ports {ports:<12} line {}",
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
    if let Some(of) = &f.shadow_of {
        let _ = writeln!(
            out,
            "  shadow of {of}: judges every action of its sessions beside it, enforces nothing"
        );
    }
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
    syscalls(&mut out, p);
    out
}

/// The resolved syscall set, entry by entry (a group with its members), the layer that
/// meets each in `run` and in `attach` sessions, and the daemon's self-protection.
fn syscalls(out: &mut String, p: &Profile) {
    use super::syscalls::{self, Cond, SELF_PROTECTION_ENOSYS};
    let f = &p.file;
    let enf = syscalls::enforcement(f.mode, &f.syscalls);
    let _ = writeln!(
        out,
        "  syscalls ({}): default {:?}, on violation {:?}, fallback {}",
        syscalls::ARCH,
        f.syscalls.default.value,
        f.syscalls.on_violation,
        f.syscalls
            .fallback
            .map_or("none".into(), |x| format!("{x:?}"))
    );
    let run = match (enf.seccomp, enf.seccomp_kill) {
        (true, false) => "run: seccomp EPERM",
        (true, true) => "run: seccomp EPERM, then SIGKILL at the exit",
        (false, _) => "run: recorded at entry (alert)",
    };
    let attach = match enf.entry {
        Some(super::OnViolation::Kill) => {
            "attach: SIGKILL at entry (signal; the call itself still runs)"
        }
        Some(_) => "attach: recorded at entry",
        None => "attach: refused at enrolment (no fallback)",
    };
    let cond = |c: Cond| match c {
        Cond::Always => String::new(),
        Cond::AnyBit { arg, mask } => format!(" (when arg{arg} & {mask:#x})"),
        Cond::ProtectedPid { arg, .. } => format!(" (when arg{arg} is the daemon's)"),
    };
    let mut i = 0;
    while i < p.syscall_deny.len() {
        let first = &p.syscall_deny[i];
        let group: Vec<_> = p.syscall_deny[i..]
            .iter()
            .take_while(|d| d.field == first.field)
            .collect();
        let names: Vec<String> = group
            .iter()
            .map(|d| format!("{}{}", d.name, cond(d.cond)))
            .collect();
        let _ = writeln!(
            out,
            "    deny   {:<16} line {:<4} {}; {}\n           → {}",
            first.entry,
            first.line,
            run,
            attach,
            names.join(", ")
        );
        i += group.len();
    }
    if p.syscall_deny.iter().any(|d| d.name == "clone") {
        let _ = writeln!(
            out,
            "    enosys clone3           (its flags are in memory seccomp cannot read: libc falls \
             back to clone)"
        );
    }
    let mut labels: Vec<(&str, Vec<String>)> = Vec::new();
    for (name, c, label) in syscalls::self_protection() {
        let entry = format!("{name}{}", cond(c));
        match labels.iter_mut().find(|(l, _)| *l == label) {
            Some((_, v)) => v.push(entry),
            None => labels.push((label, vec![entry])),
        }
    }
    let _ = writeln!(
        out,
        "  self-protection (every profile; run: seccomp EPERM; attach: {} at entry):",
        if f.mode == super::Mode::Enforce {
            "SIGKILL"
        } else {
            "recorded"
        }
    );
    for (label, names) in labels {
        let _ = writeln!(out, "    {label:<28} {}", names.join(", "));
    }
    let _ = writeln!(
        out,
        "    {:<28} {} (ENOSYS: it can aim through a /proc descriptor seccomp cannot see)",
        "signals by pidfd",
        SELF_PROTECTION_ENOSYS.join(", ")
    );
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
         {} network rules, {} syscalls denied",
        p.source,
        p.file.name,
        all.len(),
        count(KernelForm::Exact),
        count(KernelForm::Prefix),
        count(KernelForm::Basename),
        count(KernelForm::UserspaceOnly),
        p.net_allow.len() + p.net_deny.len(),
        p.syscall_deny.len()
    )
}
