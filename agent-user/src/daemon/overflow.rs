//! A child the kernel could not track (its session map was full) runs outside every
//! session. For an enforce-mode session that is a process escaping its profile, so the
//! daemon ends it; the kernel has no way to do so from the fork hook (it can only signal
//! the current task, the parent).

use std::{io, time::Duration};

use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

/// How far apart the kernel's fork stamp and the process's recorded start may be and
/// still be the same process (/proc counts in clock ticks, 10 ms on most hosts).
const SAME_START: Duration = Duration::from_secs(1);

/// What became of the child.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Killed,
    /// It had already exited (or its pid now names a different process).
    Gone,
}

/// SIGKILLs `tgid` if it is still the process forked at `forked_boot_ns` (boot clock).
/// The pidfd pins the process between the identity check and the signal, so a recycled
/// pid is never signalled.
pub fn kill_untracked(tgid: u32, forked_boot_ns: u64) -> io::Result<Outcome> {
    let Some(pid) = Pid::from_raw(tgid as i32) else {
        return Ok(Outcome::Gone);
    };
    let fd = match pidfd_open(pid, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(Outcome::Gone),
        Err(e) => return Err(e.into()),
    };
    let started_ns = match procfs::process::Process::new(tgid as i32).and_then(|p| p.stat()) {
        Ok(stat) => stat.starttime * 1_000_000_000 / procfs::ticks_per_second(),
        Err(_) => return Ok(Outcome::Gone),
    };
    if started_ns.abs_diff(forked_boot_ns) > SAME_START.as_nanos() as u64 {
        return Ok(Outcome::Gone);
    }
    match pidfd_send_signal(&fd, Signal::KILL) {
        Ok(()) => Ok(Outcome::Killed),
        Err(rustix::io::Errno::SRCH) => Ok(Outcome::Gone),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn boot_ns() -> u64 {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
    }

    #[test]
    fn kills_the_process_forked_then_and_no_other() {
        use std::os::unix::process::ExitStatusExt;
        let born = boot_ns();
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        // Stamped long before it started: another process with a recycled pid.
        let stale = born - 3 * SAME_START.as_nanos() as u64;
        assert_eq!(kill_untracked(pid, stale).unwrap(), Outcome::Gone);
        assert_eq!(kill_untracked(pid, born).unwrap(), Outcome::Killed);
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
        assert_eq!(kill_untracked(pid, born).unwrap(), Outcome::Gone);
    }
}
