//! Agents outside governance: processes that look like an AI agent or an MCP server (by
//! the known agents' programs and command lines, and by every profile's `match:`
//! selectors) but are in no session. An agent that escaped governance is itself a
//! finding: `inventory --unmanaged` lists them, the daemon raises an event once per
//! process and exports their number as a gauge. Matching is pure (unit-tested); the
//! scan reads `/proc`.

use serde::{Deserialize, Serialize};

use crate::policy::selectors::CheckedSelector;

/// A process that looks like an agent, outside every session.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnmanagedProcess {
    pub pid: u32,
    pub uid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub exe: String,
    pub argv: Vec<String>,
    /// The cgroup v2 path (`/proc/PID/cgroup`'s `0::`).
    pub cgroup: String,
    /// The known agent, or the profile whose selector matched.
    pub agent: String,
    /// What matched.
    pub matched: String,
    /// Boot-relative start time (clock ticks): with the pid, one process's identity.
    #[serde(default)]
    pub start_ticks: u64,
}

/// Interpreters an agent's script runs under: the script is then argv[1] (or after
/// `-m`).
const INTERPRETERS: &[&str] = &[
    "node", "nodejs", "bun", "deno", "python", "python3", "env", "npx", "uv", "uvx", "pipx",
];

/// The known agents, by the name their command goes by and the package their script
/// comes from.
const KNOWN: &[(&str, &[&str], &[&str])] = &[
    ("claude-code", &["claude"], &["@anthropic-ai/claude-code/"]),
    ("codex-cli", &["codex"], &["@openai/codex/"]),
    ("gemini-cli", &["gemini"], &["@google/gemini-cli/"]),
    ("aider", &["aider"], &["/aider/"]),
];

fn base(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

fn is_interpreter(s: &str) -> bool {
    let b = base(s);
    INTERPRETERS.iter().any(|i| {
        b == *i
            || (b.starts_with(i) && b[i.len()..].chars().all(|c| c.is_ascii_digit() || c == '.'))
    })
}

/// The command a process runs: its program, or the script (or `-m` module) its
/// interpreter runs.
fn commands<'a>(exe: &'a str, argv: &'a [String]) -> Vec<&'a str> {
    let mut out = vec![exe];
    if let Some(a0) = argv.first() {
        out.push(a0);
    }
    if argv.first().is_some_and(|a| is_interpreter(a)) || is_interpreter(exe) {
        let mut rest = argv.iter().skip(1).map(String::as_str);
        while let Some(t) = rest.next() {
            if t == "-m" {
                if let Some(m) = rest.next() {
                    out.push(m);
                }
                break;
            }
            if t.starts_with('-') {
                continue;
            }
            out.push(t);
            // `env node script`: the interpreter, then its script.
            if is_interpreter(t) {
                continue;
            }
            break;
        }
    }
    out
}

/// What a process looks like, if an agent: the known agents and MCP servers first,
/// then the profiles' selectors (`(profile, selector)`).
pub fn looks_like(
    exe: &str,
    argv: &[String],
    cgroup: &str,
    selectors: &[(String, CheckedSelector)],
) -> Option<(String, String)> {
    let cmds = commands(exe, argv);
    for (agent, names, packages) in KNOWN {
        for c in &cmds {
            if names.contains(&base(c)) {
                return Some(((*agent).to_owned(), format!("command `{c}`")));
            }
            if let Some(p) = packages.iter().find(|p| c.contains(*p)) {
                return Some(((*agent).to_owned(), format!("script of {p} (`{c}`)")));
            }
        }
    }
    for c in &cmds {
        let b = base(c);
        if b.starts_with("mcp-server")
            || b.starts_with("mcp_server")
            || c.contains("@modelcontextprotocol/server-")
        {
            return Some(("mcp-server".to_owned(), format!("MCP server `{c}`")));
        }
    }
    for (profile, s) in selectors {
        if selector_matches(s, exe, argv, cgroup) {
            return Some((profile.clone(), format!("selector {}", s.describe())));
        }
    }
    None
}

/// A selector judged in userspace as the kernel judges it at exec (labels aside: a
/// container's labels are the runtime's).
fn selector_matches(s: &CheckedSelector, exe: &str, argv: &[String], cgroup: &str) -> bool {
    use agent_common::{
        policy::FORM_PREFIX,
        selector::{ARGV_EXACT, ARGV_SUFFIX},
    };
    if !s.selector.labels.is_empty() {
        return false;
    }
    if !s.exe_paths.is_empty()
        && !s.exe_paths.iter().any(|(form, p)| {
            exe == p
                || (*form == FORM_PREFIX
                    && exe
                        .strip_prefix(p.as_str())
                        .is_some_and(|r| r.starts_with('/')))
        })
    {
        return false;
    }
    let token_ok = |(form, text): &(u8, String)| {
        argv.iter().any(|t| {
            t == text
                || (*form == ARGV_SUFFIX
                    && t.strip_suffix(text.as_str())
                        .is_some_and(|r| r.ends_with('/')))
        }) && (*form == ARGV_EXACT || *form == ARGV_SUFFIX)
    };
    if !s.argv.iter().all(token_ok) {
        return false;
    }
    if let Some(c) = &s.selector.cgroup {
        let c = c.trim_end_matches('/');
        if !(cgroup == c || cgroup.strip_prefix(c).is_some_and(|r| r.starts_with('/'))) {
            return false;
        }
    }
    true
}

/// The processes of the host that look like agents and for which `in_session` is
/// false; the daemon's own excluded.
pub fn scan(
    selectors: &[(String, CheckedSelector)],
    in_session: impl Fn(u32) -> bool,
) -> Vec<UnmanagedProcess> {
    let me = std::process::id();
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in all.flatten() {
        let pid = p.pid as u32;
        if pid == me {
            continue;
        }
        // Kernel threads have no program.
        let Ok(exe) = p.exe() else { continue };
        let Ok(argv) = p.cmdline() else { continue };
        let exe = exe.display().to_string();
        let cgroup = crate::containers::cgroup_of(pid).unwrap_or_default();
        let Some((agent, matched)) = looks_like(&exe, &argv, &cgroup, selectors) else {
            continue;
        };
        if in_session(pid) {
            continue;
        }
        let Ok(stat) = p.stat() else { continue };
        // A thread group's other tasks share its pid's entry: one per process.
        out.push(UnmanagedProcess {
            pid,
            uid: p.uid().unwrap_or(0),
            user: None,
            exe,
            argv,
            cgroup,
            agent,
            matched,
            start_ticks: stat.starttime,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn known_agents_and_mcp_servers_are_recognised_by_command_and_script() {
        let cases = [
            (
                "/usr/bin/node",
                v(&["node", "/usr/local/bin/claude", "-p", "hi"]),
                Some("claude-code"),
            ),
            (
                "/usr/bin/node",
                v(&["node", "/x/node_modules/@openai/codex/bin/codex.js"]),
                Some("codex-cli"),
            ),
            (
                "/usr/bin/python3.11",
                v(&["/usr/bin/python3", "-m", "aider"]),
                Some("aider"),
            ),
            (
                "/usr/bin/python3.11",
                v(&["python3", "/opt/venv/bin/aider", "--yes"]),
                Some("aider"),
            ),
            (
                "/usr/bin/node",
                v(&[
                    "node",
                    "/n/@modelcontextprotocol/server-filesystem/dist/index.js",
                    "/tmp",
                ]),
                Some("mcp-server"),
            ),
            (
                "/opt/venv/bin/python3",
                v(&["/opt/venv/bin/python3", "/opt/venv/bin/mcp-server-git"]),
                Some("mcp-server"),
            ),
            (
                "/usr/bin/env",
                v(&["/usr/bin/env", "node", "/usr/local/bin/gemini"]),
                Some("gemini-cli"),
            ),
            // An editor opening a file named like an agent is not one.
            ("/usr/bin/vim", v(&["vim", "claude"]), None),
            ("/usr/bin/grep", v(&["grep", "-r", "aider", "."]), None),
            ("/usr/bin/node", v(&["node", "server.js"]), None),
        ];
        for (exe, argv, want) in cases {
            let got = looks_like(exe, &argv, "/", &[]).map(|(a, _)| a);
            assert_eq!(got.as_deref(), want, "{exe} {argv:?}");
        }
    }

    #[test]
    fn profile_selectors_are_judged_as_the_kernel_does() {
        use crate::policy::selectors::{Selector, check};
        let mk = |s: Selector| {
            let (exe_paths, argv) = check(&s).unwrap();
            CheckedSelector {
                selector: s,
                exe_paths,
                argv,
                place: "p.yaml:5".into(),
                field: "match[0]".into(),
            }
        };
        let sels = vec![
            (
                "in-house".to_owned(),
                mk(Selector {
                    exe: Some("/opt/agents/**".into()),
                    argv: vec!["**/bot/main.py".into()],
                    ..Default::default()
                }),
            ),
            (
                "unit".to_owned(),
                mk(Selector {
                    cgroup: Some("/system.slice/agent.service".into()),
                    ..Default::default()
                }),
            ),
        ];
        let hit = looks_like(
            "/opt/agents/py/bin/python",
            &v(&["python", "/srv/bot/main.py"]),
            "/",
            &sels,
        );
        assert_eq!(hit.map(|h| h.0).as_deref(), Some("in-house"));
        assert!(
            looks_like(
                "/opt/agents/py/bin/python",
                &v(&["python", "/srv/bot/other.py"]),
                "/",
                &sels
            )
            .is_none()
        );
        assert!(
            looks_like(
                "/opt/agentsX/python",
                &v(&["python", "/srv/bot/main.py"]),
                "/",
                &sels
            )
            .is_none()
        );
        let unit = looks_like(
            "/usr/bin/sleep",
            &v(&["sleep", "9"]),
            "/system.slice/agent.service/sub",
            &sels,
        );
        assert_eq!(unit.map(|h| h.0).as_deref(), Some("unit"));
        assert!(
            looks_like(
                "/usr/bin/sleep",
                &v(&["sleep"]),
                "/system.slice/agent.services",
                &sels
            )
            .is_none()
        );
    }
}
