//! The store against real SQLite: what is written verifies, and each kind of tampering
//! is found and named at the first broken record.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use agent_common::vocab::{Action, Layer, Verdict};
use rusqlite::Connection;

use super::{chain::Break, query::Filter, *};
use crate::event::{
    Body, DecisionInfo, Event, ExecInfo, ForkInfo, OpenInfo, ProcessInfo, SessionRef, SyscallInfo,
};

fn session_ref() -> SessionRef {
    SessionRef {
        id: "00000000000000aa".into(),
        name: "s1".into(),
        profile: "claude-code".into(),
        container: None,
    }
}

fn process(tgid: u32, ppid: u32, comm: &str) -> ProcessInfo {
    ProcessInfo {
        pid: tgid,
        tgid,
        ppid,
        uid: 1000,
        user: Some("alice".into()),
        gid: 1000,
        comm: comm.into(),
        cgroup_id: 1,
        exe: None,
    }
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

/// A small session: root execs bash, bash forks cat, cat reads a denied file and dies.
fn session_items(t0: u64) -> Vec<Item> {
    let mut items = vec![Item::Session(Box::new(SessionRecord {
        session_id: "00000000000000aa".into(),
        name: "s1".into(),
        agent: "claude-code".into(),
        profile_source: "embedded:claude-code".into(),
        profile_sha256: "ab".repeat(32),
        mode: "enforce".into(),
        business_owner: "platform".into(),
        technical_owner: "secops".into(),
        principal_uid: 1000,
        principal_user: Some("alice".into()),
        enrolment: "run".into(),
        host: "testhost".into(),
        root_pid: 100,
        time_ns: 0,
        time: crate::event::rfc3339(at(t0)),
        environment: None,
        selector: None,
        container: None,
    }))];
    let mut seq = 0;
    let mut ev = |body: Body, secs: u64, p: ProcessInfo| {
        seq += 1;
        let mut e = Event::new(body, at(secs), session_ref());
        e.seq = seq;
        e.process = Some(p);
        e
    };
    items.push(Item::Event(Arc::new(ev(
        Body::SessionStart,
        t0,
        process(100, 1, "agentwarden"),
    ))));
    let e = ev(
        Body::Exec(ExecInfo {
            path: "/usr/bin/bash".into(),
            path_truncated: false,
            argv: vec!["bash".into(), "-c".into(), "cat ~/.ssh/id_rsa".into()],
            argv_truncated: false,
            cwd: "/home/alice/proj".into(),
        }),
        t0 + 1,
        process(100, 1, "bash"),
    );
    items.push(Item::Event(Arc::new(e)));
    let e = ev(
        Body::Fork(ForkInfo { child_tgid: 101 }),
        t0 + 2,
        process(100, 1, "bash"),
    );
    items.push(Item::Event(Arc::new(e)));
    let e = ev(
        Body::Exec(ExecInfo {
            path: "/usr/bin/cat".into(),
            path_truncated: false,
            argv: vec!["cat".into(), "/home/alice/.ssh/id_rsa".into()],
            argv_truncated: false,
            cwd: "/home/alice/proj".into(),
        }),
        t0 + 3,
        process(101, 100, "cat"),
    );
    items.push(Item::Event(Arc::new(e)));
    let mut e = ev(
        Body::Open(OpenInfo {
            syscall: "openat".into(),
            path: "/home/alice/.ssh/id_rsa".into(),
            path_resolved: true,
            path_truncated: false,
            flags: vec!["O_RDONLY".into()],
            flags_raw: 0,
            result: 3,
            repeats: None,
        }),
        t0 + 4,
        process(101, 100, "cat"),
    );
    e.decision = Some(DecisionInfo {
        decision: Verdict::Deny,
        action: Action::Killed,
        rule: "rules/claude-code.yaml:30 (files.deny[0])".into(),
        enforced_by: Layer::Signal,
    });
    items.push(Item::Event(Arc::new(e)));
    items
}

/// Writes `items` to a new store in `dir` through the real sink; nothing dropped.
pub(super) fn write(dir: &Path, items: Vec<Item>) -> PathBuf {
    let db = dir.join(AUDIT_DB);
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
    assert_eq!(sink.stats().snapshot().dropped, 0);
    db
}

fn broken(db: &Path) -> Break {
    verify(db).unwrap().broken.expect("tampering not detected")
}

fn exec(db: &Path, sql: &str) {
    Connection::open(db).unwrap().execute_batch(sql).unwrap();
}

#[test]
fn an_untouched_chain_verifies_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let db = write(dir.path(), session_items(0));
    let v = verify(&db).unwrap();
    assert_eq!(v.broken, None);
    // 1 session + 5 actions + 4 process rows (root, exec, fork, exec).
    assert_eq!(v.records, 10);
    // Reopened (a daemon restart): the chain continues from the stored head.
    write(dir.path(), session_items(10)[1..].to_vec());
    let v = verify(&db).unwrap();
    assert_eq!((v.broken, v.records, v.last_seq), (None, 19, Some(19)));
}

#[test]
fn an_edited_row_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let db = write(dir.path(), session_items(0));
    let seq: i64 = Connection::open(&db)
        .unwrap()
        .query_row("SELECT seq FROM actions WHERE kind = 'open'", [], |r| {
            r.get(0)
        })
        .unwrap();
    exec(
        &db,
        &format!("UPDATE actions SET path = '/tmp/harmless' WHERE seq = {seq}"),
    );
    assert_eq!(
        broken(&db),
        Break::Edited {
            seq,
            table: "actions".into()
        }
    );
    let msg = broken(&db).to_string();
    assert!(msg.contains(&format!("actions row seq={seq}")), "{msg}");
}

#[test]
fn an_edited_decision_and_session_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let db = write(dir.path(), session_items(0));
    exec(
        &db,
        "UPDATE actions SET outcome = 'allowed' WHERE outcome = 'killed'",
    );
    assert_eq!(
        broken(&db),
        Break::Edited {
            seq: 10,
            table: "actions".into()
        }
    );
    let dir = tempfile::tempdir().unwrap();
    let db = write(dir.path(), session_items(0));
    exec(&db, "UPDATE sessions SET business_owner = 'nobody'");
    assert_eq!(
        broken(&db),
        Break::Edited {
            seq: 1,
            table: "sessions".into()
        }
    );
}

#[test]
fn a_deleted_row_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let db = write(dir.path(), session_items(0));
    exec(&db, "DELETE FROM actions WHERE kind = 'fork'");
    let fork_seq = 6; // session, start, root proc, exec, exec proc, fork
    match broken(&db) {
        Break::Deleted {
            from_seq, to_seq, ..
        } => assert_eq!((from_seq, to_seq), (fork_seq, fork_seq)),
        b => panic!("{b:?}"),
    }
}

#[test]
fn deleting_the_newest_rows_is_found_through_the_head_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = write(dir.path(), session_items(0));
    exec(&db, "DELETE FROM actions WHERE seq = 10");
    assert_eq!(
        broken(&db),
        Break::Truncated {
            db_seq: 9,
            head_seq: 10
        }
    );
}

#[test]
fn an_inserted_row_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let db = write(dir.path(), session_items(0));
    // A forged action squeezed in: it takes a position the chain already has.
    exec(
        &db,
        "INSERT INTO actions SELECT 3, event_seq, time_ns, session_id, kind, pid, \
         tgid, ppid, uid, user, gid, comm, exe, '/etc/forged', path_resolved, argv, cwd, \
         flags, address, port, protocol, op, result, exit_code, exit_signal, extra, \
         repeats, last_time_ns, decision, outcome, rule, enforced_by, prev_hash, hash, \
         tool_call FROM actions WHERE kind = 'open'",
    );
    let b = broken(&db);
    assert_eq!(b.seq(), 3, "{b:?}");
    assert!(
        matches!(&b, Break::Inserted { .. } | Break::Edited { .. }),
        "{b:?}"
    );
    // Appended after the end with a made-up hash: it does not link.
    let dir = tempfile::tempdir().unwrap();
    let db = write(dir.path(), session_items(0));
    exec(
        &db,
        "INSERT INTO actions SELECT 11, event_seq, time_ns, session_id, kind, pid, \
         tgid, ppid, uid, user, gid, comm, exe, path, path_resolved, argv, cwd, flags, \
         address, port, protocol, op, result, exit_code, exit_signal, extra, repeats, \
         last_time_ns, decision, outcome, rule, enforced_by, prev_hash, hash, tool_call \
         FROM actions WHERE kind = 'open'",
    );
    assert_eq!(broken(&db).seq(), 11);
}

#[test]
fn reordered_rows_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let db = write(dir.path(), session_items(0));
    // Swap the positions of the two exec actions (seq 4 and 8), hashes and all.
    exec(
        &db,
        "UPDATE actions SET seq = -1 WHERE seq = 4; UPDATE actions SET seq = 4 WHERE seq = 8; \
         UPDATE actions SET seq = 8 WHERE seq = -1;",
    );
    assert_eq!(broken(&db).seq(), 4);
}

#[test]
fn retention_prunes_through_a_checkpoint_and_what_remains_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let mut items = session_items(0);
    items.extend(session_items(1_000)[1..].iter().cloned());
    let db = write(dir.path(), items);
    // Keep what is younger than 500 s at "now" = t0 + 1 100 s: the first session goes.
    let pruned = store::test_prune(&db, Some(Duration::from_secs(500)), None, at(1_100)).unwrap();
    assert!(pruned >= 10, "pruned {pruned}");
    let v = verify(&db).unwrap();
    assert_eq!(v.broken, None, "{v:?}");
    assert!(v.checkpoint.is_some());
    // Deleting a kept record right after the checkpoint's start is still found.
    let first = v.first_seq.unwrap();
    for t in ["sessions", "processes", "actions"] {
        exec(&db, &format!("DELETE FROM {t} WHERE seq = {first}"));
    }
    assert_eq!(broken(&db).seq(), first);
}

#[test]
fn retention_by_size_shrinks_the_file_and_what_remains_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let items: Vec<Item> = (0..400)
        .flat_map(|i| session_items(i * 10)[1..].to_vec())
        .collect();
    let db = write(dir.path(), items);
    let size = |db: &Path| {
        let c = Connection::open(db).unwrap();
        let p: i64 = c
            .pragma_query_value(None, "page_count", |r| r.get(0))
            .unwrap();
        let s: i64 = c
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .unwrap();
        (p * s) as u64
    };
    let before = size(&db);
    let cap = before / 2;
    let pruned = store::test_prune(&db, None, Some(cap), at(0)).unwrap();
    assert!(pruned > 1000, "pruned {pruned}");
    let after = size(&db);
    assert!(after <= cap, "{before} -> {after} bytes, cap {cap}");
    let v = verify(&db).unwrap();
    assert_eq!(v.broken, None, "{v:?}");
    // Under the cap nothing more goes.
    assert_eq!(store::test_prune(&db, None, Some(cap), at(0)).unwrap(), 0);
}

#[test]
fn identical_opens_in_one_commit_are_one_row_with_a_count() {
    let dir = tempfile::tempdir().unwrap();
    let items = session_items(0);
    let open = items.last().unwrap().clone();
    let Item::Event(ev) = &open else { panic!() };
    let mut again = (**ev).clone();
    again.time_ns += 5_000;
    if let Some(o) = again.open_mut() {
        o.result = 4; // another fd: still the same action
    }
    let mut other = (**ev).clone();
    other.open_mut().unwrap().path = "/home/alice/.ssh/id_ed25519".into();
    let mut all = items.clone();
    all.extend([
        Item::Event(Arc::new(again.clone())),
        Item::Event(Arc::new(again)),
        Item::Event(Arc::new(other)),
    ]);
    let db = write(dir.path(), all);
    let conn = store::open_read_only(&db).unwrap();
    let opens = query::Reader::new(&conn)
        .query(
            &Filter {
                kinds: vec!["open".into()],
                ..Filter::default()
            },
            false,
        )
        .unwrap();
    assert_eq!(opens.len(), 2, "{opens:?}");
    assert_eq!(opens[0].repeats, 3);
    assert_eq!(opens[0].event.open().unwrap().result, 3);
    assert!(
        opens[0].detail().contains("(×3, last at "),
        "{}",
        opens[0].detail()
    );
    assert_eq!(opens[1].repeats, 1);
    assert_eq!(verify(&db).unwrap().broken, None);
}

/// The kernel's counted repeats of an open add their count to the row of the same
/// action in their commit, and stand for that many opens in a row of their own.
#[test]
fn counted_repeats_add_their_count_to_the_row_they_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let items = session_items(0);
    let Item::Event(ev) = items.last().unwrap().clone() else {
        panic!()
    };
    let counted = |count: u64, path: &str| {
        let mut e = (*ev).clone();
        e.time_ns += 9_000;
        let o = e.open_mut().unwrap();
        o.result = 0;
        o.path = path.into();
        o.repeats = Some(crate::event::Repeats {
            count,
            first: "2026-01-01T00:00:00Z".into(),
        });
        Item::Event(Arc::new(e))
    };
    let mut all = items.clone();
    all.extend([
        counted(41, "/home/alice/.ssh/id_rsa"),
        counted(7, "/etc/hosts"),
    ]);
    let db = write(dir.path(), all);
    let conn = store::open_read_only(&db).unwrap();
    let opens = query::Reader::new(&conn)
        .query(
            &Filter {
                kinds: vec!["open".into()],
                ..Filter::default()
            },
            false,
        )
        .unwrap();
    assert_eq!(opens.len(), 2, "{opens:?}");
    assert_eq!(opens[0].repeats, 42, "the open and its 41 repeats");
    assert!(opens[0].event.open().unwrap().repeats.is_none());
    assert_eq!(opens[1].repeats, 7);
    let r = opens[1]
        .event
        .open()
        .unwrap()
        .repeats
        .clone()
        .expect("read back");
    assert_eq!((r.count, r.first.as_str()), (7, "2026-01-01T00:00:00Z"));
    assert_eq!(verify(&db).unwrap().broken, None);
}

#[test]
fn queries_return_context_lineage_and_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let db = write(dir.path(), session_items(0));
    let conn = store::open_read_only(&db).unwrap();
    let mut r = query::Reader::new(&conn);
    let denied = r
        .query(
            &Filter {
                decision: Some("deny".into()),
                ..Filter::default()
            },
            true,
        )
        .unwrap();
    assert_eq!(denied.len(), 1);
    let d = &denied[0];
    assert_eq!(d.event.open().unwrap().path, "/home/alice/.ssh/id_rsa");
    let ctx = d.context.as_ref().unwrap();
    assert_eq!(
        (ctx.owners.business.as_str(), ctx.principal.uid),
        ("platform", 1000)
    );
    let pids: Vec<u32> = d.lineage.iter().map(|a| a.pid).collect();
    assert_eq!(pids, vec![101, 100]);
    assert_eq!(d.lineage[0].argv[0], "cat");
    assert_eq!(d.lineage[1].argv[0], "bash");
    // Filters narrow: by owner, path prefix, kind, agent, time.
    let mut n = |f: Filter| r.query(&f, false).unwrap().len();
    assert_eq!(
        n(Filter {
            owner: Some("secops".into()),
            ..Filter::default()
        }),
        5
    );
    assert_eq!(
        n(Filter {
            owner: Some("mallory".into()),
            ..Filter::default()
        }),
        0
    );
    assert_eq!(
        n(Filter {
            path_prefix: Some("/home/alice/.ssh/".into()),
            ..Filter::default()
        }),
        1
    );
    assert_eq!(
        n(Filter {
            kinds: vec!["exec".into()],
            agent: Some("claude-code".into()),
            ..Filter::default()
        }),
        2
    );
    let t3 = at(3).duration_since(SystemTime::UNIX_EPOCH).unwrap();
    assert_eq!(
        n(Filter {
            since_ns: Some(t3.as_nanos() as i64),
            ..Filter::default()
        }),
        2
    );
    // The timeline draws cat under bash's fork, with the kill.
    let s = r.find_session("s1").unwrap();
    let all = r
        .query(
            &Filter {
                session: Some(s.session_id.clone()),
                ..Filter::default()
            },
            false,
        )
        .unwrap();
    let sum = r.summary(&s.session_id).unwrap();
    assert_eq!(
        (sum.actions, sum.denied.clone()),
        (5, vec![("killed".to_owned(), 1)])
    );
    let text = timeline::render(&s, &sum, &all);
    assert!(
        text.contains("business: platform, technical: secops"),
        "{text}"
    );
    let cat = text.find("└─ [101]").expect(&text);
    let kill = text.find("DENY killed").expect(&text);
    assert!(cat < kill, "{text}");
    // OCSF: the open is File System Activity, blocked, with the rule.
    let o = ocsf::record(d).unwrap();
    assert_eq!(o["class_uid"], 1001);
    assert_eq!(o["type_uid"], 100114);
    assert_eq!(o["disposition"], "Blocked");
    assert_eq!(o["file"]["path"], "/home/alice/.ssh/id_rsa");
    assert_eq!(
        o["actor"]["authorizations"][0]["policy"]["desc"],
        "rules/claude-code.yaml:30 (files.deny[0])"
    );
}

/// A write transaction held by another process (`python3`'s sqlite3) until dropped, as an
/// operator's `sqlite3` or a stuck reader would hold it. Not a connection of this
/// process: SQLite shares one set of lock descriptors among a process's connections to a
/// file, and the writer's descriptors live in its own table (`store::private_descriptors`).
struct ForeignLock(std::process::Child);

impl ForeignLock {
    fn take(db: &Path) -> Self {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys\n\
                 c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
                 c.execute('BEGIN IMMEDIATE')\n\
                 print('locked', flush=True)\n\
                 sys.stdin.read()\n\
                 c.execute('COMMIT')\n",
            ])
            .arg(db)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        Self(child)
    }
}

impl Drop for ForeignLock {
    fn drop(&mut self) {
        // Closing its stdin lets it commit and exit.
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

#[test]
fn a_full_queue_drops_and_counts_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(AUDIT_DB);
    let mut sink = AuditSink::open(AuditConfig {
        path: db.clone(),
        queue: 2,
        max_age: None,
        max_bytes: None,
    })
    .unwrap();
    // Declared after the sink, so a failing assertion releases the lock before the
    // sink's drop waits for its writer.
    let lock = ForeignLock::take(&db);
    // One record gets the writer stuck retrying its commit; the queue (2) then fills.
    let items = session_items(0);
    sink.send(items[0].clone());
    sink.flush();
    let t = std::time::Instant::now();
    while sink.stats().snapshot().write_errors == 0 {
        assert!(t.elapsed() < Duration::from_secs(30), "no failed commit");
        std::thread::sleep(Duration::from_millis(10));
    }
    let start = std::time::Instant::now();
    for i in items.iter().cycle().take(200) {
        sink.send(i.clone());
    }
    sink.flush();
    assert!(start.elapsed() < Duration::from_secs(1), "send blocked");
    let s = sink.stats().snapshot();
    // One record is with the writer; one more fits the queue of 2.
    assert_eq!((s.dropped, s.backlog), (199, 2), "{s:?}");
    drop(lock);
    sink.close();
    let s = sink.stats().snapshot();
    assert_eq!((s.written, s.dropped, s.backlog), (2, 199, 0), "{s:?}");
    // What did land is a whole chain.
    assert_eq!(verify(&db).unwrap().broken, None);
}

/// A seccomp refusal is a row with its syscall, result, argument and decision, read back
/// as the same body, and exported to OCSF as Kernel Activity (Invoke) of a system call.
#[test]
fn a_syscall_decision_is_stored_read_back_and_exported() {
    let dir = tempfile::tempdir().unwrap();
    let mut items = session_items(0);
    let mut e = Event::new(
        Body::SyscallDecision(SyscallInfo {
            name: "kill".into(),
            nr: 62,
            at: "exit".into(),
            result: -1,
            arg: Some(-1),
        }),
        at(9),
        session_ref(),
    );
    e.seq = 99;
    e.process = Some(process(101, 100, "sh"));
    e.decision = Some(DecisionInfo {
        decision: Verdict::Deny,
        action: Action::Blocked,
        rule: "agentwarden self-protection: a signal to the daemon".into(),
        enforced_by: Layer::Seccomp,
    });
    let body = e.body.clone();
    items.push(Item::Event(Arc::new(e)));
    let db = write(dir.path(), items);
    let conn = store::open_read_only(&db).unwrap();
    let mut r = query::Reader::new(&conn);
    let got = r
        .query(
            &Filter {
                kinds: vec!["syscall_decision".into()],
                ..Filter::default()
            },
            true,
        )
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event.body, body);
    let d = got[0].event.decision.as_ref().unwrap();
    assert_eq!((d.action, d.enforced_by), (Action::Blocked, Layer::Seccomp));
    assert!(
        got[0].detail().contains("kill arg=-1 at exit = -1"),
        "{}",
        got[0].detail()
    );
    let o = ocsf::record(&got[0]).unwrap();
    assert_eq!(
        (o["class_uid"].as_u64(), o["type_uid"].as_u64()),
        (Some(1003), Some(100304))
    );
    assert_eq!(o["kernel"]["name"], "kill");
    assert_eq!(o["disposition"], "Blocked");
    assert_eq!(verify(&db).unwrap().broken, None);
}

/// A store written before version 2 (no `tool_call` column) is migrated when the
/// daemon opens it, its old rows still verify, and new rows with a tool call link on.
#[test]
fn a_version_1_store_migrates_and_its_old_rows_still_verify() {
    let dir = tempfile::tempdir().unwrap();
    let db = write(dir.path(), session_items(0));
    // Back to version 1 as it was: the column, its index and the view that reads it gone.
    exec(
        &db,
        "DROP VIEW audit_log; DROP INDEX actions_by_tool_call; \
         ALTER TABLE actions DROP COLUMN tool_call; ALTER TABLE sessions DROP COLUMN environment; ALTER TABLE sessions DROP COLUMN selector; \
         ALTER TABLE sessions DROP COLUMN container; DROP TABLE baselines; \
         PRAGMA user_version = 1;",
    );
    let e1 = verify(&db).unwrap_err().to_string();
    assert!(e1.contains("version 1"), "{e1}");
    let mut e = Event::new(
        Body::Exec(ExecInfo {
            path: "/usr/bin/ls".into(),
            path_truncated: false,
            argv: vec!["ls".into()],
            argv_truncated: false,
            cwd: "/".into(),
        }),
        at(100),
        session_ref(),
    );
    e.seq = 100;
    e.process = Some(process(102, 100, "ls"));
    e.context = Some(crate::event::ContextRef {
        tool_call: "toolu_1".into(),
        tool: "Bash".into(),
        prompt_id: None,
        how: crate::event::Attribution::Subtree,
    });
    let mut sink = AuditSink::open(AuditConfig {
        path: db.clone(),
        queue: 1 << 16,
        max_age: None,
        max_bytes: None,
    })
    .unwrap();
    sink.send(Item::Event(Arc::new(e)));
    sink.close();
    let v = verify(&db).unwrap();
    assert_eq!(v.broken, None, "{v:?}");
    let conn = Connection::open(&db).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM actions WHERE tool_call = 'toolu_1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
    // Removing the call from the new row is an edit the chain names.
    conn.execute(
        "UPDATE actions SET tool_call = NULL WHERE tool_call = 'toolu_1'",
        [],
    )
    .unwrap();
    drop(conn);
    assert!(matches!(broken(&db), Break::Edited { .. }));
}

/// A prompt, a tool call refused by its `tools:` rule and one that ran with an exec
/// under it: stored in the chain, found by `--tool-call` and `--tool`, nested by the
/// timeline, and in OCSF as API Activity with the call's context on the exec.
#[test]
fn prompts_and_tool_calls_are_stored_queried_nested_and_exported() {
    use crate::event::{Attribution, ContextRef, PromptInfo, ToolCallInfo, ToolResultInfo};
    let mut items = session_items(0);
    let mut seq = 100;
    let mut add = |body: Body, secs: u64, ctx: Option<ContextRef>, d: Option<DecisionInfo>| {
        seq += 1;
        let mut e = Event::new(body, at(secs), session_ref());
        e.seq = seq;
        e.process = Some(process(100, 1, "bash"));
        e.context = ctx;
        e.decision = d;
        items.push(Item::Event(Arc::new(e)));
    };
    let call = |id: &str, command: &str| ToolCallInfo {
        agent: "claude-code".into(),
        agent_session: "a1".into(),
        id: id.into(),
        tool: "Bash".into(),
        target: command.into(),
        input: format!(r#"{{"command":"{command}"}}"#),
        input_truncated: false,
        prompt_id: Some("p1".into()),
        agent_pid: 100,
    };
    add(
        Body::Prompt(PromptInfo {
            agent: "claude-code".into(),
            agent_session: "a1".into(),
            prompt_id: Some("p1".into()),
            text: Some("tidy the repo".into()),
            sha256: None,
            chars: 13,
        }),
        10,
        None,
        None,
    );
    add(
        Body::ToolCall(call("toolu_sudo", "sudo id")),
        11,
        None,
        Some(DecisionInfo {
            decision: Verdict::Deny,
            action: Action::Blocked,
            rule: "rules/claude-code.yaml:75 (tools.deny[0])".into(),
            enforced_by: Layer::Hook,
        }),
    );
    add(Body::ToolCall(call("toolu_ls", "ls")), 12, None, None);
    let ctx = ContextRef {
        tool_call: "toolu_ls".into(),
        tool: "Bash".into(),
        prompt_id: Some("p1".into()),
        how: Attribution::Subtree,
    };
    add(
        Body::Exec(ExecInfo {
            path: "/usr/bin/ls".into(),
            path_truncated: false,
            argv: vec!["ls".into()],
            argv_truncated: false,
            cwd: "/w".into(),
        }),
        13,
        Some(ctx),
        None,
    );
    add(
        Body::ToolResult(ToolResultInfo {
            agent: "claude-code".into(),
            agent_session: "a1".into(),
            id: "toolu_ls".into(),
            tool: "Bash".into(),
            failed: false,
            duration_ms: Some(2),
            refused: 0,
            told: None,
        }),
        14,
        None,
        None,
    );
    let dir = tempfile::tempdir().unwrap();
    let db = write(dir.path(), items);
    assert_eq!(verify(&db).unwrap().broken, None);
    let conn = store::open_read_only(&db).unwrap();
    let mut r = query::Reader::new(&conn);
    let of_call = r
        .query(
            &Filter {
                tool_call: Some("toolu_ls".into()),
                ..Filter::default()
            },
            false,
        )
        .unwrap();
    let kinds: Vec<&str> = of_call.iter().map(|x| x.event.kind().as_str()).collect();
    assert_eq!(kinds, ["tool_call", "exec", "tool_result"]);
    let bash = r
        .query(
            &Filter {
                tool: Some("Bash".into()),
                ..Filter::default()
            },
            false,
        )
        .unwrap();
    assert_eq!(bash.len(), 4, "both calls, the exec and the result");
    let all = r.query(&Filter::default(), false).unwrap();
    let s = r.find_session("s1").unwrap();
    let sum = r.summary(&s.session_id).unwrap();
    let text = timeline::render(&s, &sum, &all);
    let (prompt, sudo, ls, exec, outside) = (
        text.find("\"tidy the repo\"").expect(&text),
        text.find("toolu_sudo Bash [sudo id]").expect(&text),
        text.find("toolu_ls Bash [ls]").expect(&text),
        text.find("/usr/bin/ls [ls]").expect(&text),
        text.find("outside any tool call:").expect(&text),
    );
    assert!(
        prompt < sudo && sudo < ls && ls < exec && exec < outside,
        "{text}"
    );
    assert!(text.contains("DENY blocked by hook"), "{text}");
    // OCSF.
    let refused = all
        .iter()
        .find(|x| matches!(&x.event.body, Body::ToolCall(c) if c.id == "toolu_sudo"))
        .unwrap();
    let o = ocsf::record(refused).unwrap();
    assert_eq!(
        (o["class_uid"].as_u64(), o["activity_name"].as_str()),
        (Some(6003), Some("Tool Call Refused"))
    );
    assert_eq!(
        (o["api"]["operation"].as_str(), o["disposition"].as_str()),
        (Some("Bash"), Some("Blocked"))
    );
    let exec = all
        .iter()
        .find(|x| x.event.exec().is_some_and(|e| e.path == "/usr/bin/ls"))
        .unwrap();
    let o = ocsf::record(exec).unwrap();
    assert_eq!(
        o["unmapped"]["agentwarden"]["context"]["tool_call"],
        "toolu_ls"
    );
}
