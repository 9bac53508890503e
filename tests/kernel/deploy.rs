//! The systemd deployment: the shipped unit checked by the real systemd tools, and the
//! daemon's side of `Type=notify` with a watchdog.

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
