//! OpenTelemetry export to a real collector on loopback (rotel, an OTLP collector from
//! PyPI installed by `cargo xtask setup`, printing what it receives): a session with a
//! reported tool call arrives as an `invoke_agent` span, the call as an `execute_tool`
//! span under it, and the exec made in the call as a log record tied to the call's span.

use agentwarden::otlp::{call_span_id, session_span_id, trace_id};

use crate::{agents::installed, support::*};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The collector, printing what it receives into a file; stopped on drop.
struct Collector {
    child: Child,
    out: PathBuf,
    port: u16,
    _dir: TempDir,
}

impl Collector {
    fn start(bin: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("received.txt");
        let (port, grpc) = (free_port(), free_port());
        let child = Command::new(bin)
            .args(["start", "--exporter", "blackhole"])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{port}")])
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
            .args(["--debug-log", "traces", "--debug-log", "logs"])
            .args(["--debug-log-verbosity", "detailed"])
            .stdout(fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("the collector");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < patience(), "the collector never listened");
            thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            out,
            port,
            _dir: dir,
        }
    }

    fn received(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sessions_tool_calls_and_actions_reach_an_otlp_collector() {
    let rotel = match installed("otel-collector", xtask_rotel()) {
        Ok(p) => p,
        Err(why) => return skip(&why),
    };
    let collector = Collector::start(&rotel);
    let endpoint = format!("http://127.0.0.1:{}", collector.port);
    let Some(d) = Daemon::start_with(&["--otlp-endpoint", &endpoint]) else {
        return;
    };
    let report = |event: &str| {
        serde_json::json!({
            "session_id": "agent-otel", "hook_event_name": event, "prompt_id": "p1",
            "tool_name": "Bash", "tool_input": {"command": "cat /etc/hostname"},
            "tool_use_id": "toolu_otel",
        })
        .to_string()
    };
    // The shell reports the call, makes it, and reports its end, as an agent does.
    let script = format!(
        "printf '%s' '{}' | \"$0\" hook claude-code && cat /etc/hostname > /dev/null && \
         printf '%s' '{}' | \"$0\" hook claude-code",
        report("PreToolUse"),
        report("PostToolUse")
    );
    let work = tempfile::tempdir().unwrap();
    let out = d
        .cli()
        .args(["run", "--profile", "demo", "--session-name", "otel", "--"])
        .args(["/bin/sh", "-c", &script, bin()])
        .env("AGENTWARDEN_HOOK_SOCKET", d.dir.path().join("hook.sock"))
        .current_dir(work.path())
        .output_within();
    assert!(out.status.success(), "{out:?}");
    let sid = d.session("otel").id;
    d.wait_for(&sid, "the session's end", |evs| {
        evs.iter().any(|e| e.kind() == EventKind::SessionEnd)
    });
    let (trace, session_span, call_span) = (
        trace_id(&sid),
        session_span_id(&sid),
        call_span_id(&sid, "toolu_otel"),
    );
    let start = Instant::now();
    loop {
        let got = collector.received();
        let all = [
            "execute_tool Bash",
            "gen_ai.tool.call.id: Str(toolu_otel)",
            "gen_ai.operation.name: Str(execute_tool)",
            "invoke_agent demo",
            "gen_ai.operation.name: Str(invoke_agent)",
            "event.name: Str(agentwarden.exec)",
            &trace,
            &session_span,
            &call_span,
        ];
        if all.iter().all(|n| got.contains(n)) {
            // The exec's log record points at the call's span.
            let exec = got
                .split("LogRecord #")
                .find(|r| {
                    r.contains("event.name: Str(agentwarden.exec)") && r.contains("/usr/bin/cat")
                })
                .unwrap_or_else(|| panic!("no log record of the cat's exec:\n{got}"));
            assert!(exec.contains(&call_span) && exec.contains(&trace), "{exec}");
            break;
        }
        assert!(
            start.elapsed() < patience(),
            "the collector did not get {:?}:\n{got}\n{}",
            all.iter().filter(|n| !got.contains(*n)).collect::<Vec<_>>(),
            d.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    let st: StatusReport = d.json(&["status", "--json"]);
    assert!(
        st.daemon_counters.otlp_exported > 0,
        "{:?}",
        st.daemon_counters
    );
    assert_eq!(
        (
            st.daemon_counters.otlp_dropped,
            st.daemon_counters.otlp_errors
        ),
        (0, 0)
    );
}

/// The collector's path in its install directory (as `cargo xtask setup` installs it).
fn xtask_rotel() -> &'static str {
    "lib/python3.11/site-packages/rotel/rotel-agent"
}
