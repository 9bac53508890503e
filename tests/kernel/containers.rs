//! Containers: a real containerd (the Debian package's, started by the test on its own
//! socket and state), an image built by the test from a busybox root filesystem and
//! imported, and containers labelled the way the kubelet labels a pod's containers. A
//! `match: labels:` selector enrols the container's entrypoint at its exec; the
//! session, its events and its audit rows name `namespace/pod/container`. (Which of
//! the kernel's enrolment at the exec, or its hold until the daemon's lookup, enrols
//! the entrypoint depends on who wins the race with the runtime's start: the test
//! accepts either, and checks that the entrypoint is the session's root.)

use sha2::{Digest as _, Sha256};

use crate::support::*;

/// Taken by each test whose daemon has label selectors. Such a daemon holds every
/// process that execs in a new container-like cgroup on the host until its lookup
/// answers, and one daemon's resume would release another's hold: a host runs one
/// daemon, so these tests take turns.
static LABEL_SELECTORS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A containerd of the test's own, stopped (and its containers with it) when dropped.
struct Containerd {
    child: Child,
    dir: TempDir,
}

impl Containerd {
    fn start() -> Result<Self, String> {
        if Command::new("containerd")
            .arg("--version")
            .output()
            .is_err()
        {
            return Err("containerd not installed: run `cargo xtask setup`".into());
        }
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        // No CRI plugin: the test is the kubelet (labels), nothing else is needed.
        fs::write(
            &config,
            "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
        )
        .unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .arg("--address")
            .arg(dir.path().join("c.sock"))
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--state")
            .arg(dir.path().join("state"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("containerd.log")).unwrap())
            .spawn()
            .map_err(|e| e.to_string())?;
        let c = Containerd { child, dir };
        let start = Instant::now();
        while !c.ctr(&["version"]).status.success() {
            assert!(
                start.elapsed() < patience(),
                "containerd did not start:\n{}",
                fs::read_to_string(c.dir.path().join("containerd.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(100));
        }
        Ok(c)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", "agentwarden-test"])
            .args(args)
            .stdin(Stdio::null())
            .output_within()
    }

    /// Builds an OCI image of `rootfs` (one layer) and imports it as `name`.
    fn build_image(&self, rootfs: &Path, name: &str) {
        let work = self.dir.path().join("image");
        let blobs = work.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        let blob = |bytes: &[u8]| -> (String, usize) {
            let digest = format!("{:x}", Sha256::digest(bytes));
            fs::write(blobs.join(&digest), bytes).unwrap();
            (format!("sha256:{digest}"), bytes.len())
        };
        let layer_tar = self.dir.path().join("layer.tar");
        let out = Command::new("tar")
            .arg("-C")
            .arg(rootfs)
            .arg("-cf")
            .arg(&layer_tar)
            .arg(".")
            .output_within();
        assert!(out.status.success(), "{out:?}");
        let (layer, layer_size) = blob(&fs::read(&layer_tar).unwrap());
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": { "Cmd": ["/bin/sh"] },
            "rootfs": { "type": "layers", "diff_ids": [layer] },
        });
        let (config, config_size) = blob(config.to_string().as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size },
            "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layer_size }],
        });
        let (manifest, manifest_size) = blob(manifest.to_string().as_bytes());
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest, "size": manifest_size,
                "annotations": { "io.containerd.image.name": name, "org.opencontainers.image.ref.name": "1" },
            }],
        });
        fs::write(work.join("index.json"), index.to_string()).unwrap();
        fs::write(work.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let archive = self.dir.path().join("image.tar");
        let out = Command::new("tar")
            .arg("-C")
            .arg(&work)
            .arg("-cf")
            .arg(&archive)
            .arg(".")
            .output_within();
        assert!(out.status.success(), "{out:?}");
        let out = self.ctr(&[
            "images",
            "import",
            "--snapshotter",
            "native",
            archive.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "import: {out:?}");
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Tasks it left: their shims outlive it; their cgroups go with their processes.
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(self.dir.path().to_str().unwrap())
            .status();
    }
}

/// The kubelet's labels of a pod's container, and a pod label of the agent's.
fn pod_labels(pod: &str, container: &str) -> Vec<String> {
    [
        ("io.kubernetes.pod.namespace", "agents"),
        ("io.kubernetes.pod.name", pod),
        (
            "io.kubernetes.pod.uid",
            "3f1c2a9e-0000-4000-8000-000000000001",
        ),
        ("io.kubernetes.container.name", container),
        ("app", "coding-agent"),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={v}"))
    .collect()
}

/// Points the symbolic link `link` at `to`, replacing it in one step.
fn point(link: &Path, to: &Path) {
    let tmp = link.with_extension("new");
    let _ = fs::remove_file(&tmp);
    symlink(to, &tmp).unwrap();
    fs::rename(&tmp, link).unwrap();
}

/// A busybox root filesystem with a secret the profile denies.
fn rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::copy("/bin/busybox", root.join("bin/busybox"))
        .or_else(|_| fs::copy("/usr/bin/busybox", root.join("bin/busybox")))
        .expect("busybox-static (cargo xtask setup)");
    for tool in ["sh", "cat", "sleep", "echo"] {
        symlink("busybox", root.join("bin").join(tool)).unwrap();
    }
    fs::write(root.join("etc/agent-token"), "TOKEN-IN-IMAGE\n").unwrap();
    root
}

/// A labelled container from the test's image: its entrypoint is enrolled by the pod
/// label selector at its exec (the kernel's count of selector enrolments grows), its
/// read of the denied token is refused, and the session, its events and its audit rows
/// name `agents/<pod>/<container>`; a container without the label is untouched; a
/// container that stays is in the inventory with its pod.
#[test]
fn a_labelled_container_is_enrolled_by_its_pod_labels_and_named_in_the_trail() {
    if !is_root() {
        return skip("containerd and eBPF need root");
    }
    let _turn = LABEL_SELECTORS.lock().unwrap_or_else(|p| p.into_inner());
    let c = match Containerd::start() {
        Ok(c) => c,
        Err(why) => return skip(&why),
    };
    let work = tempfile::tempdir().unwrap();
    let root = rootfs(work.path());
    c.build_image(&root, "localhost/agentwarden-agent:1");
    let rules = tempfile::tempdir().unwrap();
    fs::write(
        rules.path().join("pod-agent.yaml"),
        "name: pod-agent\ndescription: t\nowners: { business: platform, technical: sec }\n\
         mode: enforce\nmatch:\n  - labels: { io.kubernetes.pod.namespace: agents, app: coding-agent }\n\
         files:\n  deny: [/etc/agent-token]\n  on_violation: kill\n",
    )
    .unwrap();
    // The daemon reaches containerd through a link the test can point elsewhere.
    let sock = work.path().join("containerd.sock");
    point(&sock, &c.socket());
    let Some(d) = Daemon::start_with(&[
        "--rules-dir",
        rules.path().to_str().unwrap(),
        "--containerd-address",
        sock.to_str().unwrap(),
    ]) else {
        return;
    };
    let run = |id: &str, labels: &[String], script: &str| {
        let mut args = vec!["run", "--rm", "--snapshotter", "native"];
        for l in labels {
            args.extend(["--label", l.as_str()]);
        }
        args.extend(["localhost/agentwarden-agent:1", id, "/bin/sh", "-c", script]);
        c.ctr(&args)
    };
    let script = "cat /etc/agent-token; echo rc=$?";
    let id1 = format!("agent-{}-1", std::process::id());
    let out = run(&id1, &pod_labels("claude-0", "agent"), script);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Killed at the open's exit (the fanotify layer cannot mark a file of the
    // container's own root from the host's view; BPF-LSM would refuse it).
    assert!(
        stdout.contains("rc=137") && !stdout.contains("TOKEN-IN-IMAGE"),
        "{out:?}\n{}",
        d.log()
    );
    // The session whose process read the token (and was killed for it).
    let start = Instant::now();
    let (s, evs) = loop {
        let found = d
            .sessions()
            .into_iter()
            .filter(|s| s.profile == "pod-agent")
            .map(|s| {
                let evs = d.events(Some(&s.id));
                (s, evs)
            })
            .find(|(_, evs)| with_action(evs, Action::Killed).next().is_some());
        if let Some(f) = found {
            break f;
        }
        assert!(
            start.elapsed() < patience(),
            "no session with the killed read: {:?}\n{}",
            d.sessions(),
            d.log()
        );
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        s.container.as_deref(),
        Some("agents/claude-0/agent"),
        "{s:?}"
    );
    assert!(
        s.selector
            .as_deref()
            .is_some_and(|x| x.ends_with("(match[0])")),
        "{s:?}"
    );
    // The entrypoint is the session's root: enrolled at its exec by the kernel, or
    // held there until the lookup and enrolled before it ran (which of the two depends
    // on who wins the race with the runtime's start; both leave nothing unwatched).
    assert!(
        evs.iter().any(|e| e.kind() == EventKind::SessionStart
            && e.process.as_ref().is_some_and(|p| p.tgid == s.root_pid)),
        "{}",
        dump(&evs)
    );
    assert!(
        evs.iter()
            .all(|e| e.session.container.as_deref() == Some("agents/claude-0/agent")),
        "{}",
        dump(&evs)
    );
    let st: StatusReport = d.json(&["status", "--json"]);
    let kernel = |name: &str| {
        st.kernel_counters
            .iter()
            .find(|c| c.name == name)
            .map_or(0, |c| c.total)
    };
    // By the kernel at the exec, or by the daemon for a held process.
    assert!(
        kernel("selector_enrolments") + st.daemon_counters.selector_held >= 1,
        "{st:?}"
    );

    // A container without the selector's label runs untouched.
    let other = format!("other-{}-1", std::process::id());
    let out = run(&other, &["app=web".to_owned()], script);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("TOKEN-IN-IMAGE"),
        "{out:?}"
    );

    // containerd stops answering the daemon: a new labelled container's entrypoint is
    // held at its exec while the daemon asks again (a failure is never taken for "no
    // container"), and enrolled once containerd answers.
    let dead = work.path().join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    point(&sock, &dead);
    let before: StatusReport = d.json(&["status", "--json"]);
    let id2 = format!("agent-{}-2", std::process::id());
    let out = thread::scope(|scope| {
        let ran = scope.spawn(|| run(&id2, &pod_labels("claude-1", "agent"), script));
        let start = Instant::now();
        loop {
            let st: StatusReport = d.json(&["status", "--json"]);
            if st.daemon_counters.container_lookup_failures
                >= before.daemon_counters.container_lookup_failures + 3
            {
                break;
            }
            assert!(
                start.elapsed() < patience() && !ran.is_finished(),
                "no failed lookup while containerd is unreachable: {st:?}\n{}",
                d.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        assert!(
            !ran.is_finished(),
            "the entrypoint ran before its lookup answered"
        );
        point(&sock, &c.socket());
        ran.join().unwrap()
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("rc=137") && !stdout.contains("TOKEN-IN-IMAGE"),
        "{out:?}\n{}",
        d.log()
    );
    let st: StatusReport = d.json(&["status", "--json"]);
    assert_eq!(st.daemon_counters.container_lookups_abandoned, 0, "{st:?}");
    assert!(
        st.daemon_counters.selector_held > before.daemon_counters.selector_held,
        "{st:?}"
    );

    // A container that stays: the inventory names its pod and how it was enrolled.
    let id3 = format!("agent-{}-3", std::process::id());
    let mut args = vec!["run", "-d", "--snapshotter", "native"];
    let labels = pod_labels(&format!("claude-{}", std::process::id()), "agent");
    for l in &labels {
        args.extend(["--label", l.as_str()]);
    }
    args.extend([
        "localhost/agentwarden-agent:1",
        id3.as_str(),
        "/bin/sleep",
        "60",
    ]);
    let out = c.ctr(&args);
    assert!(out.status.success(), "{out:?}");
    let start = Instant::now();
    let inv = loop {
        let all: Vec<agentwarden::inventory::SessionInventory> = d.json(&["inventory", "--json"]);
        if let Some(i) = all
            .into_iter()
            .find(|i| i.container.as_ref().is_some_and(|c| c.id == id3))
        {
            break i;
        }
        assert!(
            start.elapsed() < patience(),
            "not in the inventory:\n{}",
            d.log()
        );
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(inv.enrolment, "selector");
    assert_eq!(inv.owners.business, "platform");
    let pod = inv.container.unwrap();
    assert_eq!(
        (
            pod.pod_namespace.as_deref(),
            pod.container_name.as_deref(),
            pod.id.as_str()
        ),
        (Some("agents"), Some("agent"), id3.as_str())
    );
    let _ = c.ctr(&["tasks", "delete", "--force", id3.as_str()]);

    // The audit trail: the session row's container, and every action row of the
    // session through the view that joins them.
    let db = rusqlite::Connection::open(d.db()).unwrap();
    let start = Instant::now();
    loop {
        let container: Option<String> = db
            .query_row(
                "SELECT container FROM sessions WHERE session_id = ?1",
                [&s.id],
                |r| r.get(0),
            )
            .ok()
            .flatten();
        if let Some(cj) = container {
            let v: serde_json::Value = serde_json::from_str(&cj).unwrap();
            assert_eq!(v["pod_namespace"], "agents");
            assert_eq!(v["pod_name"], "claude-0");
            assert_eq!(v["container_name"], "agent");
            assert_eq!(v["id"], id1.as_str());
            assert_eq!(v["image"], "localhost/agentwarden-agent:1");
            break;
        }
        assert!(start.elapsed() < patience(), "no session row");
        thread::sleep(Duration::from_millis(100));
    }
    // Every action row of the session, through the view that joins its context.
    let start = Instant::now();
    let rows = loop {
        let rows: Vec<(String, Option<String>)> = db
            .prepare("SELECT kind, container FROM audit_log WHERE session_id = ?1")
            .unwrap()
            .query_map([&s.id], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        // The writer commits in batches: until the session's end is in.
        if rows.iter().any(|(k, _)| k == "session_end") {
            break rows;
        }
        assert!(start.elapsed() < patience(), "{rows:?}");
        thread::sleep(Duration::from_millis(100));
    };
    assert!(rows.iter().any(|(k, _)| k == "open"), "{rows:?}");
    assert!(
        rows.iter()
            .all(|(_, c)| c.as_deref() == Some("agents/claude-0/agent")),
        "{rows:?}"
    );
}

/// A cgroup of the test's, removed when dropped (its processes gone by then).
struct TestCgroup(PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
        if let Some(parent) = self.0.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

/// containerd never answers (its socket refuses): a process that execs in a new
/// cgroup named like a container's is held while the daemon asks again, each failure
/// counted; past the lookup budget the lookup is given up, counted and logged, and the
/// process runs (its labels unjudged, so in no session).
#[test]
fn a_container_lookup_containerd_never_answers_holds_then_is_given_up_counted() {
    if !is_root() {
        return skip("cgroups and eBPF need root");
    }
    let _turn = LABEL_SELECTORS.lock().unwrap_or_else(|p| p.into_inner());
    let work = tempfile::tempdir().unwrap();
    let dead = work.path().join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    let rules = tempfile::tempdir().unwrap();
    fs::write(
        rules.path().join("pod-agent.yaml"),
        "name: pod-agent\ndescription: t\nowners: { business: platform, technical: sec }\n\
         mode: enforce\nmatch:\n  - labels: { app: coding-agent }\n\
         files:\n  deny: [/etc/agent-token]\n",
    )
    .unwrap();
    let Some(d) = Daemon::start_with(&[
        "--rules-dir",
        rules.path().to_str().unwrap(),
        "--containerd-address",
        dead.to_str().unwrap(),
        "--container-lookup-budget",
        "5s",
    ]) else {
        return;
    };
    let root = agentwarden::probe::cgroup2_mount().expect("a cgroup2 mount");
    // `/<namespace>/<id>`: containerd's own layout.
    let cg = TestCgroup(
        root.join(format!("aw-lookup-{}", std::process::id()))
            .join("c1"),
    );
    fs::create_dir_all(&cg.0).unwrap();
    let procs = cg.0.join("cgroup.procs");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && exec cat /proc/self/cgroup",
            procs.display()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Held (stopped) at its exec while the lookups fail.
    let start = Instant::now();
    loop {
        let st: StatusReport = d.json(&["status", "--json"]);
        let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let stopped = state
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('T'));
        if st.daemon_counters.container_lookup_failures >= 2 && stopped {
            assert!(state.contains("(cat)"), "{state}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5) && child.try_wait().unwrap().is_none(),
            "not held while the lookups fail: {state} {st:?}\n{}",
            d.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    // Given up: it runs, in no session.
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > patience() {
            let _ = child.kill();
            panic!("still held past the lookup budget:\n{}", d.log());
        }
        thread::sleep(Duration::from_millis(50));
    };
    let stdout = String::from_utf8(read_all(child.stdout.take().unwrap())).unwrap();
    assert!(
        status.success() && stdout.contains("aw-lookup-"),
        "{status:?} {stdout}"
    );
    let st: StatusReport = d.json(&["status", "--json"]);
    assert_eq!(st.daemon_counters.container_lookups_abandoned, 1, "{st:?}");
    assert!(st.daemon_counters.selector_held >= 1, "{st:?}");
    assert!(
        d.sessions().iter().all(|s| s.root_pid != pid),
        "{:?}",
        d.sessions()
    );
    assert!(
        d.log().contains("a container's lookup was given up"),
        "{}",
        d.log()
    );
}
