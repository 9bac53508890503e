//! Repeated opens counted in the kernel (#19): a session process opening one allowed
//! file again and again makes a record a second and counts the rest, and every one of
//! its opens is in the trail — counted while it lives (the kernel's timer) and at its
//! exit. What must never be counted is judged every time: another name of the file
//! (a hard link a name rule denies), and the same name under rules that changed.

use crate::support::*;

/// Opens `path` `n` times (open + close), in a loop as an agent's runtime polls.
const OPENS: &str = r#"
import os, sys, time
def opens(n, path):
    for _ in range(n):
        os.close(os.open(path, os.O_RDONLY))
for step in sys.argv[1:]:
    if step.startswith("sleep="):
        time.sleep(float(step[6:]))
    elif step.startswith("say="):
        print(step[4:], flush=True)
    elif step.startswith("poll="):
        # Opens the file every millisecond until the gate exists, then once more.
        path, gate = step[5:].split(":", 1)
        while not os.path.exists(gate):
            opens(1, path)
            time.sleep(0.001)
        opens(1, path)
        print("LEAK: opened after the gate", flush=True)
    elif step.startswith("wait="):
        while not os.path.exists(step[5:]):
            time.sleep(0.01)
    else:
        n, path = step.split("=", 1)
        opens(int(n), path)
print("done", flush=True)
"#;

/// The opens of `path` the events stand for: one per record, `count` per counted
/// repeat; with the records in order.
fn opens_standing_for<'a>(evs: &'a [Event], path: &str) -> (u64, Vec<&'a Event>) {
    let rows: Vec<&Event> = evs
        .iter()
        .filter(|e| e.open().is_some_and(|o| o.path == path))
        .collect();
    let total = rows
        .iter()
        .map(|e| e.open().unwrap().repeats.as_ref().map_or(1, |r| r.count))
        .sum();
    (total, rows)
}

#[test]
fn repeated_allowed_opens_are_counted_in_the_kernel_and_every_one_is_in_the_trail() {
    let f = PathFixture::new();
    f.profile("counter", "enforce", "on_violation: kill");
    let Some(d) = f.daemon() else { return };
    let ok = f.dir.join("ok.txt").to_string_lossy().into_owned();
    // 500 opens within well under a second, a pause the kernel's timer reports in
    // (every 500 ms), then 300 more: the process is still alive when the first count
    // must be in the trail.
    let out = d.run_profile(
        "counter",
        "rep-count",
        &f.dir,
        &[
            "python3",
            "-c",
            OPENS,
            &format!("500={ok}"),
            "sleep=1.6",
            &format!("300={ok}"),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let sid = d.session("rep-count").id;
    let evs = d.wait_for(&sid, "every open of ok.txt", |evs| {
        opens_standing_for(evs, &ok).0 >= 800
    });
    let (total, rows) = opens_standing_for(&evs, &ok);
    assert_eq!(total, 800, "each open once:\n{}", dump(&evs));
    // A record where the file was first opened and one a second while it is opened
    // without pause (more on a slow machine, such as the VM tier's guests), and the
    // counts: a handful of rows, not 800.
    let records: Vec<&&Event> = rows
        .iter()
        .filter(|e| e.open().unwrap().repeats.is_none())
        .collect();
    assert!(records.len() >= 2, "{}", dump(&evs));
    assert!(rows.len() < 80, "counted, not sent: {}", dump(&evs));
    // The pause is the widest gap between the file's rows: the first batch's count
    // came while the process slept (the timer), dated before the pause's end; at its
    // exit alone it would be dated in the second batch.
    let mut times: Vec<&str> = rows.iter().map(|e| e.time.as_str()).collect();
    times.sort_unstable();
    let ns = |t: &str| agentwarden::audit::records::time_ns(t);
    let resumed = times
        .windows(2)
        .max_by_key(|w| ns(w[1]) - ns(w[0]))
        .map(|w| w[1])
        .expect("rows");
    assert!(
        rows.iter()
            .any(|e| e.open().unwrap().repeats.is_some() && e.time.as_str() < resumed),
        "the timer reported nothing while the process lived:\n{}",
        dump(&evs)
    );
    for e in rows.iter().filter(|e| e.open().unwrap().repeats.is_some()) {
        let o = e.open().unwrap();
        assert!(o.path_resolved && o.result == 0, "{e:?}");
        assert!(e.decision.is_none() || !e.decision.as_ref().unwrap().action.refused());
        assert_eq!(tgid(e), tgid(records[0]), "the same process");
        assert!(o.repeats.as_ref().unwrap().first <= e.time, "{e:?}");
    }
    // The audit store keeps the counts: a row's `repeats` is how many opens it stands
    // for (the kernel's counts, and identical rows of one commit merged).
    let recs = d.audit_session(&sid);
    let stored: u64 = recs
        .iter()
        .filter(|r| r["kind"] == "open" && r["open"]["path"] == ok.as_str())
        .map(|r| r["repeats"].as_u64().unwrap())
        .sum();
    assert_eq!(stored, 800, "{recs:#?}");
}

#[test]
fn a_counted_file_under_another_name_or_changed_rules_is_judged_again() {
    let f = PathFixture::new();
    f.profile("recount", "enforce", "on_violation: kill");
    let Some(d) = f.daemon() else { return };
    let dir = &f.dir;
    let plain = dir.join("app/plain");
    std::fs::write(&plain, "PLAIN-BYTES\n").unwrap();
    let p = plain.to_string_lossy().into_owned();
    // Another name for the counted file, one a name rule denies, made while the
    // process counts (so no binding of rules to inodes knows it yet): a different
    // dentry, so a different open, judged and killed however often the first was
    // counted.
    let named = dir.join("app/sub/.env-test");
    let made = dir.join("made");
    let d = std::sync::Arc::new(d);
    let runner = {
        let (d, dir) = (d.clone(), dir.clone());
        let steps = [
            format!("200={p}"),
            format!("wait={}", made.display()),
            format!("1={}", named.display()),
            format!("200={p}"),
        ];
        std::thread::spawn(move || {
            let mut args = vec!["python3", "-c", OPENS];
            args.extend(steps.iter().map(String::as_str));
            d.run_profile("recount", "rep-link", &dir, &args)
        })
    };
    let sid = session_id(&d, "rep-link");
    d.wait_for(&sid, "counted opens", |evs| {
        opens_standing_for(evs, &p)
            .1
            .iter()
            .any(|e| e.open().unwrap().repeats.is_some())
    });
    std::fs::create_dir_all(dir.join("app/sub")).unwrap();
    std::fs::hard_link(&plain, &named).unwrap();
    std::fs::write(&made, "").unwrap();
    let out = runner.join().unwrap();
    assert_eq!(out.status.signal(), Some(9), "{out:?}");
    let named = named.to_string_lossy().into_owned();
    let evs = d.wait_for(&sid, "the kill", |evs| {
        evs.iter()
            .any(|e| e.exit().is_some_and(|x| x.signal == Some(9)))
    });
    let killed = with_action(&evs, Action::Killed)
        .next()
        .unwrap_or_else(|| panic!("no kill recorded:\n{}", dump(&evs)));
    assert_eq!(killed.open().unwrap().path, named, "{}", dump(&evs));
    assert_eq!(opens_standing_for(&evs, &p).0, 200, "{}", dump(&evs));

    // The same name, counted, then denied by a reload while the process goes on
    // opening it (every millisecond: each open within a second of the file's last
    // record, so counted): the first open under the new rules is judged and killed, at
    // the latest the one after the gate the test opens once the reload is done. The new
    // rule is a name rule: a reload binds no new name to its inode, so no refusal layer
    // stands in for the kernel's judging. (Another file: the link above makes `plain` a
    // denied file's other name now.)
    let p = dir.join("app/plain2");
    std::fs::write(&p, "PLAIN-BYTES\n").unwrap();
    let p = p.to_string_lossy().into_owned();
    let gate = dir.join("gate");
    let runner = {
        let (d, dir) = (d.clone(), dir.clone());
        let step = format!("poll={p}:{}", gate.display());
        std::thread::spawn(move || {
            d.run_profile(
                "recount",
                "rep-reload",
                &dir,
                &["python3", "-c", OPENS, &step],
            )
        })
    };
    let sid = session_id(&d, "rep-reload");
    d.wait_for(&sid, "counted opens", |evs| {
        opens_standing_for(evs, &p)
            .1
            .iter()
            .any(|e| e.open().unwrap().repeats.is_some())
    });
    let text = std::fs::read_to_string(f.rules.path().join("recount.yaml")).unwrap();
    let text = text.replace(
        "    - \"**/.env-test\"\n",
        "    - \"**/.env-test\"\n    - \"**/plain2\"\n",
    );
    std::fs::write(f.rules.path().join("recount.yaml"), text).unwrap();
    d.reload();
    std::fs::write(&gate, "").unwrap();
    let out = runner.join().unwrap();
    assert_eq!(out.status.signal(), Some(9), "{out:?}\n{}", d.log());
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("LEAK"),
        "an open under the new rules was counted as a repeat: {out:?}"
    );
    let evs = d.wait_for(&sid, "the kill after the reload", |evs| {
        with_action(evs, Action::Killed).next().is_some()
    });
    let killed = with_action(&evs, Action::Killed).next().unwrap();
    // (Where BPF-LSM refuses, the guests of the VM tier have once named it without
    // its `/tmp` mount: the file's own name is what this test is about.)
    assert!(
        killed.open().unwrap().path.ends_with("/app/plain2"),
        "{}",
        dump(&evs)
    );
}

/// The id of session `name` once it is listed.
fn session_id(d: &Daemon, name: &str) -> String {
    let start = Instant::now();
    loop {
        if let Some(s) = d.sessions().into_iter().find(|s| s.name == name) {
            return s.id;
        }
        assert!(
            start.elapsed() < patience(),
            "no session {name}:\n{}",
            d.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
}
