//! `agentwarden hook <dialect>`: the command an agent runs at each hook event. Reads
//! the event on stdin (at most [`INPUT_MAX`] bytes), asks the daemon, answers the agent.
//!
//! Failing closed where it matters: under `agentwarden run` (which sets
//! [`HOOK_SOCKET_ENV`]) a question before a tool call that cannot be asked (the daemon
//! does not answer, the input is unreadable) refuses the call with the reason on stderr
//! (exit 2, which the agent shows the model); anything else only reports the problem
//! (exit 1). Outside `run`, with no daemon, the hook says nothing and lets the agent be
//! (a host-wide install must not break agents where agentwarden is stopped).

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use super::{DEFAULT_HOOK_SOCKET, Dialect, HOOK_SOCKET_ENV, HookAnswer, INPUT_MAX};
use crate::proto::{Request, Response};

/// How long the hook waits for the daemon (it holds the agent's tool call meanwhile).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Exit code that makes Claude Code refuse the call and show stderr to the model.
const REFUSE: u8 = 2;

pub fn run(dialect: Dialect, socket: Option<PathBuf>) -> ExitCode {
    let under_run = std::env::var_os(HOOK_SOCKET_ENV).is_some();
    let socket = socket
        .or_else(|| std::env::var_os(HOOK_SOCKET_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_HOOK_SOCKET));
    let mut raw = Vec::new();
    let read = std::io::stdin()
        .lock()
        .take(INPUT_MAX as u64 + 1)
        .read_to_end(&mut raw);
    let before_call = dialect.asks_before_a_call(&raw);
    let fail = |why: String| {
        eprintln!("agentwarden hook: {why}");
        ExitCode::from(if under_run && before_call { REFUSE } else { 1 })
    };
    if let Err(e) = read {
        return fail(format!("reading the hook input: {e}"));
    }
    if raw.len() > INPUT_MAX {
        return fail(format!(
            "the hook input is larger than {} KiB; nothing was recorded",
            INPUT_MAX / 1024
        ));
    }
    let input: serde_json::Value = match serde_json::from_slice(&raw) {
        Ok(v) => v,
        Err(e) => {
            return fail(format!(
                "the hook input is not JSON ({e}); nothing was recorded"
            ));
        }
    };
    let event = input
        .get("hook_event_name")
        .and_then(|e| e.as_str())
        .unwrap_or_default()
        .to_owned();
    let answer = match ask(&socket, dialect, input) {
        Ok(a) => a,
        Err(Unreachable(e)) if !under_run => {
            // No daemon here, and not started under one: not governed, nothing to say.
            tracing::debug!("hook socket {}: {e}", socket.display());
            return ExitCode::SUCCESS;
        }
        Err(Unreachable(e)) => {
            return fail(format!(
                "the agentwarden daemon does not answer on {} ({e}): tool rules cannot be \
                 checked",
                socket.display()
            ));
        }
    };
    let answer = match answer {
        Ok(a) => a,
        Err(message) => return fail(message),
    };
    let (out, code) = dialect.render(&event, &answer);
    if let Some(out) = out {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{out}");
    }
    ExitCode::from(code)
}

/// The daemon could not be reached at all.
struct Unreachable(std::io::Error);

/// The daemon's answer, or its refusal of the input.
fn ask(
    socket: &PathBuf,
    dialect: Dialect,
    input: serde_json::Value,
) -> Result<Result<HookAnswer, String>, Unreachable> {
    let mut stream = UnixStream::connect(socket).map_err(Unreachable)?;
    // Longer where `run` said a call may be held for a person.
    let wait = std::env::var(super::HOOK_ANSWER_ENV)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(ANSWER_TIMEOUT, |s| {
            Duration::from_secs(s).clamp(ANSWER_TIMEOUT, Duration::from_secs(3_700))
        });
    stream.set_read_timeout(Some(wait)).map_err(Unreachable)?;
    let mut line = serde_json::to_string(&Request::Hook { dialect, input })
        .map_err(|e| Unreachable(std::io::Error::other(e)))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(Unreachable)?;
    let mut resp = String::new();
    BufReader::new(stream)
        .read_line(&mut resp)
        .map_err(Unreachable)?;
    Ok(match serde_json::from_str::<Response>(&resp) {
        Ok(Response::Hook { answer }) => Ok(answer),
        Ok(Response::Error { message }) => Err(format!("the daemon refused the input: {message}")),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(_) if resp.is_empty() => {
            Err("the daemon closed the connection without answering".into())
        }
        Err(e) => Err(format!("unreadable answer ({e})")),
    })
}
