//! Learning and judging on plain events: no kernel, no store.

use std::time::{Duration, SystemTime};

use agent_common::vocab::{Action, Finding, Layer, Verdict};

use super::{
    baseline::{Baseline, Key},
    judge::{Config, Judge},
    *,
};
use crate::event::{ConnectInfo, DecisionInfo, Event, ExecInfo, OpenInfo, ProcessInfo, SessionRef};

const HOME: &str = "/home/dev";

fn ev(body: Body, t: u64) -> Event {
    let mut e = Event::new(
        body,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 + t),
        SessionRef {
            id: "s".into(),
            ..SessionRef::default()
        },
    );
    e.time_ns = (1_000 + t as i64) * 1_000_000_000;
    e.process = Some(ProcessInfo {
        pid: 10,
        tgid: 10,
        ppid: 1,
        uid: 1000,
        user: None,
        gid: 1000,
        comm: "x".into(),
        cgroup_id: 0,
        exe: None,
    });
    e
}

fn exec(path: &str, cwd: &str) -> Body {
    Body::Exec(ExecInfo {
        path: path.into(),
        path_truncated: false,
        argv: vec![path.into()],
        argv_truncated: false,
        cwd: cwd.into(),
    })
}

fn open(path: &str, flags: u32) -> Body {
    Body::Open(OpenInfo {
        syscall: "openat".into(),
        path: path.into(),
        path_resolved: true,
        path_truncated: false,
        flags: Vec::new(),
        flags_raw: flags,
        result: 3,
        repeats: None,
    })
}

fn connect(addr: &str, port: u16) -> Body {
    Body::Connect(ConnectInfo {
        family: "inet".into(),
        address: addr.into(),
        port,
        fd: 3,
        result: 0,
    })
}

fn denied(mut e: Event) -> Event {
    e.decision = Some(DecisionInfo {
        decision: Verdict::Deny,
        action: Action::Blocked,
        rule: "p.yaml:3 (files.deny[0])".into(),
        enforced_by: Layer::Lsm,
    });
    e
}

/// A session of the usual work in `project`.
fn usual(project: &str) -> Vec<Event> {
    let mut v = vec![ev(exec("/usr/bin/bash", project), 0)];
    for i in 0..20 {
        v.push(ev(open("/usr/lib/x86_64-linux-gnu/libc.so.6", 0), i));
        v.push(ev(open(&format!("{project}/src/f{i}.rs"), 0), i));
    }
    v.push(ev(open(&format!("{project}/notes.txt"), 0o1101), 21));
    v.push(ev(exec("/usr/bin/git", project), 22));
    v.push(ev(open(&format!("{HOME}/.gitconfig"), 0), 23));
    v.push(ev(open("/etc/passwd", 0), 24));
    v.push(ev(connect("127.0.0.1", 8080), 25));
    v.push(denied(ev(open(&format!("{HOME}/.ssh/id_rsa"), 0), 26)));
    v
}

fn summary_of(events: &[Event]) -> Summary {
    summarize(
        events.iter().enumerate().map(|(i, e)| (i as i64 + 1, e, 1)),
        Some(HOME),
    )
}

fn baseline(n: usize) -> Baseline {
    let mut b = Baseline::new(&Key {
        agent: "a".into(),
        principal: None,
    });
    for i in 0..n {
        b.fold(
            &format!("s{i}"),
            &summary_of(&usual(&format!("/work/p{i}"))),
        );
    }
    b
}

/// Judges `events` action by action and at the end; the findings' kinds and objects.
fn judge_all(b: &Baseline, events: &[Event]) -> Vec<(Finding, String)> {
    let cfg = Config::default();
    let mut j = Judge::default();
    let mut s = Summary::default();
    let a = Anchors::new(events[0].exec().map(|x| x.cwd.as_str()), Some(HOME));
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if let Some(o) = observe(e, &a) {
            s.add(i as i64 + 1, 1, &o);
            out.extend(j.action(&cfg, b, &s, &o).map(|r| (r.finding, r.object)));
        }
    }
    out.extend(
        j.end(&cfg, b, &summary_of(events))
            .into_iter()
            .map(|r| (r.finding, r.object)),
    );
    out
}

#[test]
fn trees_abstract_the_project_and_the_home_and_stop_at_scratch_and_pids() {
    let a = Anchors::new(Some("/work/p1"), Some(HOME));
    assert_eq!(a.tree("/work/p1/src/deep/x.rs"), "$PROJECT/**");
    assert_eq!(a.tree("/home/dev/.cache/pip/x"), "~/.cache/**");
    assert_eq!(a.tree("/home/dev/.netrc"), "~/.netrc");
    assert_eq!(a.tree("/usr/lib/python3/x/y.py"), "/usr/lib/**");
    assert_eq!(a.tree("/etc/passwd"), "/etc/**");
    assert_eq!(a.tree("/tmp/tmpab12/x"), "/tmp/**");
    assert_eq!(a.tree("/var/tmp/x/y"), "/var/tmp/**");
    assert_eq!(a.tree("/proc/4242/status"), "/proc/*/**");
    assert_eq!(a.tree("/vmlinuz"), "/vmlinuz");
    assert_eq!(a.abstract_path("/home/dev/.ssh/id_rsa"), "~/.ssh/id_rsa");
    // A project that is the home anchors nothing of its own.
    assert_eq!(Anchors::new(Some(HOME), Some(HOME)).project, None);
}

#[test]
fn a_usual_session_in_another_project_draws_no_finding() {
    let b = baseline(10);
    assert_eq!(b.sessions, 10);
    assert_eq!(b.programs["/usr/bin/git"], 10);
    assert_eq!(b.reads["$PROJECT/**"], 10);
    assert_eq!(b.denials["open ~/.ssh/id_rsa"], 1);
    assert_eq!(judge_all(&b, &usual("/srv/other")), []);
}

#[test]
fn a_new_program_tree_destination_and_repeated_denial_are_each_found_once() {
    let b = baseline(10);
    let mut v = usual("/work/new");
    v.push(ev(exec("/usr/bin/whoami", "/work/new"), 30));
    v.push(ev(exec("/usr/bin/whoami", "/work/new"), 31));
    v.push(ev(open("/opt/data/secret.csv", 0), 32));
    v.push(ev(connect("198.18.0.1", 8080), 33));
    for i in 0..5 {
        v.push(denied(ev(open(&format!("{HOME}/.ssh/id_rsa"), 0), 34 + i)));
    }
    let found = judge_all(&b, &v);
    assert_eq!(
        found,
        [
            (Finding::NewProgram, "/usr/bin/whoami".to_owned()),
            (Finding::ReadOutsideTrees, "/opt/data/**".to_owned()),
            (Finding::NewDestination, "198.18.0.1:8080".to_owned()),
            (Finding::RepeatedDenial, "open ~/.ssh/id_rsa".to_owned()),
        ]
    );
}

#[test]
fn the_directory_at_the_root_of_a_learned_tree_is_inside_it() {
    let b = baseline(5);
    let mut v = usual("/work/new");
    // Listings: of `/etc` (the baseline read `/etc/**`), of `/opt` (nothing under it).
    v.push(ev(open("/etc", 0o200000), 40));
    v.push(ev(open("/opt", 0o200000), 41));
    assert_eq!(
        judge_all(&b, &v),
        [(Finding::ReadOutsideTrees, "/opt".to_owned())]
    );
}

#[test]
fn a_write_where_the_baseline_only_read_is_found() {
    let b = baseline(5);
    let mut v = usual("/work/new");
    v.push(ev(open("/etc/passwd", 0o1), 40));
    assert_eq!(
        judge_all(&b, &v),
        [(Finding::WriteOutsideTrees, "/etc/**".to_owned())]
    );
}

#[test]
fn a_far_mix_and_a_burst_of_denials_are_found_at_the_end() {
    let b = baseline(10);
    let mut v = vec![ev(exec("/usr/bin/bash", "/work/x"), 0)];
    // Writes only, in the project: nothing new, but nothing like the usual mix.
    for i in 0..200 {
        v.push(ev(open(&format!("/work/x/out{i}"), 0o1101), 1));
    }
    for i in 0..6 {
        v.push(denied(ev(open(&format!("{HOME}/.ssh/k{i}"), 0), 2)));
    }
    let found: Vec<Finding> = judge_all(&b, &v).into_iter().map(|f| f.0).collect();
    assert!(found.contains(&Finding::Mix), "{found:?}");
    assert!(found.contains(&Finding::DenialBurst), "{found:?}");
    assert!(js_divergence(&[0.5, 0.5], &[0.5, 0.5]) < 1e-12);
    assert!((js_divergence(&[1.0, 0.0], &[0.0, 1.0]) - 1.0).abs() < 1e-12);
}

#[test]
fn names_that_change_from_run_to_run_are_generalised() {
    assert_eq!(
        generalise_name(".claude.json.tmp.1234.ab12"),
        ".claude.json*"
    );
    assert_eq!(generalise_name("session-20261203.log"), "session-*");
    assert_eq!(generalise_name(".bashrc"), ".bashrc");
    assert_eq!(generalise_name("1234"), "1234");
    let a = Anchors::new(Some("/work/p"), Some(HOME));
    assert_eq!(a.tree("/home/dev/.claude.json.tmp.77.x"), "~/.claude.json*");
    assert_eq!(a.tree(HOME), "~");
    assert_eq!(a.tree("/"), "/");
}

#[test]
fn a_draft_lints_and_replays_its_sessions_without_a_denial() {
    let events = usual("/work/p1");
    let rec = crate::audit::SessionRecord {
        session_id: "s".into(),
        agent: "a".into(),
        ..Default::default()
    };
    let numbered: Vec<crate::audit::query::Stored> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (i as i64 + 1, e.clone(), 1))
        .collect();
    let mut l = learn::Learned::default();
    l.add(&learn::Recorded {
        record: &rec,
        home: Some(HOME.into()),
        events: &numbered,
    });
    let draft = l.draft("a", "a-learned");
    let p = crate::policy::parse("draft.yaml", &draft).unwrap_or_else(|e| panic!("{e:?}\n{draft}"));
    let mut r = replay::Resolver::default();
    for (_, e, _) in &numbered {
        let Some(j) = replay::judge(&p, &mut r, e, HOME) else {
            continue;
        };
        let was_denied = e
            .decision
            .as_ref()
            .is_some_and(|d| d.decision == Verdict::Deny);
        assert_eq!(j.denied, was_denied, "{e:?}: {j:?}\n{draft}");
    }
    assert!(draft.contains("\"/work/p1/**\""), "{draft}");
    assert!(draft.contains("\"~/.ssh/id_rsa\""), "{draft}");
}

/// The analyser against a real store: six recorded sessions grow the baselines of the
/// agent and its principal (one row each per pass); a new analyser resumes from the
/// stored rows without learning anything twice; a drifting session recorded after is
/// judged against the stored baseline, whose row the finding names.
#[test]
fn the_analyser_learns_from_a_store_resumes_from_its_rows_and_judges_what_follows() {
    use std::sync::Arc;

    use crate::audit::{AuditConfig, AuditSink, Item, SessionRecord, store};

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let write = |items: Vec<Item>| {
        let mut sink = AuditSink::open(AuditConfig {
            path: db.clone(),
            queue: 1 << 16,
            max_age: None,
            max_bytes: None,
        })
        .unwrap();
        for i in items {
            sink.send(i);
        }
        sink.close();
    };
    let session = |i: usize, events: Vec<Event>| -> Vec<Item> {
        let id = format!("{i:016x}");
        let mut items = vec![Item::Session(Box::new(SessionRecord {
            session_id: id.clone(),
            name: format!("s{i}"),
            agent: "a".into(),
            business_owner: "biz".into(),
            technical_owner: "tech".into(),
            principal_uid: 4_000_000,
            principal_user: Some("dev".into()),
            ..SessionRecord::default()
        }))];
        for mut e in events.into_iter().chain([ev(Body::SessionEnd, 90)]) {
            e.session.id = id.clone();
            items.push(Item::Event(Arc::new(e)));
        }
        items
    };
    let mut items = Vec::new();
    for i in 0..6 {
        items.extend(session(i, usual(&format!("/work/p{i}"))));
    }
    write(items);
    let cfg = Config {
        min_sessions: 5,
        ..Config::default()
    };
    let conn = store::open_read_only(&db).unwrap();
    let mut a = analyze::Analyzer::new(cfg.clone());
    let out = a.tick(&conn, 10_000).unwrap();
    assert_eq!((a.stats.learned, out.findings.len()), (6, 0));
    let rows: Vec<(Option<String>, u64)> = out
        .baselines
        .iter()
        .map(|b| (b.principal.clone(), b.sessions))
        .collect();
    assert_eq!(rows, [(None, 6), (Some("dev".into()), 6)]);
    drop(conn);
    write(
        out.baselines
            .into_iter()
            .map(|b| Item::Baseline(Box::new(b)))
            .collect(),
    );

    let conn = store::open_read_only(&db).unwrap();
    let mut b = analyze::Analyzer::new(cfg);
    let resumed = b.resume(&conn).unwrap();
    assert!(resumed.baselines.is_empty(), "learned twice: {resumed:?}");
    let stored: Vec<u64> = b.baselines().map(|(x, _)| x.sessions).collect();
    assert_eq!(stored, [6, 6]);
    let row = b
        .baselines()
        .find(|(x, _)| x.principal.is_some())
        .map(|(_, seq)| seq)
        .unwrap();
    drop(conn);

    let mut drifting = usual("/work/new");
    drifting.push(ev(exec("/usr/bin/whoami", "/work/new"), 30));
    write(session(7, drifting));
    let conn = store::open_read_only(&db).unwrap();
    let out = b.tick(&conn, 10_000).unwrap();
    let found: Vec<(Finding, &str, i64, u64)> = out
        .findings
        .iter()
        .map(|f| {
            (
                f.info.finding,
                f.info.object.as_str(),
                f.info.baseline.seq,
                f.info.baseline.sessions,
            )
        })
        .collect();
    assert_eq!(found, [(Finding::NewProgram, "/usr/bin/whoami", row, 6)]);
    assert_eq!(out.findings[0].info.notify, ["biz", "tech", "dev"]);
    assert_eq!((b.stats.withheld, out.baselines.len()), (1, 0));
}
