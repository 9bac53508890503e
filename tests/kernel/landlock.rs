//! Landlock for `run` sessions: `default: deny` allow lists fenced with `EACCES`.

use crate::support::*;

/// `files.default: deny` with allow lists, in a `run` session: Landlock (applied by
/// `run` before it executes the agent) refuses everything outside the lists with EACCES;
/// the refusal is recorded with the default rule and `landlock`. Outside the session the
/// same files are untouched.
#[test]
fn default_deny_files_are_fenced_by_landlock_in_run_sessions() {
    let work = tempfile::tempdir().unwrap();
    let dir = fs::canonicalize(work.path()).unwrap();
    for sub in ["allowed", "other", "out"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    fs::write(dir.join("allowed/a"), "fine").unwrap();
    fs::write(dir.join("other/b"), "OTHER-BYTES").unwrap();
    let rules = tempfile::tempdir().unwrap();
    let profile = format!(
        "name: fenced\ndescription: t\nowners: {{ business: b, technical: t }}\nmode: enforce\n\
         files:\n  default: deny\n  read: [/usr/**, /etc/**, {d}/allowed/**]\n  \
         write: [{d}/out/**]\n  on_violation: block\n",
        d = dir.display()
    );
    fs::write(rules.path().join("fenced.yaml"), profile).unwrap();
    let rd = rules.path().to_str().unwrap().to_owned();
    let Some(d) = Daemon::start_with(&["--rules-dir", &rd]) else {
        return;
    };
    let st: StatusReport = d.json(&["status", "--json"]);
    let mut args = vec!["/usr/bin/python3", "-c", PATH_PROBE];
    args.extend([
        "r:allowed=allowed/a",
        "r:other=other/b",
        "w:out=out/c",
        "w:other_w=other/d",
    ]);
    let out = d.run_profile("fenced", "fence", &dir, &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if st.host.landlock_abi.is_none() {
        assert!(
            stderr.contains("allow lists under `default: deny` are judged in userspace"),
            "{stderr}"
        );
        return skip("this kernel has no Landlock");
    }
    assert!(out.status.success(), "{out:?}");
    for line in ["allowed=ok", "other=13", "out=ok", "other_w=13"] {
        assert!(
            stdout.lines().any(|l| l == line),
            "want {line} (13 = EACCES) in:\n{stdout}\n{stderr}"
        );
    }
    assert!(!dir.join("other/d").exists());
    assert_eq!(fs::read_to_string(dir.join("out/c")).unwrap(), "written");
    assert_eq!(
        fs::read_to_string(dir.join("other/b")).unwrap(),
        "OTHER-BYTES"
    );
    let sid = d.session("fence").id;
    let other = dir.join("other/b").to_string_lossy().into_owned();
    let evs = d.wait_for(&sid, "the landlock refusal", |evs| {
        evs.iter()
            .any(|e| e.open().is_some_and(|o| o.path == other))
    });
    let refused = evs
        .iter()
        .find(|e| e.open().is_some_and(|o| o.path == other))
        .unwrap();
    assert_eq!(refused.open().unwrap().result, -13);
    let dec = refused.decision.as_ref().expect("decision");
    assert_eq!(
        (
            dec.decision.as_str(),
            dec.action.as_str(),
            dec.rule.as_str(),
            dec.enforced_by.as_str()
        ),
        ("deny", "blocked", "files.default", "landlock")
    );
}
