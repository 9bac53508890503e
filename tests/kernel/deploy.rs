//! The deployments: the shipped systemd unit checked by the real systemd tools, the
//! daemon's side of `Type=notify` with a watchdog, and the Kubernetes manifests checked
//! against the API's schema.

use crate::support::*;

/// The shipped unit with `ExecStart` pointing at the daemon under test.
fn unit_under_test(dir: &Path) -> PathBuf {
    let text = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agentwarden.service"),
    )
    .unwrap();
    assert!(
        text.contains("ExecStart=/usr/local/bin/agentwarden "),
        "{text}"
    );
    // A clean exit (a SIGTERM that got through) must bring the daemon back too.
    assert!(text.lines().any(|l| l == "Restart=always"), "{text}");
    let unit = dir.join("agentwarden.service");
    fs::write(
        &unit,
        text.replace(
            "/usr/local/bin/agentwarden",
            &fs::canonicalize(bin()).unwrap().to_string_lossy(),
        ),
    )
    .unwrap();
    unit
}

/// The exposure `systemd-analyze security` gave the unit when it was hardened (README,
/// Deploying): a change that loosens it fails here.
const EXPOSURE_AT_MOST: f64 = 4.1;

/// `systemd-analyze verify` accepts the unit (no warning either), and `systemd-analyze
/// security` rates its exposure no worse than when it was hardened, with the watchdog,
/// the read-only system and the syscall filter in place.
#[test]
fn the_systemd_unit_verifies_and_keeps_its_hardening() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        return skip("systemd-analyze is not installed");
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_under_test(dir.path());
    let v = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output_within();
    assert!(
        v.status.success() && v.stderr.is_empty(),
        "systemd-analyze verify: {v:?}"
    );
    let s = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output_within();
    let out = String::from_utf8_lossy(&s.stdout);
    let exposure: f64 = out
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for agentwarden.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level: {s:?}"));
    assert!(
        exposure <= EXPOSURE_AT_MOST,
        "exposure {exposure} > {EXPOSURE_AT_MOST}:\n{out}"
    );
    for held in [
        "✓ SystemCallFilter=~@module",
        "✓ ProtectKernelModules=",
        "✓ MemoryDenyWriteExecute=",
        "✓ RestrictSUIDSGID=",
    ] {
        assert!(out.contains(held), "{held} no longer holds:\n{out}");
    }
}

/// Under `WatchdogSec=` the daemon pings (`WATCHDOG=1`) at half the period while its core
/// answers; with `WATCHDOG_PID` naming another process (the variable inherited by a child
/// of the watched one) it does not.
#[test]
fn the_daemon_pings_the_systemd_watchdog() {
    if !is_root() {
        return skip("loading eBPF programs needs root");
    }
    let pings = |env: &[(&str, &str)]| {
        let d = Daemon::spawn_in_env(tempfile::tempdir().unwrap(), &[], env);
        d.notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let (mut n, mut buf) = (0, [0u8; 512]);
        let start = Instant::now();
        // A 1 s period: pings every 0.5 s, so at least 4 in 3 s on any machine.
        while start.elapsed() < scaled(Duration::from_secs(3)) {
            if let Ok(len) = d.notify.recv(&mut buf) {
                n += String::from_utf8_lossy(&buf[..len])
                    .lines()
                    .filter(|l| *l == "WATCHDOG=1")
                    .count();
            }
        }
        n
    };
    let watched = pings(&[("WATCHDOG_USEC", "1000000")]);
    assert!(watched >= 4, "{watched} pings in 3 s with a 1 s watchdog");
    let other = pings(&[("WATCHDOG_USEC", "1000000"), ("WATCHDOG_PID", "1")]);
    assert_eq!(other, 0, "not this process's watchdog");
}

/// What the container's check unit does once systemd has started everything: the
/// daemon's state under the real systemd, a SIGKILL of it, the restart, a stop.
const BOOT_CHECK: &str = r#"#!/bin/sh
out=/out
show() { systemctl show agentwarden -p ActiveState,SubState,MainPID,NRestarts,StatusText,Type,WatchdogUSec > "$out/$1" 2>&1; }
for i in $(seq 1 100); do [ "$(systemctl is-active agentwarden)" = active ] && break; sleep 0.2; done
show first
/opt/aw/agentwarden --socket /run/agentwarden/control.sock status --json > "$out/status.json" 2> "$out/status.err"
pid=$(systemctl show agentwarden -p MainPID --value)
kill -9 "$pid"
for i in $(seq 1 100); do
  [ "$(systemctl show agentwarden -p NRestarts --value)" = 1 ] && [ "$(systemctl is-active agentwarden)" = active ] && break
  sleep 0.2
done
show second
systemctl stop agentwarden
show stopped
ls "$PINS/links" > "$out/pins-after-stop" 2>/dev/null
/opt/aw/agentwarden unload --pin-dir "$PINS" --socket /run/agentwarden/control.sock > "$out/unload" 2>&1
echo "unload=$?" >> "$out/unload"
journalctl -u agentwarden --no-pager -o cat > "$out/journal" 2>&1
systemctl poweroff
"#;

/// The shipped unit booted under the real systemd (PID 1 of a `systemd-nspawn`
/// container on the host's kernel: no systemd runs as PID 1 on these machines, and the
/// VM tier's emulated guests take minutes to boot it): `Type=notify` readiness and the
/// status it reports, the watchdog, the daemon started with the unit's hardening; a
/// SIGKILL of the daemon brings it back (`Restart=always`) as the successor that adopts
/// the pinned kernel side; a stop leaves the pins for the next start, and `unload`
/// removes them.
#[test]
fn the_unit_boots_under_systemd_and_comes_back_after_a_kill() {
    if !is_root() {
        return skip("booting a systemd container needs root");
    }
    let nspawn = Path::new("/usr/bin/systemd-nspawn");
    if !nspawn.exists() {
        return skip("systemd-nspawn is not installed (cargo xtask setup installs it)");
    }
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let out = work.path().join("out");
    fs::create_dir_all(&out).unwrap();
    // The container's tree: the host's /usr (read-only) and a copy of its /etc.
    for d in [
        "usr", "var", "run", "tmp", "proc", "sys", "dev", "root", "opt/aw", "out",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    let cp = Command::new("cp")
        .args(["-a", "/etc"])
        .arg(root.join("etc"))
        .output_within();
    assert!(cp.status.success(), "{cp:?}");
    for l in ["bin", "lib", "lib64", "sbin"] {
        std::os::unix::fs::symlink(format!("usr/{l}"), root.join(l)).unwrap();
    }
    let _ = fs::remove_file(root.join("etc/os-release"));
    fs::copy("/usr/lib/os-release", root.join("etc/os-release")).unwrap();
    let _ = fs::remove_file(root.join("etc/machine-id"));
    // The shipped unit, running the binary under test with a pin directory of its own.
    let pins = pin_dir(work.path());
    let pins_arg = pins.display().to_string();
    let shipped = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agentwarden.service"),
    )
    .unwrap();
    let unit = shipped.replace(
        "/usr/local/bin/agentwarden daemon --quiet",
        &format!("/opt/aw/agentwarden daemon --quiet --pin-dir {pins_arg}"),
    );
    assert_ne!(unit, shipped);
    let system = root.join("etc/systemd/system");
    let wants = system.join("multi-user.target.wants");
    fs::create_dir_all(&wants).unwrap();
    fs::write(system.join("agentwarden.service"), unit).unwrap();
    fs::write(root.join("opt/check.sh"), BOOT_CHECK).unwrap();
    fs::write(
        system.join("awcheck.service"),
        format!(
            "[Unit]\nAfter=agentwarden.service\nWants=agentwarden.service\n\
             [Service]\nType=oneshot\nEnvironment=PINS={pins_arg}\n\
             ExecStart=/bin/sh /opt/check.sh\n"
        ),
    )
    .unwrap();
    for u in ["agentwarden.service", "awcheck.service"] {
        std::os::unix::fs::symlink(format!("../{u}"), wants.join(u)).unwrap();
    }
    let bin_path = fs::canonicalize(bin()).unwrap();
    let boot = Command::new(nspawn)
        .arg("--directory")
        .arg(&root)
        .args(["--register=no", "--keep-unit", "--quiet"])
        // The daemon loads eBPF and fanotify: what a host's systemd gives it.
        .args(["--capability=all"])
        .arg("--system-call-filter=@privileged @debug @mount bpf perf_event_open")
        .arg("--bind-ro=/usr")
        .arg("--bind=/sys/fs/bpf")
        .arg(format!(
            "--bind-ro={}:/opt/aw/agentwarden",
            bin_path.display()
        ))
        .arg(format!("--bind={}:/out", out.display()))
        .arg("--boot")
        .output_within();
    // What `unload` left (nothing), before the test's own clean-up.
    let pinned_after = pins.exists();
    let _ = fs::remove_dir_all(&pins);
    let read = |name: &str| fs::read_to_string(out.join(name)).unwrap_or_default();
    let journal = read("journal");
    let why = format!("{boot:?}\njournal:\n{journal}");
    let first = read("first");
    for want in [
        "Type=notify",
        "ActiveState=active",
        "SubState=running",
        "NRestarts=0",
        "StatusText=watching; control socket bound",
        "WatchdogUSec=30s",
    ] {
        assert!(
            first.lines().any(|l| l == want),
            "{want} in\n{first}\n{why}"
        );
    }
    let status: StatusReport = serde_json::from_str(&read("status.json"))
        .unwrap_or_else(|e| panic!("status: {e}: {}\n{why}", read("status.err")));
    let main_pid = |s: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix("MainPID="))
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(status.daemon_pid.to_string(), main_pid(&first), "{why}");
    let second = read("second");
    assert!(
        second.lines().any(|l| l == "NRestarts=1")
            && second.lines().any(|l| l == "ActiveState=active")
            && main_pid(&second) != main_pid(&first),
        "not restarted after SIGKILL:\n{second}\n{why}"
    );
    assert!(
        journal.contains("adopted the pinned kernel side"),
        "the restarted daemon did not adopt: {why}"
    );
    let stopped = read("stopped");
    assert!(
        stopped.lines().any(|l| l == "ActiveState=inactive"),
        "{stopped}\n{why}"
    );
    assert!(
        !read("pins-after-stop").trim().is_empty(),
        "a stop keeps the pinned links: {why}"
    );
    assert!(
        read("unload").contains("unload=0"),
        "{}\n{why}",
        read("unload")
    );
    assert!(!pinned_after, "unload left pins behind: {why}");
}

/// The Kubernetes manifests pass the API's own schema (`kubernetes-validate --strict`,
/// from PyPI: unknown fields are errors); a manifest with a misspelt field fails it (the
/// validator validates); the profile the DaemonSet's ConfigMap ships lints, and its
/// selector names the container the example agent pod runs.
#[test]
fn the_kubernetes_manifests_validate_and_their_profile_lints() {
    let validator = match crate::agents::installed("kubernetes-validate", "bin/kubernetes-validate")
    {
        Ok(v) => v,
        Err(why) => return skip(&why),
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let manifests: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(manifests.len() >= 2, "{manifests:?}");
    let out = Command::new(&validator)
        .arg("--strict")
        .args(&manifests)
        .output_within();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for kind in [
        "daemonset/agentwarden",
        "configmap/agentwarden-profiles",
        "pod/claude-0",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind}")),
            "{kind}: {text}"
        );
    }
    let work = tempfile::tempdir().unwrap();
    let daemonset = fs::read_to_string(dir.join("daemonset.yaml")).unwrap();
    let broken = work.path().join("broken.yaml");
    fs::write(&broken, daemonset.replace("hostPID: true", "hostPid: true")).unwrap();
    let out = Command::new(&validator)
        .arg("--strict")
        .arg(&broken)
        .output_within();
    assert!(!out.status.success(), "a misspelt field passed");

    // The ConfigMap's profile, as the daemon reads it from the mounted file.
    let docs: Vec<serde_json::Value> = daemonset
        .split("\n---\n")
        .map(|d| serde_saphyr::from_str(d).unwrap())
        .collect();
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let profile = cm["data"]["pod-agents.yaml"].as_str().unwrap();
    let file = work.path().join("pod-agents.yaml");
    fs::write(&file, profile).unwrap();
    let out = Command::new(bin())
        .args(["profile", "lint"])
        .arg(&file)
        .output_within();
    assert!(out.status.success(), "{out:?}");
    assert!(profile.contains("io.kubernetes.pod.namespace: agents"));
    assert!(profile.contains("io.kubernetes.container.name: agent"));
    let pod = fs::read_to_string(dir.join("agent-pod.yaml")).unwrap();
    assert!(pod.contains("namespace: agents") && pod.contains("- name: agent\n"));
    // The DaemonSet reads that directory and asks the node's containerd.
    for arg in ["/etc/agentwarden/rules", "--containerd-address"] {
        assert!(daemonset.contains(arg), "{arg}");
    }
}
