//! `environment:` rules (modify, for `run` sessions): credentials the profile does not
//! need are gone from the agent's environment and its own values set, before the agent
//! runs; the session's identity context records the names, never the values; in
//! `monitor` mode nothing changes and the change is recorded as what would be done.

use crate::support::*;

fn env_profile(dir: &Path, mode: &str) {
    fs::write(
        dir.join("envtest.yaml"),
        format!(
            "name: envtest\ndescription: t\nowners: {{ business: b, technical: t }}\nmode: {mode}\n\
             environment:\n  remove: [\"AWS_*\", \"*_TOKEN\"]\n  set:\n    HTTPS_PROXY: http://127.0.0.1:3128\n"
        ),
    )
    .unwrap();
}

/// The agent's environment as it sees it (`env` in the session), and the session's
/// audit rows.
fn run_env(mode: &str) -> Option<(String, Vec<serde_json::Value>, String, Daemon)> {
    let rules = tempfile::tempdir().unwrap();
    env_profile(rules.path(), mode);
    let rd = rules.path().to_str().unwrap().to_owned();
    let d = Daemon::start_with(&["--rules-dir", &rd])?;
    let work = tempfile::tempdir().unwrap();
    let out = d
        .cli()
        .args(["run", "--profile", "envtest", "--session-name", "env", "--"])
        .args(["/usr/bin/env"])
        // Only what the test gives: the host's own variables are not the test's.
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("AWS_SECRET_ACCESS_KEY", "AKIA-SECRET-CANARY")
        .env("GITHUB_TOKEN", "ghp-TOKEN-CANARY")
        .env("KEEP_ME", "kept")
        .current_dir(work.path())
        .output_within();
    assert!(out.status.success(), "{out:?}");
    let sid = d.session("env").id;
    let rows = d.audit_session(&sid);
    let t = d.audit(&["timeline", "--session", "env"]);
    assert!(t.status.success(), "{t:?}");
    Some((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        rows,
        String::from_utf8_lossy(&t.stdout).into_owned(),
        d,
    ))
}

#[test]
fn credentials_the_profile_does_not_need_never_reach_the_agent() {
    let Some((env, rows, timeline, d)) = run_env("enforce") else {
        return;
    };
    let vars: Vec<&str> = env.lines().collect();
    assert!(
        !env.contains("AWS_SECRET_ACCESS_KEY") && !env.contains("GITHUB_TOKEN"),
        "{env}"
    );
    assert!(vars.contains(&"KEEP_ME=kept"), "{env}");
    assert!(vars.contains(&"HTTPS_PROXY=http://127.0.0.1:3128"), "{env}");
    let ctx = &rows[0]["context"]["environment"];
    assert_eq!(
        ctx,
        &serde_json::json!({
            "removed": ["AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN"],
            "replaced": [],
            "added": ["HTTPS_PROXY"],
            "applied": true,
        }),
        "{rows:?}"
    );
    assert!(
        timeline
            .contains("environment removed AWS_SECRET_ACCESS_KEY, GITHUB_TOKEN; set HTTPS_PROXY"),
        "{timeline}"
    );
    // The values are nowhere in the state directory.
    for f in fs::read_dir(d.db().parent().unwrap()).unwrap() {
        let f = f.unwrap().path();
        let bytes = fs::read(&f).unwrap_or_default();
        for canary in [&b"AKIA-SECRET-CANARY"[..], b"ghp-TOKEN-CANARY"] {
            assert!(
                !bytes.windows(canary.len()).any(|w| w == canary),
                "a value is in {}",
                f.display()
            );
        }
    }
}

#[test]
fn monitor_mode_records_the_change_it_would_make_and_makes_none() {
    let Some((env, rows, timeline, _d)) = run_env("monitor") else {
        return;
    };
    assert!(
        env.contains("AWS_SECRET_ACCESS_KEY=AKIA-SECRET-CANARY"),
        "{env}"
    );
    assert!(!env.contains("HTTPS_PROXY"), "{env}");
    assert_eq!(
        rows[0]["context"]["environment"]["applied"], false,
        "{rows:?}"
    );
    assert!(
        timeline.contains("(monitor: would be; nothing changed)"),
        "{timeline}"
    );
}
