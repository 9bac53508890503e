//! The audit trail against the real kernel and the real SQLite store: what a session did
//! is there with its context and decisions, the chain verifies and names an edited row,
//! a `kill -9` of the daemon loses no more than the documented window, the data survives
//! a restart, a stalled store never stalls the kernel path, and the metrics endpoint
//! reports it all.

use std::collections::BTreeSet;

use crate::support::*;

impl Daemon {
    /// `agentwarden audit ARGS --db <this daemon's store>`.
    pub(crate) fn audit(&self, args: &[&str]) -> Output {
        let mut c = self.cli();
        c.arg("audit").args(args).arg("--db").arg(self.db());
        c.output_within()
    }

    /// `audit query --json` records (as JSON values).
    pub(crate) fn audit_query(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let mut a = vec!["query", "--json"];
        a.extend_from_slice(args);
        let out = self.audit(&a);
        assert!(out.status.success(), "audit {a:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("record json"))
            .collect()
    }

    /// Polls `audit query` until it holds the session's end (commits are batched).
    pub(crate) fn audit_session(&self, session: &str) -> Vec<serde_json::Value> {
        let start = Instant::now();
        loop {
            let recs = self.audit_query(&["--session", session]);
            if recs.iter().any(|r| r["kind"] == "session_end") {
                return recs;
            }
            assert!(
                start.elapsed() < patience(),
                "the audit store never got the end of {session}: {recs:?}\n{}\n{}",
                self.log(),
                self.threads()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL, then the directory for a restart that starts afresh: the kernel side
    /// it pinned is removed, so the store's own loss window is what is measured (a
    /// successor's adoption of the ring is `succession.rs`'s).
    fn kill9(mut self) -> TempDir {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill -9");
        child.wait().expect("wait");
        let _ = fs::remove_dir_all(self.pins());
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    fn status(&self) -> StatusReport {
        self.json(&["status", "--json"])
    }
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn pids(lineage: &serde_json::Value) -> Vec<u64> {
    lineage
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["pid"].as_u64()).collect())
        .unwrap_or_default()
}

/// A session that reads an allowed file and a denied canary: the store has the session's
/// context (profile hash, owners, principal, host), each action with its decision and
/// lineage; query filters narrow; the timeline draws the tree; OCSF export classifies;
/// `audit verify` passes, and after one edited row fails naming that row.
#[test]
fn the_audit_trail_holds_each_action_in_context_and_names_an_edited_row() {
    let f = PathFixture::new();
    f.profile("auditor", "enforce", "on_violation: kill");
    let Some(d) = f.daemon() else { return };
    let out = d.run_profile(
        "auditor",
        "audit-1",
        &f.dir,
        &["sh", "-c", "cat ok.txt; cat canary; echo after"],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fine\nafter\n");
    let recs = d.audit_session("audit-1");
    let canary = f.dir.join("canary").display().to_string();

    // The session's execution context, on every record.
    let ctx = &recs[0]["context"];
    assert_eq!(ctx["name"], "audit-1");
    assert_eq!(ctx["agent"], "auditor");
    assert_eq!(
        ctx["profile"]["sha256"],
        sha256_of(&f.rules.path().join("auditor.yaml"))
    );
    assert_eq!(ctx["owners"]["business"], "b");
    assert_eq!(ctx["owners"]["technical"], "t");
    assert_eq!(ctx["principal"]["uid"], 0);
    assert_eq!(ctx["principal"]["user"], "root");
    assert_eq!(ctx["enrolment"], "run");
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    assert_eq!(ctx["host"], host);

    // The denied read: decision, rule, layer, and the lineage cat → sh (the root).
    let denied: Vec<&serde_json::Value> = recs
        .iter()
        .filter(|r| r["decision"]["decision"] == "deny")
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    let k = denied[0];
    assert_eq!(k["open"]["path"], canary);
    assert_eq!(k["decision"]["action"], "killed");
    assert!(
        k["decision"]["rule"]
            .as_str()
            .unwrap()
            .ends_with("(files.deny[0])"),
        "{k}"
    );
    let lineage = &k["lineage"];
    assert_eq!(lineage[0]["argv"], serde_json::json!(["cat", "canary"]));
    let root = d.session("audit-1").root_pid;
    assert_eq!(*pids(lineage).last().unwrap(), u64::from(root), "{lineage}");
    assert_eq!(lineage[1]["argv"][0], "sh", "{lineage}");
    assert!(
        recs.iter()
            .any(|r| r["kind"] == "exit" && r["exit"]["signal"] == 9),
        "the kill is recorded"
    );

    // Filters.
    let n = |args: &[&str]| d.audit_query(args).len();
    assert_eq!(n(&["--session", "audit-1", "--decision", "deny"]), 1);
    assert_eq!(n(&["--action", "killed", "--agent", "auditor"]), 1);
    let ok = f.dir.join("ok").display().to_string();
    let reads = d.audit_query(&["--session", "audit-1", "--path-prefix", &ok]);
    assert!(
        !reads.is_empty()
            && reads
                .iter()
                .all(|r| r["open"]["path"].as_str().unwrap().starts_with(&ok)),
        "{reads:?}"
    );
    assert!(n(&["--owner", "b", "--kind", "exec"]) >= 3);
    assert_eq!(n(&["--owner", "nobody"]), 0);
    assert_eq!(
        n(&["--session", "audit-1", "--since", "2099-01-01T00:00:00Z"]),
        0
    );
    assert_eq!(
        n(&["--session", "audit-1", "--until", "2000-01-01T00:00:00Z"]),
        0
    );

    // The timeline: header with owners, the tree, the kill under cat.
    let t = d.audit(&["timeline", "--session", "audit-1"]);
    assert!(t.status.success(), "{t:?}");
    let text = String::from_utf8_lossy(&t.stdout);
    assert!(
        text.contains("owners     business: b, technical: t"),
        "{text}"
    );
    assert!(text.contains(&format!("[{root}]")), "{text}");
    let cat = text.find("└─ [").expect(&text);
    let kill = text.find("DENY killed").expect(&text);
    assert!(cat < kill, "{text}");

    // OCSF export.
    let o = d.audit(&["export", "--format", "ocsf", "--session", "audit-1"]);
    assert!(o.status.success(), "{o:?}");
    let ocsf: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let blocked = ocsf
        .iter()
        .find(|r| r["class_uid"] == 1001 && r["file"]["path"] == canary)
        .expect("File System Activity for the canary");
    assert_eq!(blocked["disposition"], "Blocked");
    assert!(
        ocsf.iter()
            .any(|r| r["class_uid"] == 1007 && r["activity_id"] == 1)
    );

    // Verify, then edit the decision on the canary and verify again.
    let v = d.audit(&["verify"]);
    assert!(v.status.success(), "{v:?}");
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("audit chain OK"));
    let db = rusqlite::Connection::open(d.db()).unwrap();
    let seq: i64 = db
        .query_row(
            "SELECT action_seq FROM decisions WHERE action = 'killed'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    db.execute(
        "UPDATE actions SET outcome = 'allowed' WHERE seq = ?1",
        [seq],
    )
    .unwrap();
    let v = d.audit(&["verify"]);
    assert_eq!(v.status.code(), Some(1), "{v:?}");
    let msg = String::from_utf8_lossy(&v.stdout);
    assert!(
        msg.contains(&format!(
            "BROKEN at record {seq}: record {seq} (actions row seq={seq}) was edited"
        )),
        "{msg}"
    );
}

/// A tracked process opens numbered files at a steady rate, timing each open; the daemon
/// is killed with SIGKILL in the middle. What the store kept is every open up to a
/// point, and what it lost began less than the documented window (one commit interval
/// plus the reader's coalescing, well under a second) before the kill. A restarted
/// daemon continues the same chain and records new sessions after the old ones.
#[test]
fn kill_9_loses_less_than_the_documented_window_and_the_store_survives_a_restart() {
    let Some(d) = Daemon::start() else { return };
    let work = tempfile::tempdir().unwrap();
    let dir = fs::canonicalize(work.path()).unwrap();
    // Opens of files that do not exist: each path is unique and the failed open is
    // still recorded (with the path as passed).
    let marks = dir.join("m");
    let (times, stop, started) = (dir.join("times"), dir.join("stop"), dir.join("started"));
    // About 1000 opens a second until told to stop, each timed just before it is made.
    let script = format!(
        "import os, time\nts = []\ni = 0\nopen('{started}', 'w').close()\n\
         while not os.path.exists('{stop}') and i < 200000:\n    ts.append(time.time_ns())\n    \
         try:\n        os.close(os.open('{m}/%d' % i, os.O_RDONLY))\n    \
         except OSError:\n        pass\n    i += 1\n    time.sleep(0.001)\n\
         open('{t}', 'w').write('\\n'.join(map(str, ts)))\n",
        m = marks.display(),
        t = times.display(),
        stop = stop.display(),
        started = started.display()
    );
    let mut load = d
        .cli()
        .args(["run", "--profile", "demo", "--session-name", "k9", "--"])
        .args(["python3", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill a second after the opens began: the workload says when its loop starts (its
    // interpreter's start-up makes records too, and takes long on a busy machine), then
    // the daemon's record count says the opens flow (reading the growing event log to
    // find out is too slow for an emulated guest).
    let start = Instant::now();
    while !started.exists() {
        assert!(start.elapsed() < patience(), "the workload never started");
        thread::sleep(Duration::from_millis(20));
    }
    let before = d.status().daemon_counters.records_read;
    while d.status().daemon_counters.records_read < before + 200 {
        assert!(start.elapsed() < patience(), "no opens seen");
        thread::sleep(Duration::from_millis(20));
    }
    // And the writer commits them (it failed once in CI with nothing stored at the kill,
    // its counters unknown): a writer that commits nothing fails here with them, and
    // the loss measured below is that of a store that commits.
    let written = d.status().audit.written;
    while d.status().audit.written < written + 200 {
        assert!(
            start.elapsed() < patience(),
            "the audit writer commits nothing: {:?}",
            d.status().audit
        );
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(1000));
    let killed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let dir_kept = d.kill9();
    // The workload goes on unwatched a little longer, then stops.
    thread::sleep(Duration::from_millis(300));
    fs::write(&stop, "").unwrap();
    let status = load.wait().unwrap();
    assert!(status.success(), "the workload runs on unwatched: {status}");
    let t: Vec<i64> = fs::read_to_string(&times)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(
        t.last().is_some_and(|l| *l > killed_at),
        "the workload was still running at the kill"
    );

    // What the reader had handled when it died: it writes the event log per drain.
    let prefix = format!("{}/", marks.display());
    let mark = |path: &str| path.strip_prefix(&prefix)?.parse::<usize>().ok();
    let read: usize = fs::read_to_string(dir_kept.path().join("state/events.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Event>(l).ok())
        .filter_map(|e| e.open().cloned().and_then(|o| mark(&o.path)))
        .max()
        .map_or(0, |m| m + 1);

    let d = Daemon::spawn_in(dir_kept, &[]);
    let v = d.audit(&["verify"]);
    assert!(v.status.success(), "after kill -9: {v:?}");
    let kept: BTreeSet<usize> = d
        .audit_query(&[
            "--session",
            "k9",
            "--kind",
            "open",
            "--path-prefix",
            &prefix,
        ])
        .iter()
        .map(|r| {
            r["open"]["path"].as_str().unwrap()[prefix.len()..]
                .parse()
                .unwrap()
        })
        .collect();
    let n = kept.len();
    assert!(n > 0, "nothing was stored before the kill");
    assert_eq!(
        kept,
        (0..n).collect::<BTreeSet<_>>(),
        "what was stored is every open up to a point"
    );
    let before_kill = t.iter().filter(|x| **x < killed_at).count();
    let lost = before_kill.saturating_sub(n);
    let window_ms = if lost == 0 {
        0.0
    } else {
        (killed_at - t[n]) as f64 / 1e6
    };
    // The store's own share: opens the reader had handled but not yet committed.
    let store_ms = if read > n {
        (t[read - 1] - t[n]) as f64 / 1e6
    } else {
        0.0
    };
    println!(
        "kill -9: {n} opens stored, {lost} made before the kill lost, loss window \
         {window_ms:.1} ms ({} read but not committed: {store_ms:.1} ms)",
        read.saturating_sub(n)
    );
    // The bound is for a real host. Under emulation (the VM tier's TCG guest runs ~20x
    // slower on one vCPU) the reader and the writer fall seconds behind the workload;
    // there the window is printed, and what is stored must still be a whole prefix with
    // a chain that verifies and continues.
    if std::env::var("AGENTWARDEN_EMULATED").as_deref() != Ok("1") {
        assert!(store_ms < 1000.0, "the store lost {store_ms} ms");
        assert!(window_ms < 1000.0, "lost {lost} opens over {window_ms} ms");
    }

    // The restarted daemon continues the chain.
    let out = d.run_in("after-restart", &dir, &["cat", "times"]);
    assert!(out.status.success());
    let recs = d.audit_session("after-restart");
    let old_max = d
        .audit_query(&["--session", "k9"])
        .iter()
        .filter_map(|r| r["audit_seq"].as_i64())
        .max()
        .unwrap();
    assert!(recs[0]["audit_seq"].as_i64().unwrap() > old_max);
    let v = d.audit(&["verify"]);
    assert!(v.status.success(), "{v:?}");
}

/// While another process holds the database's write lock the store cannot commit: the
/// kernel path and the event log carry on, the backlog, the drops and the failed
/// commits are counted, the drops are raised as a `loss` event, and once the lock goes
/// the writer catches up with a chain that still verifies.
#[test]
fn a_stalled_audit_store_never_stalls_the_kernel_path_and_its_losses_are_counted() {
    let Some(d) = Daemon::start_with(&["--audit-queue", "256"]) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    // Round 16 files: more than the kernel counts repeats of per process, so each of
    // the 3000 opens is a record of its own.
    let files: Vec<PathBuf> = (0..16).map(|i| work.path().join(format!("f{i}"))).collect();
    for f in &files {
        fs::write(f, "x").unwrap();
    }
    let lock = rusqlite::Connection::open(d.db()).unwrap();
    lock.busy_timeout(Duration::from_secs(10)).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let script = format!(
        "import os\nfor i in range(3000):\n    os.close(os.open('{}/f%d' % (i % 16), os.O_RDONLY))\n",
        work.path().display()
    );
    let start = Instant::now();
    let out = d.run_in("stalled", work.path(), &["python3", "-c", &script]);
    assert!(out.status.success(), "{out:?}");
    let sid = d.session("stalled").id;
    let evs = d.wait_for(&sid, "all 3000 opens in the event log", |evs| {
        files
            .iter()
            .map(|f| opens_of(evs, f).count())
            .sum::<usize>()
            == 3000
    });
    assert!(evs.iter().any(|e| e.kind() == EventKind::Exit));
    println!("stalled store: 3000 opens logged in {:?}", start.elapsed());
    let st = d.status();
    assert!(st.audit.dropped > 0, "{:?}", st.audit);
    assert!(st.audit.backlog > 0, "{:?}", st.audit);
    let t = Instant::now();
    while d.status().audit.write_errors == 0 {
        assert!(t.elapsed() < patience(), "no failed commit counted");
        thread::sleep(Duration::from_millis(100));
    }
    let t = Instant::now();
    let loss = loop {
        let all = d.events(None);
        if let Some(l) = all
            .iter()
            .find_map(|e| e.loss().filter(|l| l.counter == "audit_dropped"))
        {
            break l.clone();
        }
        assert!(
            t.elapsed() < patience(),
            "no loss event for the dropped records"
        );
        thread::sleep(Duration::from_millis(100));
    };
    assert!(loss.delta > 0);
    lock.execute_batch("COMMIT").unwrap();
    let t = Instant::now();
    while d.status().audit.backlog > 0 {
        assert!(t.elapsed() < patience(), "the writer did not catch up");
        thread::sleep(Duration::from_millis(100));
    }
    let st = d.status();
    println!("stalled store: {:?}", st.audit);
    let v = d.audit(&["verify"]);
    assert!(v.status.success(), "{v:?}");
}

/// `--metrics-addr` serves the Prometheus text format: events by agent, kind and
/// decision, kernel and daemon counters, map occupancy, sessions, the audit backlog.
#[test]
fn metrics_are_served_in_the_prometheus_text_format() {
    let Some((d, addr)) = Daemon::start_with_metrics(&[]) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let out = d.run_in("metered", work.path(), &["cat", "/etc/hostname"]);
    assert!(out.status.success());
    let sid = d.session("metered").id;
    d.wait_for(&sid, "the end", |evs| {
        evs.iter().any(|e| e.kind() == EventKind::SessionEnd)
    });
    let get = |path: &str| http_get(&addr, path);
    let body = get("/metrics");
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    let value = |prefix: &str| -> u64 {
        body.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{body}"))
    };
    assert!(
        value("agentwarden_events_total{agent=\"demo\",kind=\"exec\",decision=\"allow\"}") >= 1
    );
    assert!(value("agentwarden_events_total{agent=\"demo\",kind=\"open\",") >= 1);
    assert_eq!(
        value("agentwarden_kernel_counter_total{counter=\"ringbuf_drops\"}"),
        0
    );
    assert!(value("agentwarden_map_capacity{map=\"sessions\"}") > 0);
    value("agentwarden_map_entries{map=\"sessions\"}");
    assert!(value("agentwarden_sessions{state=\"ended\"}") >= 1);
    value("agentwarden_audit_backlog");
    assert_eq!(
        value("agentwarden_audit_records_total{outcome=\"dropped\"}"),
        0
    );
    assert!(body.contains("# TYPE agentwarden_events_total counter"));
    assert!(get("/other").starts_with("HTTP/1.1 404"));
}

/// Readers of the store while a session keeps it busy (refusals, opens, commits) never
/// break it: every `audit query` answers, the daemon never fails a commit, the session's
/// every refusal reaches the store, and the chain verifies. The daemon holds descriptors
/// of its own files (fanotify hands it one for each reader's open of the marked state
/// directory; inode binding opens the bound trees' files); closing one in the table
/// where SQLite holds its locks released them, and a reader then rebuilt the WAL index
/// under the writer ("database disk image is malformed").
#[test]
fn readers_during_a_busy_session_leave_the_store_whole() {
    let f = PathFixture::new();
    // Files named, not patterns: refused by the fanotify layer on any host.
    fs::write(
        f.rules.path().join("busy.yaml"),
        format!(
            "name: busy\ndescription: t\nowners: {{ business: b, technical: t }}\n\
             mode: enforce\nfiles:\n  deny: [{}/canary]\n  on_violation: block\n",
            f.dir.display()
        ),
    )
    .unwrap();
    let Some(d) = f.daemon() else { return };
    let dir = f.dir.display().to_string();
    let rounds = 200;
    let script = format!(
        "n=0; i=0; while [ $i -lt {rounds} ]; do cat {dir}/ok.txt >/dev/null; \
         cat {dir}/canary >/dev/null 2>&1 || n=$((n+1)); i=$((i+1)); done; echo refused=$n"
    );
    let mut session = d
        .cli()
        .args(["run", "--profile", "busy", "--session-name", "busy", "--"])
        .args(["/bin/sh", "-c", &script])
        .current_dir(&f.dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut queries = 0;
    while queries < 20 || session.try_wait().unwrap().is_none() {
        let out = d.audit(&["query", "--json", "--limit", "50"]);
        assert!(
            out.status.success(),
            "query {queries}: {out:?}\n{}",
            d.log()
        );
        queries += 1;
        assert!(start.elapsed() < patience(), "the session never ended");
    }
    let out = session.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("refused={rounds}")
    );
    let sid = d.session("busy").id;
    // The refusal layer's rows can reach the store after the session's end.
    let t = Instant::now();
    loop {
        let blocked = d
            .audit_query(&["--session", &sid, "--action", "blocked"])
            .len();
        if blocked >= rounds {
            break;
        }
        assert!(
            t.elapsed() < patience(),
            "{blocked} of {rounds} refusals in the store\n{}",
            d.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let log = d.log();
    assert!(!log.contains("audit commit failed"), "{log}");
    let v = d.audit(&["verify"]);
    assert!(v.status.success(), "{v:?}");
    println!("{queries} queries during the session");
}
