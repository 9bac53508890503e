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

/// A real MCP server (the filesystem server, from npm) started outside agentwarden is
/// listed by `inventory --unmanaged` with what it looks like, raised as an event once
/// (not again at the next scan) and counted by the gauge; the same server started under
/// `agentwarden run` is in a session and is not listed.
#[test]
fn an_agent_started_outside_agentwarden_is_listed_raised_once_and_counted() {
    let dir = match crate::agents::installed("mcp-filesystem", "node_modules/@modelcontextprotocol")
    {
        Ok(d) => d,
        Err(why) => return skip(&why),
    };
    let server = dir.join("server-filesystem/dist/index.js");
    let Some((d, addr)) = Daemon::start_with_metrics(&[]) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    // Stdin held open: a stdio MCP server serves until its client goes.
    let spawn = |cmd: &mut Command| {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut outside = spawn(Command::new("/usr/bin/node").arg(&server).arg(work.path()));
    let mut inside = spawn(
        d.cli()
            .args([
                "run",
                "--profile",
                "mcp-server",
                "--session-name",
                "governed",
                "--",
            ])
            .arg("/usr/bin/node")
            .arg(&server)
            .arg(work.path()),
    );
    let start = Instant::now();
    let governed = loop {
        if let Some(s) = d.sessions().into_iter().find(|s| s.name == "governed") {
            break s;
        }
        assert!(start.elapsed() < patience(), "no session:\n{}", d.log());
        thread::sleep(Duration::from_millis(100));
    };
    let start = Instant::now();
    let listed = loop {
        let list: Vec<agentwarden::unmanaged::UnmanagedProcess> =
            d.json(&["inventory", "--unmanaged", "--json"]);
        if let Some(p) = list.iter().find(|p| p.pid == outside.id()) {
            assert!(
                list.iter().all(|p| p.pid != governed.root_pid),
                "the governed server is listed: {list:?}"
            );
            break p.clone();
        }
        assert!(start.elapsed() < patience(), "not listed: {list:?}");
        thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(listed.agent, "mcp-server");
    assert!(
        listed.matched.contains("@modelcontextprotocol/server-"),
        "{listed:?}"
    );
    assert_eq!(listed.uid, 0);
    let text = d.cli().args(["inventory", "--unmanaged"]).output_within();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&outside.id().to_string()) && l.contains("mcp-server")),
        "{text}"
    );
    // The event, once: raised by the periodic scan, not again by the next one.
    let raised = |d: &Daemon| {
        d.events(None)
            .into_iter()
            .filter(|e| {
                e.kind() == EventKind::UnmanagedAgent
                    && e.process.as_ref().is_some_and(|p| p.tgid == outside.id())
            })
            .count()
    };
    let start = Instant::now();
    while raised(&d) == 0 {
        assert!(
            start.elapsed() < patience(),
            "no unmanaged_agent event:\n{}",
            d.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    thread::sleep(scaled(Duration::from_secs(6)));
    assert_eq!(raised(&d), 1);
    let never_governed = d
        .events(None)
        .into_iter()
        .filter(|e| e.kind() == EventKind::UnmanagedAgent)
        .all(|e| {
            e.process
                .as_ref()
                .is_some_and(|p| p.tgid != governed.root_pid)
        });
    assert!(never_governed);
    let metrics = http_get(&addr, "/metrics");
    let gauge: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("agentwarden_unmanaged_agents "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no gauge:\n{metrics}"));
    assert!(gauge >= 1, "{gauge}");
    let _ = outside.kill();
    let _ = outside.wait();
    let _ = inside.kill();
    let _ = inside.wait();
}
