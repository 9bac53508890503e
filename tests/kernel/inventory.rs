//! `agentwarden inventory`: what a live session holds, with its profile's verdict on each
//! credential within its reach and the owners answering for them.

use crate::support::*;

/// A session started as an ordinary user who holds an SSH agent, AWS credentials in the
/// home and a token in the environment: the inventory names the principal, lists each of
/// them with the profile's verdict and rule (the credentials file denied by
/// `claude-code`'s rule, the agent socket reachable, the variable by name and never its
/// value), the network and tool rules, and the profile's owners.
#[test]
fn the_inventory_lists_what_a_session_can_reach_with_verdicts_and_owners() {
    let Some(d) = Daemon::start() else { return };
    let work = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(work.path()).unwrap();
    let home = root.join("home");
    fs::create_dir_all(home.join(".aws")).unwrap();
    fs::write(
        home.join(".aws/credentials"),
        "[default]\naws_secret_access_key = AWS-VALUE-NEVER-SHOWN\n",
    )
    .unwrap();
    let name = format!("aw-inv-{}", std::process::id() % 100_000);
    let user = TestUser::create(&name, &home);
    user.chown(&home);
    let uid: u32 = String::from_utf8(
        Command::new("id")
            .args(["-u", &name])
            .output_within()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    // A real SSH agent of the user's, its socket in the user's own directory.
    let sock_dir = root.join("ssh");
    fs::create_dir_all(&sock_dir).unwrap();
    user.chown(&sock_dir);
    let sock = sock_dir.join("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .uid(uid)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_path(&sock, "ssh-agent never listened");
    let started = home.join("started");
    let mut session = d
        .cli()
        .args(["run", "--profile", "claude-code", "--user", &name])
        .args(["--session-name", "inv", "--"])
        .args([
            "/bin/sh",
            "-c",
            &format!("touch {}; sleep 60", started.display()),
        ])
        .current_dir(&home)
        .env("SSH_AUTH_SOCK", &sock)
        .env("GITHUB_TOKEN", "ghp-VALUE-NEVER-SHOWN")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_path(&started, "the session never started");
    let out = d.cli().args(["inventory", "--json"]).output_within();
    let text = d.cli().arg("inventory").output_within();
    let _ = session.kill();
    let _ = session.wait();
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(out.status.success(), "{out:?}");
    let all =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&text.stdout);
    assert!(
        !all.contains("VALUE-NEVER-SHOWN"),
        "a secret's value in the inventory:\n{all}"
    );
    let sessions: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let s = sessions
        .iter()
        .find(|s| s["name"] == "inv")
        .unwrap_or_else(|| panic!("no session inv: {sessions:#?}"));
    assert_eq!(s["profile"], "claude-code");
    assert_eq!(s["enrolment"], "run");
    assert_eq!(s["owners"]["business"], "Engineering productivity");
    assert_eq!(s["owners"]["technical"], "Platform security");
    assert_eq!(s["principal"]["uid"], uid);
    assert_eq!(s["principal"]["user"], name.as_str());
    assert_eq!(
        s["principal"]["capabilities"],
        serde_json::json!([]),
        "an ordinary user's agent holds no capability"
    );
    let creds = s["credentials"].as_array().unwrap();
    let find = |object: &str| {
        creds
            .iter()
            .find(|c| c["object"] == object)
            .unwrap_or_else(|| panic!("{object} not listed: {creds:#?}"))
    };
    let aws = find(&home.join(".aws/credentials").display().to_string());
    assert_eq!(
        (
            aws["kind"].as_str(),
            aws["what"].as_str(),
            aws["verdict"].as_str()
        ),
        (Some("file"), Some("AWS credentials"), Some("denied"))
    );
    let rule = aws["rule"].as_str().unwrap();
    assert!(
        rule.contains("claude-code.yaml:") && rule.contains("(files.deny["),
        "{rule}"
    );
    let agent_sock = find(&sock.display().to_string());
    assert_eq!(
        (agent_sock["kind"].as_str(), agent_sock["verdict"].as_str()),
        (Some("ssh-agent"), Some("allowed"))
    );
    let token = find("GITHUB_TOKEN");
    assert_eq!(
        (token["kind"].as_str(), token["verdict"].as_str()),
        (Some("environment"), Some("inherited"))
    );
    let network: Vec<&str> = s["network"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    assert!(
        network[0].starts_with("default deny")
            && network
                .iter()
                .any(|l| l.starts_with("allow api.anthropic.com")),
        "{network:?}"
    );
    let tools: Vec<&str> = s["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    assert!(tools.contains(&"deny Bash(sudo *)"), "{tools:?}");
    // The table a reviewer reads: the same, per session.
    let shown = String::from_utf8_lossy(&text.stdout);
    assert!(
        shown.contains("session ")
            && shown.contains("(inv), profile claude-code")
            && shown
                .contains("owners: business Engineering productivity, technical Platform security")
            && shown.contains("AWS credentials"),
        "{shown}"
    );
}
