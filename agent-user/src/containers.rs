//! Container context: which container (and, where the kubelet made it, which pod) a
//! cgroup belongs to, from the container runtime's own metadata. containerd is asked
//! through its `ctr` client (the Debian package's): the containerd Rust client needs
//! the protobuf compiler and a gRPC stack at build time for one query per container
//! start. Pure parsing here is unit-tested; the queries run `ctr` with a deadline.

use std::{
    collections::BTreeMap,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// The labels the kubelet (through CRI) puts on a pod's containers.
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const POD_NAME: &str = "io.kubernetes.pod.name";
pub const POD_UID: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// A container and, where it is a pod's, the pod.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerInfo {
    /// `containerd`.
    pub runtime: String,
    /// The runtime's namespace (`k8s.io` for the kubelet's).
    pub runtime_namespace: String,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    pub image: String,
    pub labels: BTreeMap<String, String>,
}

impl ContainerInfo {
    /// `namespace/pod/container` for a pod's container, else the runtime's
    /// `namespace/id`.
    pub fn reference(&self) -> String {
        match (&self.pod_namespace, &self.pod_name) {
            (Some(ns), Some(pod)) => format!(
                "{ns}/{pod}/{}",
                self.container_name.as_deref().unwrap_or(&self.id)
            ),
            _ => format!("{}/{}", self.runtime_namespace, self.id),
        }
    }

    fn from_labels(
        runtime_namespace: &str,
        id: &str,
        image: String,
        labels: BTreeMap<String, String>,
    ) -> Self {
        Self {
            runtime: "containerd".to_owned(),
            runtime_namespace: runtime_namespace.to_owned(),
            id: id.to_owned(),
            pod_namespace: labels.get(POD_NAMESPACE).cloned(),
            pod_name: labels.get(POD_NAME).cloned(),
            pod_uid: labels.get(POD_UID).cloned(),
            container_name: labels.get(CONTAINER_NAME).cloned(),
            image,
            labels,
        }
    }
}

/// The container id a cgroup path names, with the runtime namespace where the path
/// says it: `/<namespace>/<id>` (containerd's default), `…/cri-containerd-<id>.scope`
/// (the kubelet's systemd driver), `…/kubepods…/pod<uid>/<id>` (its cgroupfs driver).
pub fn id_of_cgroup(path: &str) -> Option<(Option<String>, String)> {
    let path = path.trim_end_matches('/');
    let (parent, leaf) = path.rsplit_once('/')?;
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 76
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    if let Some(id) = leaf
        .strip_prefix("cri-containerd-")
        .and_then(|l| l.strip_suffix(".scope"))
    {
        return valid(id).then(|| (Some("k8s.io".to_owned()), id.to_owned()));
    }
    if parent.contains("kubepods") {
        return valid(leaf).then(|| (Some("k8s.io".to_owned()), leaf.to_owned()));
    }
    // `/<namespace>/<id>`: exactly two levels.
    let ns = parent.strip_prefix('/')?;
    (valid(ns) && valid(leaf)).then(|| (Some(ns.to_owned()), leaf.to_owned()))
}

/// The `Labels` and `Image` of `ctr containers info` output.
pub fn parse_info(json: &str) -> Option<(String, BTreeMap<String, String>)> {
    #[derive(Deserialize)]
    struct Info {
        #[serde(rename = "Image", default)]
        image: String,
        #[serde(rename = "Labels", default)]
        labels: Option<BTreeMap<String, String>>,
    }
    let i: Info = serde_json::from_str(json).ok()?;
    Some((i.image, i.labels.unwrap_or_default()))
}

/// containerd, as reached through its socket.
#[derive(Clone, Debug)]
pub struct Containerd {
    pub address: PathBuf,
}

/// How long one query may take: a containerd that does not answer must not keep a
/// lookup for long (the daemon asks again until [`Containerd::container_of_cgroup`]'s
/// caller gives up).
const QUERY_DEADLINE: Duration = Duration::from_secs(5);

impl Containerd {
    pub fn new(address: impl Into<PathBuf>) -> Self {
        Self {
            address: address.into(),
        }
    }

    /// Whether containerd's socket is there.
    pub fn present(&self) -> bool {
        self.address.exists()
    }

    /// `ctr`'s output, or why there is none: it could not run, it failed (its exit
    /// status and first line of error; `NotFound` where containerd said so), or it did
    /// not answer within the deadline. Its output is read while it runs: a container's
    /// spec can be larger than a pipe holds.
    fn ctr(&self, args: &[&str]) -> Result<String, QueryError> {
        let mut cmd = Command::new("ctr");
        // SAFETY: the hook makes only async-signal-safe calls (sigemptyset, sigaddset,
        // pthread_sigmask).
        unsafe {
            // The daemon's threads block the signals it waits for; ctr must stay
            // stoppable by them.
            cmd.pre_exec(crate::daemon::unblock_handled_signals);
        }
        let child = cmd
            .arg("--address")
            .arg(&self.address)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| QueryError::Failed(format!("running ctr: {e}")))?;
        // A pidfd, not the number: the waiting thread may reap the child just as the
        // deadline passes, and the number could then be another process's.
        let pidfd = rustix::process::Pid::from_raw(child.id() as i32).and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("aw-ctr".into())
            .spawn(move || {
                let _ = tx.send(child.wait_with_output());
            })
            .map_err(|e| QueryError::Failed(format!("a thread for ctr: {e}")))?;
        let out = match rx.recv_timeout(QUERY_DEADLINE) {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(QueryError::Failed(format!("waiting for ctr: {e}"))),
            Err(_) => {
                // The waiting thread reaps it and ends.
                if let Some(fd) = &pidfd {
                    let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL);
                }
                return Err(QueryError::TimedOut(QUERY_DEADLINE));
            }
        };
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        Err(QueryError::of_failure(
            &out.status.to_string(),
            &String::from_utf8_lossy(&out.stderr),
        ))
    }

    /// The runtime namespaces (`ctr namespaces ls -q`).
    fn namespaces(&self) -> Result<Vec<String>, QueryError> {
        Ok(self
            .ctr(&["namespaces", "ls", "-q"])?
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// The container whose cgroup is `cgroup_path`: `Ok(None)` where the path names
    /// no container or containerd (when it runs here) has none by its id; an error
    /// where containerd was asked and did not answer, so the caller may ask again.
    pub fn container_of_cgroup(&self, cgroup_path: &str) -> Result<Option<ContainerInfo>, String> {
        if !self.present() {
            return Ok(None);
        }
        let Some((ns, id)) = id_of_cgroup(cgroup_path) else {
            return Ok(None);
        };
        let namespaces = match ns {
            Some(n) => vec![n],
            None => self.namespaces().map_err(|e| e.to_string())?,
        };
        for n in namespaces {
            match self.ctr(&["--namespace", &n, "containers", "info", &id]) {
                Ok(out) => {
                    let (image, labels) = parse_info(&out)
                        .ok_or_else(|| format!("`ctr containers info {id}`: not its JSON"))?;
                    return Ok(Some(ContainerInfo::from_labels(&n, &id, image, labels)));
                }
                Err(QueryError::NotFound) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(None)
    }
}

/// Why `ctr` gave no answer.
#[derive(Debug)]
enum QueryError {
    /// containerd has no such object: an answer.
    NotFound,
    /// `ctr` could not run, or failed for another reason.
    Failed(String),
    /// `ctr` did not finish within the deadline (it was killed).
    TimedOut(Duration),
}

impl QueryError {
    /// What a failed `ctr` said: containerd's "not found" is an answer, anything else
    /// (it could not dial, a deadline inside containerd) is a failure to ask again.
    fn of_failure(status: &str, stderr: &str) -> Self {
        let line = stderr.lines().next().unwrap_or("").trim();
        // `ctr: container "ID" in namespace "NS": not found`
        if line.ends_with(": not found") {
            Self::NotFound
        } else {
            Self::Failed(format!("ctr {status}: {line}"))
        }
    }
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound => f.write_str("not found"),
            Self::Failed(why) => f.write_str(why),
            Self::TimedOut(d) => write!(f, "ctr did not answer within {d:?}"),
        }
    }
}

/// The cgroup v2 path of a process (`/proc/PID/cgroup`'s `0::` line).
pub fn cgroup_of(pid: u32) -> Option<String> {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("cgroup"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_from_the_runtimes_cgroup_layouts() {
        assert_eq!(
            id_of_cgroup("/agents/claude-1"),
            Some((Some("agents".into()), "claude-1".into()))
        );
        assert_eq!(
            id_of_cgroup(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1a2b.slice/cri-containerd-0123abcd.scope"
            ),
            Some((Some("k8s.io".into()), "0123abcd".into()))
        );
        assert_eq!(
            id_of_cgroup("/kubepods/besteffort/pod1a2b/0123abcd"),
            Some((Some("k8s.io".into()), "0123abcd".into()))
        );
        assert_eq!(
            id_of_cgroup("/user.slice/user-0.slice/session-3.scope/x/y"),
            None
        );
        assert_eq!(id_of_cgroup("/"), None);
    }

    #[test]
    fn a_missing_container_is_an_answer_and_a_dial_failure_is_not() {
        assert!(matches!(
            QueryError::of_failure(
                "exit status: 1",
                "ctr: container \"c1\" in namespace \"default\": not found\n"
            ),
            QueryError::NotFound
        ));
        let e = QueryError::of_failure(
            "exit status: 1",
            "ctr: failed to dial \"/run/c.sock\": connection error: desc = \"transport: error while dialing: dial unix /run/c.sock: connect: connection refused\"\n",
        );
        assert!(
            matches!(&e, QueryError::Failed(w) if w.contains("connection refused")),
            "{e}"
        );
        assert!(matches!(
            QueryError::of_failure("exit status: 1", ""),
            QueryError::Failed(_)
        ));
    }

    #[test]
    fn ctr_info_labels_and_pod_reference() {
        let json = r#"{"ID":"c1","Labels":{"io.kubernetes.pod.namespace":"agents","io.kubernetes.pod.name":"claude-0","io.kubernetes.container.name":"agent","io.kubernetes.pod.uid":"u-1"},"Image":"local/agent:1"}"#;
        let (image, labels) = parse_info(json).unwrap();
        let c = ContainerInfo::from_labels("k8s.io", "c1", image, labels);
        assert_eq!(c.reference(), "agents/claude-0/agent");
        assert_eq!(c.pod_uid.as_deref(), Some("u-1"));
        assert_eq!(c.image, "local/agent:1");
        let bare = ContainerInfo::from_labels("default", "c2", String::new(), BTreeMap::new());
        assert_eq!(bare.reference(), "default/c2");
        assert_eq!(
            parse_info(r#"{"ID":"x","Labels":null}"#).unwrap().1.len(),
            0
        );
    }
}
