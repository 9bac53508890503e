//! `agentwarden inventory`: what each live session holds, for a reviewer to sign off —
//! the principal it runs as (uid, groups, capabilities), the credentials it can reach
//! (key and token files in the principal's home, agent and container-runtime sockets,
//! secret-looking variables in its environment, by name only) with its profile's verdict
//! on each, its network and tool rules, and the owners answering for that permission
//! set. Discovery is plain functions of what `/proc` and the filesystem say, testable
//! without a kernel; the daemon puts them together per session.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::policy::{Profile, decide};

/// One live session's inventory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionInventory {
    pub session: String,
    pub name: String,
    pub profile: String,
    /// `run`, `attach` or `selector`.
    pub enrolment: String,
    /// The `match:` selector that enrolled it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The container (and pod) it runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<crate::containers::ContainerInfo>,
    pub root_pid: u32,
    pub owners: Owners,
    pub principal: Principal,
    pub credentials: Vec<Credential>,
    /// The network rules, one line each (`default deny`, `allow api.example.com:443`).
    pub network: Vec<String>,
    /// The tool rules, one line each (`deny run_shell_command(sudo *)`), or how tool
    /// calls are seen when the agent reports none.
    pub tools: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Owners {
    pub business: String,
    pub technical: String,
}

/// Who the session's agent acts as.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Principal {
    pub uid: u32,
    pub user: Option<String>,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// Effective capabilities (`CAP_NET_RAW`, …); empty for an ordinary user.
    pub capabilities: Vec<String>,
}

/// A credential the session can reach, and what its profile says of it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Credential {
    /// `file`, `directory`, `socket`, `ssh-agent` or `environment`.
    pub kind: String,
    /// What it is: `SSH key`, `AWS credentials`, `Docker socket`, a variable's name.
    pub what: String,
    /// The path (files, directories, sockets); a variable's name (never its value).
    pub object: String,
    /// `denied`, `asks`, `recorded` (denied in monitor mode or under `alert`),
    /// `allowed`, or `inherited` (a variable the agent holds).
    pub verdict: String,
    /// The rule behind the verdict (`file:line (field[i])`), or why none applies.
    pub rule: String,
}

/// Credential files and directories under a home, by what they hold.
const HOME_CREDENTIALS: &[(&str, &str)] = &[
    (".ssh/id_rsa", "SSH key"),
    (".ssh/id_ecdsa", "SSH key"),
    (".ssh/id_ed25519", "SSH key"),
    (".aws/credentials", "AWS credentials"),
    (".aws/config", "AWS configuration"),
    (".config/gcloud", "Google Cloud credentials"),
    (".azure", "Azure credentials"),
    (".kube/config", "Kubernetes credentials"),
    (".docker/config.json", "container registry credentials"),
    (".git-credentials", "git credentials"),
    (".config/gh/hosts.yml", "GitHub CLI token"),
    (".netrc", "netrc passwords"),
    (".npmrc", "npm token"),
    (".pypirc", "PyPI token"),
];

/// Container-runtime sockets: whoever may connect runs containers as root.
const RUNTIME_SOCKETS: &[(&str, &str)] = &[
    ("/var/run/docker.sock", "Docker socket"),
    ("/run/docker.sock", "Docker socket"),
    ("/run/containerd/containerd.sock", "containerd socket"),
    ("/run/podman/podman.sock", "Podman socket"),
];

/// Whether a variable's name says it holds a secret.
pub fn secret_variable(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    [
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "API_KEY",
        "APIKEY",
        "ACCESS_KEY",
        "PRIVATE_KEY",
        "CREDENTIAL",
        "AUTH_KEY",
    ]
    .iter()
    .any(|w| n.contains(w))
        || n.ends_with("_AUTH")
}

/// The effective capabilities in a `CapEff:` mask (`/proc/PID/status`), by name.
pub fn capabilities(mask: u64) -> Vec<String> {
    let mut out: Vec<(u8, String)> = caps::all()
        .into_iter()
        .filter(|c| mask & (1u64 << c.index()) != 0)
        .map(|c| (c.index(), c.to_string()))
        .collect();
    out.sort();
    out.into_iter().map(|(_, n)| n).collect()
}

/// The principal of process `pid`, from `/proc/PID/status`.
pub fn principal(pid: u32, mut user: impl FnMut(u32) -> Option<String>) -> Option<Principal> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    // `Uid:` and `Gid:` list real, effective, saved and filesystem ids: the effective one
    // is what the process acts with.
    let effective = |line: String| {
        line.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or_default()
    };
    let uid = effective(field("Uid:"));
    Some(Principal {
        uid,
        user: user(uid),
        gid: effective(field("Gid:")),
        groups: field("Groups:")
            .split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect(),
        capabilities: capabilities(u64::from_str_radix(&field("CapEff:"), 16).unwrap_or(0)),
    })
}

/// The variables of process `pid`'s environment as it was executed: names and values.
pub fn environment(pid: u32) -> Vec<(String, String)> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// Whether `p` (uid, gid, groups) may write the file `meta` (a socket's connect needs
/// write permission on it).
fn may_write(p: &Principal, meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    if p.uid == 0 {
        return true;
    }
    let mode = meta.mode();
    if meta.uid() == p.uid {
        mode & 0o200 != 0
    } else if meta.gid() == p.gid || p.groups.contains(&meta.gid()) {
        mode & 0o020 != 0
    } else {
        mode & 0o002 != 0
    }
}

/// The profile's verdict on reading `path` (`home`: the principal's, for `~` rules).
fn file_verdict(profile: &Profile, path: &Path, home: &str) -> (String, String) {
    let v = decide::decide(profile, decide::Access::Read, &path.to_string_lossy(), home);
    if !v.denied {
        return ("allowed".to_owned(), v.rule);
    }
    let enforce = profile.file.mode == crate::policy::Mode::Enforce;
    let verdict = if !enforce {
        "recorded"
    } else if profile.ask[1].is_some() {
        "asks"
    } else if profile.file.files.on_violation == crate::policy::OnViolation::Alert {
        "recorded"
    } else {
        "denied"
    };
    (verdict.to_owned(), v.rule)
}

/// The credentials a session whose agent runs as `principal`, with environment `env`
/// and home `home`, can reach, each with `profile`'s verdict.
pub fn credentials(
    profile: &Profile,
    principal: &Principal,
    env: &[(String, String)],
    home: &Path,
) -> Vec<Credential> {
    let home_text = home.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for (rel, what) in HOME_CREDENTIALS {
        let path = home.join(rel);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let (verdict, rule) = file_verdict(profile, &path, &home_text);
        out.push(Credential {
            kind: if meta.is_dir() { "directory" } else { "file" }.to_owned(),
            what: (*what).to_owned(),
            object: path.display().to_string(),
            verdict,
            rule,
        });
    }
    let socket = |path: PathBuf, kind: &str, what: &str| {
        let meta = std::fs::metadata(&path).ok()?;
        may_write(principal, &meta).then(|| Credential {
            kind: kind.to_owned(),
            what: what.to_owned(),
            object: path.display().to_string(),
            // A connect to a unix socket is no open: file rules do not reach it.
            verdict: "allowed".to_owned(),
            rule: "no rule governs connects to unix sockets".to_owned(),
        })
    };
    if let Some((_, sock)) = env.iter().find(|(k, _)| k == "SSH_AUTH_SOCK") {
        out.extend(socket(
            PathBuf::from(sock),
            "ssh-agent",
            "SSH agent (signs with the keys it holds)",
        ));
    }
    for (path, what) in RUNTIME_SOCKETS {
        out.extend(socket(PathBuf::from(path), "socket", what));
    }
    let mut names: Vec<&str> = env
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| secret_variable(k))
        .collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        out.push(Credential {
            kind: "environment".to_owned(),
            what: "secret-looking variable".to_owned(),
            object: name.to_owned(),
            verdict: "inherited".to_owned(),
            rule: "in the agent's environment (`environment.remove` strips such variables)"
                .to_owned(),
        });
    }
    out
}

/// A setting as its profile spells it (`deny`, `block`).
fn word<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The profile's network rules, one line each.
pub fn network_lines(profile: &Profile) -> Vec<String> {
    let n = &profile.file.network;
    let mut out = vec![format!(
        "default {}, on violation {}",
        word(&n.default),
        word(&n.on_violation)
    )];
    for (label, list) in [("allow", &profile.net_allow), ("deny", &profile.net_deny)] {
        for d in list {
            out.push(format!(
                "{label} {}",
                crate::policy::show::destination_text(&d.value)
            ));
        }
    }
    out
}

/// The profile's tool rules, one line each.
pub fn tool_lines(profile: &Profile) -> Vec<String> {
    let t = &profile.file.tools;
    let mut out = Vec::new();
    match profile.file.hooks {
        Some(d) => out.push(format!(
            "the profile wires {} hooks (calls reported by the agent)",
            d.as_str()
        )),
        None => out.push("no hooks: calls inferred from processes".to_owned()),
    }
    out.push(format!("default {}", word(&t.default)));
    for a in &profile.tools_allow {
        out.push(format!("allow {}", a.value.text));
    }
    for d in &profile.tools_deny {
        out.push(format!("deny {}", d.value.text));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_variables_are_named_not_everything() {
        for yes in [
            "GITHUB_TOKEN",
            "AWS_SECRET_ACCESS_KEY",
            "OPENAI_API_KEY",
            "DB_PASSWORD",
            "NPM_CONFIG__AUTH",
        ] {
            assert!(secret_variable(yes), "{yes}");
        }
        for no in [
            "PATH",
            "HOME",
            "SSH_AUTH_SOCK",
            "TERM",
            "LANG",
            "CARGO_PKG_AUTHORS",
        ] {
            assert!(!secret_variable(no), "{no}");
        }
    }

    #[test]
    fn capabilities_are_named_from_the_mask() {
        assert!(capabilities(0).is_empty());
        // CAP_NET_RAW is bit 13, CAP_SYS_ADMIN bit 21.
        assert_eq!(
            capabilities((1 << 13) | (1 << 21)),
            ["CAP_NET_RAW", "CAP_SYS_ADMIN"]
        );
    }

    #[test]
    fn this_process_has_a_principal() {
        let p = principal(std::process::id(), |_| None).unwrap();
        assert_eq!(p.uid, rustix::process::geteuid().as_raw());
    }
}
