//! Decisions userspace takes: the exec and file judgements the kernel does not take
//! (they can only be recorded: `alerted`, enforced by `none`), the Landlock refusals of
//! `run` sessions (the kernel refused; this names the rule), and the outcome for a child
//! the kernel could not track. No kernel handle here: unit-tested on plain events.

use std::path::PathBuf;

use agent_common::vocab::{Action, Layer, Verdict};

use super::overflow::Outcome;
use crate::{
    event::{DecisionInfo, Event},
    policy::{
        Profile,
        decide::{Access, decide, is_path_only, is_write},
    },
    session::Registry,
};

/// `EACCES`, as a failed open's result carries it (negated).
const EACCES: i64 = libc::EACCES as i64;

/// What userspace knows of the session an event belongs to.
pub struct Context<'a> {
    /// The profile the session runs under (`None`: no longer known).
    pub profile: Option<&'a Profile>,
    /// Its `run` client restricted itself with Landlock.
    pub landlocked: bool,
    /// The owner's home, for `~` in rules (looked up only when a rule is matched).
    pub home: &'a mut dyn FnMut() -> String,
    /// Working directories of the session's processes.
    pub registry: &'a Registry,
}

/// Decides what the kernel left undecided on `ev`; an event the kernel decided, or one
/// that is not an exec or a judged open, is left as it is.
pub fn userspace(ev: &mut Event, ctx: &mut Context<'_>) {
    if ev.decision.is_some() {
        return;
    }
    let Some(profile) = ctx.profile else {
        return;
    };
    // Landlock refuses with EACCES before any file exists to resolve: judge the path
    // the process passed, made absolute with its working directory.
    let landlock_refusal = ctx.landlocked && ev.open().is_some_and(|o| o.result == -EACCES);
    // Where the kernel's decision is the whole decision (see `kernel_decides`), a path it
    // let through is allowed by the default: nothing to match again here.
    let category = match (ev.exec(), ev.open()) {
        (Some(x), _) if !x.path_truncated => Some((0, "exec.default")),
        (None, Some(o)) if o.path_resolved && !o.path_truncated => {
            (!is_path_only(o.flags_raw)).then_some((1, "files.default"))
        }
        _ => None,
    };
    if !landlock_refusal
        && let Some((i, rule)) = category
        && profile.kernel_decides[i]
    {
        ev.decision = Some(DecisionInfo {
            decision: Verdict::Allow,
            action: Action::Allowed,
            rule: rule.to_owned(),
            enforced_by: Layer::None,
        });
        return;
    }
    let access = |flags: u32| {
        if is_write(flags) {
            Access::Write
        } else {
            Access::Read
        }
    };
    let (access, path) = match (ev.exec(), ev.open()) {
        (Some(x), _) => (Access::Exec, x.path.clone()),
        (None, Some(o)) if landlock_refusal && !is_path_only(o.flags_raw) => {
            let tgid = ev.process.as_ref().map(|p| p.tgid);
            let Some(path) = absolute(&o.path, tgid, ctx.registry) else {
                return;
            };
            (access(o.flags_raw), path)
        }
        (None, Some(o)) if o.path_resolved && !is_path_only(o.flags_raw) => {
            (access(o.flags_raw), o.path.clone())
        }
        _ => return,
    };
    let v = decide(profile, access, &path, &(ctx.home)());
    if landlock_refusal && let Some(o) = ev.open_mut() {
        // Recorded absolute (still `path_resolved: false`: no file was opened).
        o.path = path;
    }
    let (action, layer) = match (v.denied, landlock_refusal) {
        (true, true) => (Action::Blocked, Layer::Landlock),
        (true, false) => (Action::Alerted, Layer::None),
        (false, _) => (Action::Allowed, Layer::None),
    };
    ev.decision = Some(DecisionInfo {
        decision: if v.denied {
            Verdict::Deny
        } else {
            Verdict::Allow
        },
        action,
        rule: v.rule,
        enforced_by: layer,
    });
}

/// An exec or open that an `ask` rule matched: the kernel only records it (`alerted`);
/// the refusal layer held it. One that went ahead was approved (by a person or a standing
/// grant; the approval row says who); in monitor mode nothing was held (`would_ask`). A
/// refused one is the refusal layer's own record.
pub fn asked(ev: &mut Event, profile: &Profile) {
    let category = match &ev.body {
        crate::event::Body::Exec(_) => 0,
        crate::event::Body::Open(o) if o.result >= 0 => 1,
        _ => return,
    };
    if profile.ask[category].is_none() {
        return;
    }
    let Some(d) = ev.decision.as_mut() else {
        return;
    };
    if d.decision != Verdict::Deny || d.action != Action::Alerted {
        return;
    }
    if profile.file.mode == crate::policy::Mode::Enforce {
        d.action = Action::Approved;
        d.enforced_by = Layer::Fanotify;
    } else {
        d.action = Action::WouldAsk;
    }
}

/// The decision on a child the kernel could not track (its session map was full):
/// `outcome` is `None` in monitor mode, else what the kill came to (`None` inside when
/// it failed).
pub fn untracked_child(outcome: Option<Option<Outcome>>) -> DecisionInfo {
    let action = match outcome {
        Some(Some(Outcome::Killed)) => Action::Killed,
        Some(Some(Outcome::Gone) | None) | None => Action::Alerted,
    };
    DecisionInfo {
        decision: Verdict::Deny,
        action,
        rule: "tracking.capacity (--max-tracked-processes)".to_owned(),
        enforced_by: match action {
            Action::Killed => Layer::Signal,
            Action::Allowed
            | Action::Blocked
            | Action::Alerted
            | Action::Approved
            | Action::WouldAsk
            | Action::Modified
            | Action::WouldRedirect
            | Action::Held => Layer::None,
        },
    }
}

/// `path` as given to a failed open, made absolute with the working directory of `tgid`:
/// its current one while it lives, else the one it had at its last exec (a short-lived
/// process is often gone before its events are handled). `None` when neither is known.
fn absolute(path: &str, tgid: Option<u32>, registry: &Registry) -> Option<String> {
    if path.starts_with('/') {
        return Some(path.to_owned());
    }
    let tgid = tgid?;
    let cwd = std::fs::read_link(format!("/proc/{tgid}/cwd"))
        .ok()
        .or_else(|| registry.cwd_of(tgid).map(PathBuf::from))?;
    Some(cwd.join(path).to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::event::{Body, ExecInfo, OpenInfo, ProcessInfo, SessionRef};

    /// Alerts on `/opt/tools/**` execs (no kernel form for an allow list, so userspace
    /// judges), and a file deny list the kernel decides in full.
    const WATCH: &str = "name: watch\ndescription: t\nowners: { business: b, technical: t }\n\
        mode: enforce\nexec:\n  default: deny\n  allow: [/usr/bin/**]\n  on_violation: alert\n\
        files:\n  deny: [~/.ssh/**]\n  on_violation: block\n  fallback: kill\n";

    fn profile() -> Profile {
        crate::policy::parse("watch.yaml", WATCH).expect("profile")
    }

    fn event(body: Body, tgid: u32) -> Event {
        let mut e = Event::new(body, SystemTime::UNIX_EPOCH, SessionRef::default());
        e.process = Some(ProcessInfo {
            pid: tgid,
            tgid,
            ppid: 1,
            uid: 1000,
            user: None,
            gid: 1000,
            comm: "t".into(),
            cgroup_id: 0,
            exe: None,
        });
        e
    }

    fn exec(path: &str) -> Body {
        Body::Exec(ExecInfo {
            path: path.into(),
            path_truncated: false,
            argv: vec![path.into()],
            argv_truncated: false,
            cwd: "/".into(),
        })
    }

    fn open(path: &str, resolved: bool, flags: u32, result: i64) -> Body {
        Body::Open(OpenInfo {
            syscall: "openat".into(),
            path: path.into(),
            path_resolved: resolved,
            path_truncated: false,
            flags: Vec::new(),
            flags_raw: flags,
            result,
            repeats: None,
        })
    }

    /// Runs [`userspace`] on `ev` for a session under `p`; the home is looked up only
    /// when a rule is matched (the count tells).
    fn judge(ev: &mut Event, p: Option<&Profile>, landlocked: bool, registry: &Registry) -> u32 {
        let mut lookups = 0;
        let mut home = || {
            lookups += 1;
            "/home/alice".to_owned()
        };
        let mut ctx = Context {
            profile: p,
            landlocked,
            home: &mut home,
            registry,
        };
        userspace(ev, &mut ctx);
        lookups
    }

    fn words(d: &DecisionInfo) -> (Verdict, Action, Layer, &str) {
        (d.decision, d.action, d.enforced_by, d.rule.as_str())
    }

    #[test]
    fn an_exec_outside_the_allow_list_is_alerted_with_its_rule() {
        let p = profile();
        let reg = Registry::default();
        let mut ev = event(exec("/opt/tools/x"), 7);
        assert_eq!(judge(&mut ev, Some(&p), false, &reg), 1);
        let d = ev.decision.expect("decision");
        assert_eq!(
            words(&d),
            (Verdict::Deny, Action::Alerted, Layer::None, "exec.default")
        );
        let mut ev = event(exec("/usr/bin/git"), 7);
        judge(&mut ev, Some(&p), false, &reg);
        let d = ev.decision.expect("decision");
        assert_eq!((d.decision, d.action), (Verdict::Allow, Action::Allowed));
        assert!(d.rule.starts_with("watch.yaml:7 (exec.allow[0])"), "{d:?}");
    }

    /// Files are decided in the kernel in full here: a resolved open it let through is
    /// allowed by the default without matching (no home lookup).
    #[test]
    fn what_the_kernel_decides_in_full_is_not_matched_again() {
        let p = profile();
        assert_eq!(p.kernel_decides, [false, true]);
        let reg = Registry::default();
        let mut ev = event(open("/home/alice/.ssh/id_rsa", true, 0, 3), 7);
        assert_eq!(judge(&mut ev, Some(&p), false, &reg), 0);
        let d = ev.decision.expect("decision");
        assert_eq!(
            words(&d),
            (
                Verdict::Allow,
                Action::Allowed,
                Layer::None,
                "files.default"
            )
        );
    }

    /// A Landlock refusal names the rule and the layer, on the path made absolute with
    /// the process's working directory (known from its exec once it is gone).
    #[test]
    fn a_landlock_refusal_is_blocked_by_landlock_on_the_absolute_path() {
        let p = profile();
        let mut reg = Registry::default();
        // A pid that does not exist: /proc has no cwd for it, the registry has.
        let gone = 4_000_000;
        reg.on_exec(gone, "/usr/bin/cat", "/home/alice/.ssh");
        let mut ev = event(open("id_rsa", false, 0, -EACCES), gone);
        assert_eq!(judge(&mut ev, Some(&p), true, &reg), 1);
        let d = ev.decision.clone().expect("decision");
        assert_eq!(
            (d.action, d.enforced_by),
            (Action::Blocked, Layer::Landlock)
        );
        assert!(d.rule.ends_with("(files.deny[0])"), "{d:?}");
        assert_eq!(ev.open().expect("open").path, "/home/alice/.ssh/id_rsa");
        // The same failure outside a Landlock session is no refusal of ours: unjudged.
        let mut ev = event(open("id_rsa", false, 0, -EACCES), gone);
        judge(&mut ev, Some(&p), false, &reg);
        assert_eq!(ev.decision, None);
    }

    #[test]
    fn handles_unknown_sessions_and_kernel_decisions_are_left_alone() {
        let p = profile();
        let reg = Registry::default();
        // O_PATH opens carry no access to the content: never judged.
        let mut ev = event(open("/etc/passwd", true, 0o10000000, 3), 7);
        assert_eq!(judge(&mut ev, Some(&p), false, &reg), 0);
        assert_eq!(ev.decision, None);
        // No profile (the session is gone): nothing decided.
        let mut ev = event(exec("/opt/tools/x"), 7);
        judge(&mut ev, None, false, &reg);
        assert_eq!(ev.decision, None);
        // What the kernel decided stays as it decided.
        let mut ev = event(exec("/opt/tools/x"), 7);
        let kernel = untracked_child(None);
        ev.decision = Some(kernel.clone());
        judge(&mut ev, Some(&p), false, &reg);
        assert_eq!(ev.decision, Some(kernel));
    }

    #[test]
    fn an_untracked_child_is_killed_only_when_the_kill_landed() {
        let w = |o| {
            let d = untracked_child(o);
            (d.decision, d.action, d.enforced_by)
        };
        assert_eq!(
            w(Some(Some(Outcome::Killed))),
            (Verdict::Deny, Action::Killed, Layer::Signal)
        );
        for o in [None, Some(None), Some(Some(Outcome::Gone))] {
            assert_eq!(w(o), (Verdict::Deny, Action::Alerted, Layer::None));
        }
    }
}
