//! The real Claude Code (npm, pinned, installed by `cargo xtask setup`) under its shipped
//! profile, driven by a scripted model server on loopback.

use crate::support::*;

/// An account for the agent, with its home in a temporary directory; removed on drop.
struct TestUser {
    name: String,
}

impl TestUser {
    fn create(name: &str, home: &Path) -> Self {
        let _ = Command::new("userdel").arg(name).output_within();
        let out = Command::new("useradd")
            .args(["-M", "-s", "/bin/bash", "-d"])
            .arg(home)
            .arg(name)
            .output_within();
        assert!(out.status.success(), "useradd: {out:?}");
        Self {
            name: name.to_owned(),
        }
    }

    fn chown(&self, path: &Path) {
        let out = Command::new("chown")
            .arg("-R")
            .arg(format!("{0}:{0}", self.name))
            .arg(path)
            .output_within();
        assert!(out.status.success(), "chown: {out:?}");
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// A network namespace of our own behind a veth pair, with a listener in it: a host that
/// is reachable from here and outside every shipped profile. Removed on drop.
struct ForeignHost {
    ns: String,
    veth: String,
    addr: String,
    listener: Child,
}

impl ForeignHost {
    fn start(tag: u32) -> Self {
        let ns = format!("aw-e2e-{tag}");
        let veth = format!("awe{tag}");
        let net = format!("198.18.{}", tag % 250);
        let addr = format!("{net}.1");
        let sh = |cmd: String| {
            let out = Command::new("sh").args(["-c", &cmd]).output_within();
            assert!(out.status.success(), "{cmd}: {out:?}");
        };
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let _ = Command::new("ip").args(["link", "del", &veth]).output();
        sh(format!(
            "ip netns add {ns} && ip link add {veth} type veth peer name {veth}p && \
             ip link set {veth}p netns {ns} && ip addr add {net}.2/30 dev {veth} && \
             ip link set {veth} up && ip -n {ns} addr add {addr}/30 dev {veth}p && \
             ip -n {ns} link set {veth}p up && ip -n {ns} link set lo up"
        ));
        let listener = Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-m", "http.server"])
            .args(["--bind", &addr, "8080"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("listener");
        let host = Self {
            ns,
            veth,
            addr,
            listener,
        };
        let start = Instant::now();
        while std::net::TcpStream::connect((host.addr.as_str(), 8080)).is_err() {
            assert!(
                start.elapsed() < patience(),
                "the foreign host never listened"
            );
            thread::sleep(Duration::from_millis(100));
        }
        host
    }
}

impl Drop for ForeignHost {
    fn drop(&mut self) {
        let _ = self.listener.kill();
        let _ = self.listener.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
    }
}

/// The scripted model server (`tests/support/scripted_model.py`) on loopback.
struct ModelServer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl ModelServer {
    fn start(dir: &Path, commands: &[String]) -> Self {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/support/scripted_model.py");
        let (log, port_file) = (dir.join("model.jsonl"), dir.join("model.port"));
        let child = Command::new("python3")
            .arg(script)
            .arg("0")
            .arg("--log")
            .arg(&log)
            .arg("--port-file")
            .arg(&port_file)
            .env(
                "SCRIPTED_COMMANDS",
                serde_json::to_string(commands).unwrap(),
            )
            .stdout(Stdio::null())
            .spawn()
            .expect("model server");
        let start = Instant::now();
        let port = loop {
            if let Some(p) = fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break p;
            }
            assert!(start.elapsed() < patience(), "model server did not start");
            thread::sleep(Duration::from_millis(50));
        };
        Self { child, port, log }
    }

    /// The tool results Claude Code sent back, in order: (is_error, content).
    fn tool_results(&self) -> Vec<(bool, String)> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .flat_map(|v| v["tool_results"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                let content = match &r["content"] {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (r["is_error"].as_bool().unwrap_or(false), content)
            })
            .collect()
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Done-when of the profiles issue: the real Claude Code (from npm, installed by `cargo
/// xtask setup`), started with `agentwarden run --profile claude-code` as an ordinary user
/// and driven by a scripted model on loopback, works in its project directory, while the
/// command it runs that reads `~/.ssh/id_rsa` is stopped before it holds a byte and its
/// connect to a host outside the profile is refused; both are recorded with the rule.
#[test]
fn claude_code_works_under_its_profile_and_is_stopped_at_credentials_and_foreign_hosts() {
    let Some(claude) = std::env::var_os("AGENTWARDEN_CLAUDE_CODE").map(PathBuf::from) else {
        return skip("AGENTWARDEN_CLAUDE_CODE unset: run through `cargo xtask test`");
    };
    if !claude.exists() {
        return skip("Claude Code not installed: run `cargo xtask setup`");
    }
    let Some(d) = Daemon::start() else { return };
    let work = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(work.path()).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
    let (home, project) = (root.join("home"), root.join("project"));
    fs::create_dir_all(home.join(".ssh")).unwrap();
    fs::create_dir_all(&project).unwrap();
    fs::write(home.join(".ssh/id_rsa"), "PRIVATE-KEY-CANARY\n").unwrap();
    let tag = std::process::id() % 10_000;
    let user = TestUser::create(&format!("aw-e2e-{tag}"), &home);
    user.chown(&home);
    user.chown(&project);
    let foreign = ForeignHost::start(tag);
    let commands = vec![
        "echo hello-from-claude > notes.txt && cat notes.txt".to_owned(),
        "cat ~/.ssh/id_rsa".to_owned(),
        format!(
            "python3 -c \"import socket; socket.create_connection(('{}', 8080), timeout=5); \
             print('connected')\"",
            foreign.addr
        ),
        "ls".to_owned(),
    ];
    let model = ModelServer::start(&root, &commands);

    let out = d
        .cli()
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("TERM", "dumb")
        .env(
            "ANTHROPIC_BASE_URL",
            format!("http://127.0.0.1:{}", model.port),
        )
        .env("ANTHROPIC_API_KEY", "sk-test")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_TELEMETRY", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("CLAUDE_CODE_MAX_RETRIES", "1")
        .args([
            "run",
            "--profile",
            "claude-code",
            "--session-name",
            "claude-e2e",
        ])
        .args(["--user", &user.name, "--"])
        .arg(&claude)
        .args(["-p", "run the scripted commands", "--allowedTools", "Bash"])
        .args(["--output-format", "json", "--no-session-persistence"])
        .current_dir(&project)
        .stdin(Stdio::null())
        .output_within();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "Claude Code failed: {out:?}\n{}",
        d.log()
    );
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).expect("claude json");
    assert_eq!(result["result"], "done", "{result}");
    assert_eq!(result["is_error"], false, "{result}");
    assert_eq!(
        result["permission_denials"].as_array().map(Vec::len),
        Some(0),
        "Claude Code ran every command: {result}"
    );

    // It worked normally in its project directory.
    assert_eq!(
        fs::read_to_string(project.join("notes.txt")).unwrap(),
        "hello-from-claude\n"
    );
    let results = model.tool_results();
    assert_eq!(results.len(), 4, "{results:?}");
    assert_eq!(results[0], (false, "hello-from-claude".to_owned()));
    assert!(results[3].1.contains("notes.txt"), "{results:?}");
    // The key reader was stopped before it held a byte; the connect was refused.
    assert!(results[1].0, "{results:?}");
    assert!(
        results.iter().all(|(_, c)| !c.contains("CANARY")),
        "the key leaked to the model: {results:?}"
    );
    assert!(
        results[2].0 && results[2].1.contains("Operation not permitted"),
        "{results:?}"
    );

    let session = d.session("claude-e2e");
    assert_eq!(session.owner_user.as_deref(), Some(user.name.as_str()));
    let evs = d.wait_for(&session.id, "the session's end", |evs| {
        evs.iter().any(|e| e.kind() == EventKind::SessionEnd)
    });
    let key = home.join(".ssh/id_rsa").to_string_lossy().into_owned();
    let on_key = evs
        .iter()
        .filter(|e| e.open().is_some_and(|o| o.path == key))
        .find_map(|e| e.decision.clone())
        .unwrap_or_else(|| panic!("no decision on {key}:\n{}", dump(&evs)));
    assert_eq!(on_key.decision, Verdict::Deny);
    assert!(
        matches!(
            (on_key.action.as_str(), on_key.enforced_by.as_str()),
            ("killed", "signal") | ("blocked", "lsm")
        ),
        "{on_key:?}"
    );
    assert!(
        on_key
            .rule
            .starts_with("rules/claude-code.yaml:29 (files.deny[0])"),
        "{on_key:?}"
    );
    let on_net = evs
        .iter()
        .filter(|e| e.net().is_some_and(|n| n.address == foreign.addr))
        .find_map(|e| e.decision.clone())
        .unwrap_or_else(|| panic!("no decision on {}:\n{}", foreign.addr, dump(&evs)));
    assert_eq!(
        (
            on_net.decision.as_str(),
            on_net.action.as_str(),
            on_net.enforced_by.as_str(),
            on_net.rule.as_str()
        ),
        ("deny", "blocked", "cgroup", "network.default")
    );
    // The model API on loopback was allowed by the profile's rule.
    assert!(
        evs.iter()
            .any(|e| e.net().is_some_and(|n| n.port == model.port)
                && e.decision
                    .as_ref()
                    .is_some_and(|x| x.decision == Verdict::Allow)),
        "{}",
        dump(&evs)
    );
    // The audit trail answers who did what: the timeline shows what it ran, read and
    // connected to with the decisions and the owners; the chain verifies, and editing
    // one row makes verification fail naming that row.
    let _ = d.audit_session("claude-e2e");
    let t = d.audit(&["timeline", "--session", "claude-e2e"]);
    assert!(t.status.success(), "{t:?}");
    let timeline = String::from_utf8_lossy(&t.stdout);
    for needle in [
        "agent      claude-code".to_owned(),
        format!("principal  {} (uid ", user.name),
        "cat ~/.ssh/id_rsa".to_owned(),
        format!("{key} O_RDONLY"),
        "DENY killed by signal".to_owned(),
        format!("{}:8080", foreign.addr),
        "DENY blocked by cgroup: network.default".to_owned(),
        "echo hello-from-claude".to_owned(),
    ] {
        assert!(
            timeline.contains(&needle),
            "no `{needle}` in the timeline:\n{timeline}"
        );
    }
    let profile = agentwarden::profiles::ProfileSet::embedded().unwrap();
    let owners = &profile.get("claude-code").unwrap().file.owners;
    assert!(
        timeline.contains(&format!(
            "business: {}, technical: {}",
            owners.business, owners.technical
        )),
        "{timeline}"
    );
    let to_foreign = d.audit_query(&["--session", "claude-e2e", "--dest", &foreign.addr]);
    assert!(
        to_foreign
            .iter()
            .any(|r| r["decision"]["action"] == "blocked"),
        "{to_foreign:?}"
    );
    let v = d.audit(&["verify"]);
    assert!(v.status.success(), "{v:?}");
    let db = rusqlite::Connection::open(d.db()).unwrap();
    let seq: i64 = db
        .query_row(
            "SELECT seq FROM actions WHERE kind = 'open' AND path = ?1",
            [&key],
            |r| r.get(0),
        )
        .unwrap();
    db.execute(
        "UPDATE actions SET path = '/tmp/nothing-to-see' WHERE seq = ?1",
        [seq],
    )
    .unwrap();
    let v = d.audit(&["verify"]);
    assert_eq!(v.status.code(), Some(1), "{v:?}");
    assert!(
        String::from_utf8_lossy(&v.stdout).contains(&format!("(actions row seq={seq}) was edited")),
        "{v:?}"
    );
    println!("claude code audit timeline:\n{timeline}");
    println!(
        "claude code under claude-code: worked in {}, key read {} by {}, connect to {} {} by {}",
        project.display(),
        on_key.action,
        on_key.enforced_by,
        foreign.addr,
        on_net.action,
        on_net.enforced_by
    );
}
