//! Enforcement that outlives the daemon: the kernel side is pinned, a daemon killed with
//! SIGKILL leaves every session tracked and every kernel decision in force, and the next
//! daemon adopts the sessions, the ring's records and the audit chain; an upgrade hands
//! over without a moment where a session is unwatched.

use std::{net::TcpListener, os::unix::fs::MetadataExt};

use crate::support::*;

/// A session that waits for the test between phases, writing what each access gave.
const SCRIPT: &str = r#"
W="$1"; PORT="$2"
echo started > "$W/started"
while [ ! -e "$W/go" ]; do sleep 0.05; done
out=$(cat "$W/secret/key" 2>/dev/null); rc=$?
case "$out" in *KEY*) echo leak >> "$W/log";; esac
echo "read=$rc" >> "$W/log"
python3 -c '
import socket, sys
s = socket.socket()
s.settimeout(5)
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
    print("connect=ok")
except OSError as e:
    print("connect=%d" % e.errno)
' "$PORT" >> "$W/log"
echo gap-done >> "$W/log"
while [ ! -e "$W/go2" ]; do sleep 0.05; done
out=$(cat "$W/secret/key" 2>/dev/null); rc=$?
case "$out" in *KEY*) echo leak >> "$W/log";; esac
echo "read2=$rc" >> "$W/log"
sh -c 'kill -CONT "$1"; echo "signal=$?"' signaller "$(cat "$W/daemon")" >> "$W/log" 2>/dev/null
echo "signal_rc=$?" >> "$W/log"
echo done >> "$W/log"
"#;

struct Fixture {
    _work: tempfile::TempDir,
    dir: PathBuf,
    rules: tempfile::TempDir,
    listener: TcpListener,
}

impl Fixture {
    /// A secret tree and a loopback listener the profile `keep` denies, with `block`
    /// and no `fallback`: while the daemon runs, its fanotify layer (or BPF-LSM)
    /// refuses the read; with none running, only the kernel's stand-in kill is left.
    fn new() -> Self {
        let work = tempfile::tempdir().unwrap();
        let dir = fs::canonicalize(work.path()).unwrap();
        fs::create_dir_all(dir.join("secret")).unwrap();
        fs::write(dir.join("secret/key"), "KEY-BYTES\n").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let rules = tempfile::tempdir().unwrap();
        let text = format!(
            "name: keep\ndescription: t\nowners: {{ business: b, technical: t }}\nmode: enforce\n\
             files:\n  deny:\n    - {d}/secret/**\n  on_violation: block\n\
             network:\n  default: allow\n  deny:\n    - {{ cidr: 127.0.0.1, ports: \"{port}\" }}\n  \
             on_violation: block\n",
            d = dir.display()
        );
        fs::write(rules.path().join("keep.yaml"), text).unwrap();
        Self {
            _work: work,
            dir,
            rules,
            listener,
        }
    }

    fn port(&self) -> u16 {
        self.listener.local_addr().unwrap().port()
    }

    fn rules_dir(&self) -> String {
        self.rules.path().to_str().unwrap().to_owned()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// The machine's processes, with the kernel stacks of the scripts working here.
    fn stalled(&self) -> String {
        processes_report(&[], Some(self.dir.to_str().unwrap()))
    }

    fn wait_for_file(&self, name: &str, what: &str) {
        let start = Instant::now();
        while !self.dir.join(name).exists() {
            if start.elapsed() > patience() {
                panic!("{what}: log so far {:?}\n{}", self.log(), self.stalled());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_for_log(&self, line: &str) {
        let start = Instant::now();
        while !self.log().lines().any(|l| l == line) {
            if start.elapsed() > patience() {
                panic!("no `{line}` in {:?}\n{}", self.log(), self.stalled());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Daemon {
    /// SIGKILL, as an OOM kill or a crash: nothing of the daemon runs any more, what it
    /// pinned stays. Returns its directory for a successor.
    fn killed(mut self) -> tempfile::TempDir {
        assert!(!self.sigkill().success());
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// SIGTERM without `--detach-on-exit` (a restart, an upgrade): the kernel side
    /// stays pinned. Returns its directory for a successor.
    fn stopped_keeping_pins(mut self) -> tempfile::TempDir {
        let status = self.stop();
        assert!(status.success(), "{status}:\n{}", self.log());
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }
}

/// `bash -c script` with `args` as `$1…`, in a `run` session of `profile` named `name`.
fn script_session(
    d: &Daemon,
    profile: &str,
    name: &str,
    script: &str,
    args: &[&str],
) -> std::process::Child {
    d.cli()
        .args(["run", "--profile", profile, "--session-name", name, "--"])
        .args(["bash", "-c", script, name])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The generations whose links are pinned.
fn generations(pins: &Path) -> Vec<String> {
    let mut g: Vec<String> = fs::read_dir(pins.join("links"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    g.sort();
    g
}

#[test]
fn a_killed_daemon_leaves_enforcement_in_force_and_its_successor_adopts_the_session() {
    let f = Fixture::new();
    let rd = f.rules_dir();
    let Some(d) = Daemon::start_with(&["--rules-dir", &rd, KEEP_PINS]) else {
        return;
    };
    let pins = d.pins();
    let port = f.port().to_string();
    let dir = f.dir.to_str().unwrap().to_owned();
    let mut session = script_session(&d, "keep", "kept", SCRIPT, &[&dir, &port]);
    f.wait_for_file("started", "the session never started");
    let sid = d.session("kept").id;
    // A second session that ends while no daemon runs: its last records wait in the
    // ring, and the successor ends it with a session_end of its own.
    let brief_marker = f.dir.join("brief-read");
    let mut brief = script_session(
        &d,
        "keep",
        "brief",
        "touch \"$1/brief-started\"; while [ ! -e \"$1/go\" ]; do sleep 0.05; done; \
         cat /etc/hostname > \"$1/brief-read\"",
        &[&dir],
    );
    f.wait_for_file("brief-started", "the brief session never started");
    let brief_sid = d.session("brief").id;
    let first_generation = generations(&pins);
    assert_eq!(first_generation.len(), 1, "{first_generation:?}");

    let dir_kept = d.killed();
    // No daemon: a new session is refused, its command never runs.
    let ran = f.dir.join("ran");
    let out = Command::new(bin())
        .arg("--socket")
        .arg(dir_kept.path().join("ctl.sock"))
        .args(["run", "--profile", "keep", "--", "touch"])
        .arg(&ran)
        .output_within();
    assert!(!out.status.success(), "run without a daemon: {out:?}");
    assert!(!ran.exists(), "the command ran without a daemon");

    // The session acts with no daemon: the denied read is stopped (the refusal layer
    // was the daemon's; the kernel kills instead), the denied connect refused.
    fs::write(f.dir.join("go"), "").unwrap();
    let status = brief.wait().unwrap();
    assert!(
        status.success(),
        "the brief session in the gap: {status:?}\n{}",
        f.stalled()
    );
    assert!(brief_marker.exists());
    f.wait_for_log("gap-done");
    let log = f.log();
    assert!(
        !log.contains("leak"),
        "the key was read with the daemon dead: {log}"
    );
    assert!(
        log.lines().any(|l| l == "read=137" || l == "read=1"),
        "the read was neither killed (137) nor refused (1, BPF-LSM): {log}"
    );
    assert!(
        log.lines().any(|l| l == "connect=1"),
        "connect not refused (EPERM): {log}"
    );

    // The successor adopts: same session, its records continue the chain.
    let d = Daemon::spawn_in(dir_kept, &["--rules-dir", &rd, KEEP_PINS]);
    assert!(
        d.log().contains("adopted the pinned kernel side"),
        "{}",
        d.log()
    );
    let adopted = d.session("kept");
    assert_eq!(
        (adopted.id.as_str(), adopted.state.as_str()),
        (sid.as_str(), "active")
    );
    let second_generation = generations(&pins);
    assert_eq!(
        second_generation.len(),
        1,
        "the old links are retired: {second_generation:?}"
    );
    assert_ne!(second_generation, first_generation);
    // The session's seccomp filter protects the first daemon's pid, not the successor's:
    // a signal to the successor is refused by BPF-LSM where it runs, else killed at the
    // call's entry (the successor attached the syscall-entry program for the session).
    let successor = d.child.as_ref().unwrap().id().to_string();
    fs::write(f.dir.join("daemon"), &successor).unwrap();
    fs::write(f.dir.join("go2"), "").unwrap();
    f.wait_for_log("done");
    assert!(session.wait().unwrap().success(), "{}", f.log());
    let log = f.log();
    assert!(
        log.lines().any(|l| l == "read2=1"),
        "refused again under the successor: {log}"
    );
    assert!(
        log.contains("signal=1\nsignal_rc=0") || log.contains("signal_rc=137"),
        "the successor was signalled from the adopted session: {log}"
    );

    let evs = d.wait_for(&sid, "the adopted session's end", |evs| {
        evs.iter().any(|e| e.kind() == EventKind::SessionEnd)
    });
    let key = f.dir.join("secret/key").display().to_string();
    let reads: Vec<&Event> = evs
        .iter()
        .filter(|e| e.open().is_some_and(|o| o.path == key) && e.decision.is_some())
        .collect();
    // The read in the gap: recorded from the ring by the successor, as the kernel's kill
    // (or BPF-LSM's refusal), with the profile's rule.
    let gap = reads
        .iter()
        .find(|e| {
            let dcs = e.decision.as_ref().unwrap();
            (dcs.action, dcs.enforced_by) == (Action::Killed, Layer::Signal)
                || dcs.enforced_by == Layer::Lsm
        })
        .unwrap_or_else(|| panic!("no record of the read in the gap:\n{}", dump(&evs)));
    assert!(
        gap.decision
            .as_ref()
            .unwrap()
            .rule
            .contains("keep.yaml:7 (files.deny[0])"),
        "{gap:?}"
    );
    // The read after: refused under the successor, in the same session.
    assert!(
        reads.iter().any(|e| {
            let dcs = e.decision.as_ref().unwrap();
            dcs.action == Action::Blocked && matches!(dcs.enforced_by, Layer::Fanotify | Layer::Lsm)
        }),
        "no refusal after the adoption:\n{}",
        dump(&evs)
    );
    let refused_connect = evs.iter().any(|e| {
        e.net().is_some_and(|n| n.port == f.port())
            && e.decision.as_ref().is_some_and(|dcs| {
                dcs.action == Action::Blocked && dcs.enforced_by == Layer::Cgroup
            })
    });
    assert!(
        refused_connect,
        "the refused connect is not recorded:\n{}",
        dump(&evs)
    );
    let signal = evs
        .iter()
        .find(|e| e.syscall().is_some_and(|s| s.name == "kill"))
        .and_then(|e| e.decision.as_ref())
        .unwrap_or_else(|| panic!("no decision on the signal:\n{}", dump(&evs)));
    assert!(
        matches!(
            (signal.action, signal.enforced_by),
            (Action::Killed, Layer::Signal) | (Action::Blocked, Layer::Lsm)
        ),
        "{signal:?}"
    );
    assert_eq!(
        signal.rule,
        "agentwarden self-protection: a signal to the daemon"
    );
    assert_eq!(
        evs.iter()
            .filter(|e| e.kind() == EventKind::SessionStart)
            .count(),
        1,
        "one session, not a second one:\n{}",
        dump(&evs)
    );
    // The gap is raised: what the kernel sent while no daemon read.
    let all = d.events(None);
    let loss = all
        .iter()
        .filter_map(|e| e.loss())
        .find(|l| l.counter == "sent_while_daemon_absent")
        .unwrap_or_else(|| panic!("no loss raised for the gap:\n{}", dump(&all)));
    assert!(loss.delta > 0, "{loss:?}");
    // The session that ended in the gap: its last actions and its end, recorded by the
    // successor.
    let brief_evs = d.wait_for(
        &brief_sid,
        "the end of the session that ended in the gap",
        |evs| evs.iter().any(|e| e.kind() == EventKind::SessionEnd),
    );
    assert!(
        brief_evs
            .iter()
            .any(|e| e.open().is_some_and(|o| o.path == "/etc/hostname")),
        "its read in the gap:\n{}",
        dump(&brief_evs)
    );
    assert_eq!(d.session("brief").state, "ended");
    let v = d.audit(&["verify"]);
    assert!(v.status.success(), "the chain across the gap: {v:?}");
    drop(d);
    assert!(!pins.exists(), "a test's pins are removed after it");
}

/// A deny rule bound to a file by inode holds for that file only. A bound file deleted
/// while the daemon runs stays bound until the next binding (the daemon holds it open,
/// so its number is not given out); a daemon killed in between leaves the binding pinned
/// and the number free. A file made later with that number is another file: a session
/// that creates and reads it in the gap is neither refused nor killed. On an ext4 of the
/// test's own (loop-mounted), where nothing else takes the freed number: ext4 gives a new
/// file the lowest free number of its group.
#[test]
fn a_file_given_the_number_of_a_bound_file_a_killed_daemon_held_is_not_denied() {
    let f = Fixture::new();
    let fs_dir = f.dir.join("ext4");
    let _mounted = LoopExt4::mount(&f.dir.join("ext4.img"), &fs_dir);
    let old = fs_dir.join("old");
    fs::write(&old, "OLD\n").unwrap();
    fs::write(
        f.rules.path().join("reuse.yaml"),
        format!(
            "name: reuse\ndescription: t\nowners: {{ business: b, technical: t }}\n\
             mode: enforce\nfiles:\n  deny:\n    - {}\n  on_violation: block\n",
            old.display()
        ),
    )
    .unwrap();
    let rd = f.rules_dir();
    let Some(d) = Daemon::start_with(&["--rules-dir", &rd, KEEP_PINS]) else {
        return;
    };
    let dir = f.dir.to_str().unwrap().to_owned();
    // Files are made beside the deleted one until one has its number (the killed
    // daemon's marks let go of the file after a grace period).
    let script = r#"
W="$1"; M="$2"
echo started > "$W/started"
while [ ! -e "$W/go" ]; do sleep 0.05; done
want=$(cat "$W/ino"); i=0; found=
while [ $i -lt 2000 ]; do
  : > "$M/new-$i"
  if [ "$(stat -c %i "$M/new-$i")" = "$want" ]; then found="$M/new-$i"; break; fi
  rm "$M/new-$i"
  i=$((i+1))
  sleep 0.01
done
echo "found=$found" >> "$W/log"
cat "$found" > /dev/null; echo "read=$?" >> "$W/log"
echo done >> "$W/log"
"#;
    let mut session = script_session(
        &d,
        "reuse",
        "reuse",
        script,
        &[&dir, fs_dir.to_str().unwrap()],
    );
    f.wait_for_file("started", "the session never started");
    let ino = fs::metadata(&old).unwrap().ino();
    fs::write(f.dir.join("ino"), ino.to_string()).unwrap();
    // Deleted and the daemon killed at once, well inside the binding period (10 s).
    fs::remove_file(&old).unwrap();
    let dir_kept = d.killed();
    fs::write(f.dir.join("go"), "").unwrap();
    let start = Instant::now();
    while !f.log().lines().any(|l| l == "done") {
        if let Some(status) = session.try_wait().unwrap() {
            panic!(
                "the session ended in the gap ({status:?}) before it was done: {:?}",
                f.log()
            );
        }
        if start.elapsed() > patience() {
            panic!("no `done` in {:?}\n{}", f.log(), f.stalled());
        }
        thread::sleep(Duration::from_millis(50));
    }
    let status = session.wait().unwrap();
    let log = f.log();
    assert!(status.success(), "{status:?}: {log}");
    assert!(
        log.lines()
            .any(|l| l.starts_with("found=") && l.len() > "found=".len()),
        "no new file was given the freed number {ino}: {log}"
    );
    assert!(log.lines().any(|l| l == "read=0"), "{log}");
    // A successor adopts the pins (and its drop removes them).
    let d = Daemon::spawn_in(dir_kept, &["--rules-dir", &rd, KEEP_PINS]);
    drop(d);
}

/// A small ext4 of a test's own, loop-mounted at `dir`; unmounted on drop.
struct LoopExt4(PathBuf);

impl LoopExt4 {
    fn mount(image: &Path, dir: &Path) -> Self {
        let ok = |c: &mut Command| {
            let out = c.output_within();
            assert!(out.status.success(), "{c:?}: {out:?}");
        };
        ok(Command::new("truncate").args(["-s", "16M"]).arg(image));
        ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(image));
        fs::create_dir_all(dir).unwrap();
        ok(Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(dir));
        Self(dir.to_owned())
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A restart (an upgrade: a new load of the programs) keeps a looping denied reader
/// stopped at every iteration: refused while a daemon runs, killed in the moment
/// between, never reading the key; the new programs take over in one write.
#[test]
fn an_upgrade_keeps_a_looping_denied_reader_stopped_at_every_iteration() {
    let f = Fixture::new();
    let rd = f.rules_dir();
    let Some(d) = Daemon::start_with(&["--rules-dir", &rd, KEEP_PINS]) else {
        return;
    };
    let pins = d.pins();
    let dir = f.dir.to_str().unwrap().to_owned();
    let looping = r#"
W="$1"; i=0
while [ ! -e "$W/stop" ]; do
  out=$(cat "$W/secret/key" 2>/dev/null); rc=$?
  case "$out" in *KEY*) echo leak >> "$W/log";; esac
  echo "rc=$rc" >> "$W/log"
  i=$((i+1))
  sleep 0.01
done
echo done >> "$W/log"
"#;
    let mut session = script_session(&d, "keep", "loop", looping, &[&dir]);
    f.wait_for_log("rc=1");
    let sid = d.session("loop").id;
    let before = generations(&pins);
    // Two upgrades in a row, each a new load with its own generation.
    let mut dir_kept = d.stopped_keeping_pins();
    for _ in 0..2 {
        let d = Daemon::spawn_in(dir_kept, &["--rules-dir", &rd, KEEP_PINS]);
        assert_eq!(d.session("loop").id, sid, "the loop's session is adopted");
        let n = f.log().lines().count();
        let start = Instant::now();
        while f.log().lines().count() < n + 5 {
            if start.elapsed() > patience() {
                panic!("the loop stopped: {}\n{}", f.log(), f.stalled());
            }
            thread::sleep(Duration::from_millis(20));
        }
        dir_kept = d.stopped_keeping_pins();
    }
    let d = Daemon::spawn_in(dir_kept, &["--rules-dir", &rd, KEEP_PINS]);
    let after = generations(&pins);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after, before);
    fs::write(f.dir.join("stop"), "").unwrap();
    assert!(session.wait().unwrap().success());
    let log = f.log();
    assert!(
        !log.contains("leak"),
        "the key was read during an upgrade: {log}"
    );
    let rcs: Vec<&str> = log.lines().filter(|l| l.starts_with("rc=")).collect();
    assert!(rcs.len() > 15, "{log}");
    assert!(
        rcs.iter().all(|l| *l == "rc=1" || *l == "rc=137"),
        "every iteration refused (1) or, between daemons, killed (137): {log}"
    );
    // The explicit way out: refused while a daemon runs, then everything detaches.
    let out = d
        .cli()
        .args(["unload", "--pin-dir"])
        .arg(&pins)
        .output_within();
    assert!(
        !out.status.success(),
        "unload with a daemon running: {out:?}"
    );
    assert!(pins.exists());
    let dir_kept = d.stopped_keeping_pins();
    let out = Command::new(bin())
        .arg("--socket")
        .arg(dir_kept.path().join("ctl.sock"))
        .args(["unload", "--pin-dir"])
        .arg(&pins)
        .output_within();
    assert!(out.status.success(), "{out:?}");
    assert!(!pins.exists(), "unload removes every pin");
}

/// Pinned maps a daemon cannot read right are never adopted: a successor asking for
/// another session-map size is refused at start, naming the map and the way out, and
/// the pinned state stays for a daemon that fits.
#[test]
fn a_successor_that_does_not_fit_the_pinned_maps_is_refused_naming_them() {
    let Some(d) = Daemon::start_with(&[KEEP_PINS]) else {
        return;
    };
    let pins = d.pins();
    let dir_kept = d.stopped_keeping_pins();
    let out = Command::new(bin())
        .arg("--socket")
        .arg(dir_kept.path().join("ctl.sock"))
        .args([
            "daemon",
            "--quiet",
            "--max-tracked-processes",
            "1024",
            "--pin-dir",
        ])
        .arg(&pins)
        .arg("--state-dir")
        .arg(dir_kept.path().join("state"))
        .output_within();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("map SESSIONS")
            && err.contains("1024 entries")
            && err.contains("agentwarden unload"),
        "{err}"
    );
    assert!(
        pins.join("maps/SESSIONS").exists(),
        "the pinned state stays"
    );
    // The one that fits adopts it.
    let d = Daemon::spawn_in(dir_kept, &[]);
    assert!(
        d.log().contains("adopted the pinned kernel side"),
        "{}",
        d.log()
    );
}

/// Two daemons never share one pinned kernel side: a second daemon (on another socket)
/// pointed at the pins a running daemon holds is refused, naming that daemon's pid, and
/// the running one is untouched.
#[test]
fn a_second_daemon_is_refused_the_pins_a_running_daemon_holds() {
    let Some(d) = Daemon::start() else { return };
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .arg("--socket")
        .arg(other.path().join("ctl.sock"))
        .args(["daemon", "--quiet", "--pin-dir"])
        .arg(d.pins())
        .arg("--state-dir")
        .arg(other.path().join("state"))
        .output_within();
    let err = String::from_utf8_lossy(&out.stderr);
    let pid = d.child.as_ref().unwrap().id();
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("running daemon pid {pid}")), "{err}");
    let st: StatusReport = d.json(&["status", "--json"]);
    assert_eq!(st.daemon_pid, pid);
    assert_eq!(generations(&d.pins()).len(), 1);
}
