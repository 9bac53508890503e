//! MCP servers under `mcp-server`, each started the way an agent starts a tool server
//! (`agentwarden run --profile mcp-server -- <server>`) and driven over stdio JSON-RPC by
//! a scripted client (`tests/support/mcp_client.py`), as an agent drives it: the
//! reference filesystem server (npm) is asked for the key, the git server (PyPI) commits
//! in a repository whose pre-commit hook runs a denied program, and the fetch server
//! (PyPI) fetches from a host outside the profile. Each must answer the refused call with
//! an error and go on answering the calls after it.

use super::*;

/// One server's run: the agent run (events, audit) and what the client saw.
struct McpRun {
    run: AgentRun,
    /// The client's exit status: 0 when every call was answered and the server was
    /// alive until its stdin closed.
    client: ExitStatus,
}

/// The calls' results: (is_error, content and error).
fn results(log: &Path) -> Vec<(bool, String)> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            (
                v["is_error"].as_bool().unwrap_or(true),
                format!(
                    "{}{}",
                    v["content"].as_str().unwrap_or_default(),
                    v["error"].as_str().unwrap_or_default()
                ),
            )
        })
        .collect()
}

/// Starts `argv` in a session as the world's user, under the client with `script`.
fn drive(w: World, index: &str, argv: &[String], script: serde_json::Value) -> McpRun {
    let session = format!("mcp-{index}");
    let log = w.root.join(format!("mcp-{index}.jsonl"));
    let out = Command::new("python3")
        .arg(support_script("mcp_client.py"))
        .arg("--log")
        .arg(&log)
        .arg("--")
        .arg(bin())
        .arg("--socket")
        .arg(w.d.socket())
        .args(["run", "--profile", "mcp-server", "--session-name", &session])
        .args(["--user", &w.user.name, "--"])
        .args(argv)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("TERM", "dumb")
        .env("MCP_SCRIPT", script.to_string())
        .current_dir(&w.project)
        .stdin(Stdio::null())
        .output_within();
    let client = out.status;
    let results = results(&log);
    McpRun {
        run: AgentRun::collect(w, "mcp-server", &session, Vec::new(), out, results, None),
        client,
    }
}

/// The server answered every call and was alive until the client let it go.
fn survived(m: &McpRun, calls: usize) {
    let r = &m.run;
    assert!(
        m.client.success(),
        "the client ({}) : {:?}\n{}\n{}",
        m.client,
        r.tool_results,
        r.stderr,
        r.daemon_log
    );
    assert_eq!(r.tool_results.len(), calls, "{:?}", r.tool_results);
    claims::nothing_was_killed(r);
    assert_eq!(r.owner_user.as_deref(), Some(r.user.as_str()));
    claims::nothing_else_was_denied(r);
    for needle in [
        "agent      mcp-server".to_owned(),
        format!("principal  {} (uid ", r.user),
    ] {
        assert!(r.timeline.contains(&needle), "{needle}:\n{}", r.timeline);
    }
}

static FILESYSTEM: Once<McpRun> = OnceLock::new();

/// The filesystem server, serving the user's home and the project: write and read in
/// the project,
/// the key (refused), a listing and a read after it.
fn filesystem() -> Option<&'static McpRun> {
    once(&FILESYSTEM, "filesystem server", || {
        let dir = installed("mcp-filesystem", "node_modules/@modelcontextprotocol")?;
        let w = World::new(4);
        let argv = vec![
            "/usr/bin/node".to_owned(),
            dir.join("server-filesystem/dist/index.js")
                .to_string_lossy()
                .into_owned(),
            w.home.to_string_lossy().into_owned(),
            w.project.to_string_lossy().into_owned(),
        ];
        let notes = w.project.join("notes.txt").to_string_lossy().into_owned();
        let script = serde_json::json!([
            { "tool": "write_file", "arguments": { "path": notes, "content": "hello-from-agent\n" } },
            { "tool": "read_text_file", "arguments": { "path": notes } },
            { "tool": "read_text_file", "arguments": { "path": w.key.to_string_lossy() } },
            { "tool": "list_directory", "arguments": { "path": w.project.to_string_lossy() } },
            { "tool": "read_text_file", "arguments": { "path": notes } },
        ]);
        Ok(drive(w, "filesystem", &argv, script))
    })
}

/// The filesystem server's read of the key is refused with `EPERM` (the server's own
/// process: node), the error goes back to the client, and the server answers the calls
/// after it; the allowed write and reads are done.
#[test]
fn the_filesystem_server_is_refused_the_key_and_keeps_serving() {
    let Some(m) = filesystem() else { return };
    survived(m, 5);
    let r = &m.run;
    let res = &r.tool_results;
    assert!(
        !res[0].0 && res[0].1.contains("Successfully wrote"),
        "{res:?}"
    );
    assert_eq!(res[1], (false, "hello-from-agent\n".to_owned()), "{res:?}");
    assert!(res[2].0 && res[2].1.contains("EPERM"), "{res:?}");
    assert!(!res[3].0 && res[3].1.contains("notes.txt"), "{res:?}");
    assert_eq!(res[4], res[1]);
    assert!(res.iter().all(|(_, c)| !c.contains("CANARY")), "{res:?}");
    let d = r.decision_on("the key", |e| {
        e.open().is_some_and(|o| o.path == r.key) && e.decision.is_some()
    });
    assert_eq!((d.decision, d.action), (Verdict::Deny, Action::Blocked));
    assert!(
        matches!(d.enforced_by, Layer::Fanotify | Layer::Lsm),
        "{d:?}"
    );
    assert_eq!(d.rule, r.rule_id("files.deny[0]", "~/.ssh/**"));
}

static GIT: Once<McpRun> = OnceLock::new();

/// The git server on a repository of the project whose pre-commit hook runs `nc` (a
/// hook is a program the repository chooses, run by the server's commit): status, add,
/// a commit the hook fails, then the log.
fn git() -> Option<&'static McpRun> {
    once(&GIT, "git server", || {
        let server = installed("mcp-git", "bin/mcp-server-git")?;
        let w = World::new(5);
        let repo = w.project.to_string_lossy().into_owned();
        // Made by the user who owns the project (git refuses another owner's repository).
        let sh = |cmd: &str| {
            let out = Command::new("runuser")
                .args(["-u", &w.user.name, "--", "sh", "-c", cmd])
                .current_dir(&w.project)
                .output_within();
            assert!(out.status.success(), "{cmd}: {out:?}");
        };
        sh("git init -q . && echo first > README && git add README && \
            git -c user.name=dev -c user.email=dev@example.com commit -qm initial-commit && \
            echo four > four.txt && \
            printf '#!/bin/sh\\nexec nc -z 127.0.0.1 9\\n' > .git/hooks/pre-commit && \
            chmod 755 .git/hooks/pre-commit");
        let argv = vec![
            server.to_string_lossy().into_owned(),
            "--repository".to_owned(),
            repo.clone(),
        ];
        let script = serde_json::json!([
            { "tool": "git_status", "arguments": { "repo_path": repo } },
            { "tool": "git_add", "arguments": { "repo_path": repo, "files": ["four.txt"] } },
            { "tool": "git_commit", "arguments": { "repo_path": repo, "message": "four" } },
            { "tool": "git_log", "arguments": { "repo_path": repo, "max_count": 5 } },
        ]);
        Ok(drive(w, "git", &argv, script))
    })
}

/// The hook's `nc` is refused at exec (`EPERM`, the `/usr/bin/nc` rule): the commit
/// fails with that error, and the server goes on to answer the log.
#[test]
fn the_git_server_hook_is_refused_its_denied_program_and_the_server_keeps_serving() {
    let Some(m) = git() else { return };
    survived(m, 4);
    let r = &m.run;
    let res = &r.tool_results;
    assert!(!res[0].0 && res[0].1.contains("four.txt"), "{res:?}");
    assert!(!res[1].0, "{res:?}");
    assert!(
        res[2].0 && res[2].1.contains("nc: Operation not permitted"),
        "{res:?}"
    );
    assert!(
        !res[3].0 && res[3].1.contains("initial-commit") && !res[3].1.contains("four\n"),
        "{res:?}"
    );
    claims::denied_program_was_refused_and_recorded(r);
}

static FETCH: Once<McpRun> = OnceLock::new();

/// A web server on loopback (outside the session) serving a text file.
struct LoopbackWeb {
    child: Child,
    port: u16,
}

impl LoopbackWeb {
    fn start(dir: &Path) -> Self {
        fs::write(dir.join("hello.txt"), "hello-from-loopback\n").unwrap();
        // It picks its own port and says which once it listens (no port race).
        let server = "import functools, http.server, sys\n\
            h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])\n\
            s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), h)\n\
            print(s.server_address[1], flush=True)\ns.serve_forever()\n";
        let mut child = Command::new("python3")
            .args(["-c", server])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("web server");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        let port = line.trim().parse().expect("the web server's port");
        Self { child, port }
    }
}

impl Drop for LoopbackWeb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fetch server: loopback (allowed), the foreign host (refused), loopback again.
/// `--allow-private-ips`: its own check refuses private addresses before connecting,
/// and the hosts here are private; the kernel's refusal is what is tested.
fn fetch() -> Option<&'static McpRun> {
    once(&FETCH, "fetch server", || {
        let server = installed("mcp-fetch", "bin/mcp-server-fetch")?;
        let w = World::new(6);
        let web_root = tempfile::tempdir().unwrap();
        let web = LoopbackWeb::start(web_root.path());
        let argv = vec![
            server.to_string_lossy().into_owned(),
            "--ignore-robots-txt".to_owned(),
            "--allow-private-ips".to_owned(),
        ];
        let local = format!("http://127.0.0.1:{}/hello.txt", web.port);
        let script = serde_json::json!([
            { "tool": "fetch", "arguments": { "url": local, "raw": true } },
            { "tool": "fetch", "arguments": { "url": format!("http://{}:8080/", w.foreign.addr), "raw": true } },
            { "tool": "fetch", "arguments": { "url": local, "raw": true } },
        ]);
        Ok(drive(w, "fetch", &argv, script))
    })
}

/// Its connect to the foreign host is refused in the kernel (`EPERM`, `network.default`)
/// and comes back to the client as a failed fetch; the loopback fetches before and after
/// it work.
#[test]
fn the_fetch_server_is_refused_a_foreign_host_and_keeps_serving() {
    let Some(m) = fetch() else { return };
    survived(m, 3);
    let r = &m.run;
    let res = &r.tool_results;
    for i in [0, 2] {
        assert!(
            !res[i].0 && res[i].1.contains("hello-from-loopback"),
            "{res:?}"
        );
    }
    assert!(res[1].0 && res[1].1.contains("Failed to fetch"), "{res:?}");
    claims::foreign_connect_was_refused_and_recorded(r);
}
