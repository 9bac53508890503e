//! `open`: the file as the kernel resolved it, the flags and the result.

use std::borrow::Cow;

use agent_common::event::{OpenEvent, OpenRepeatEvent, OpenSyscall};
use serde::{Deserialize, Serialize};

use super::path_text;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpenInfo {
    /// Static names, borrowed (not an allocation per event) where the daemon makes them.
    pub syscall: Cow<'static, str>,
    pub path: String,
    /// False when the open failed and `path` is the argument as passed.
    pub path_resolved: bool,
    pub path_truncated: bool,
    pub flags: Vec<Cow<'static, str>>,
    pub flags_raw: u32,
    /// The fd, or `-errno` (0 for counted repeats: each succeeded).
    pub result: i64,
    /// Set when this event stands for opens the kernel counted instead of sending one
    /// by one: the same process opening the same file the same way, allowed, again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeats: Option<Repeats>,
}

/// Counted repeats of an open (see [`OpenInfo::repeats`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Repeats {
    /// How many opens this event stands for.
    pub count: u64,
    /// When the first of them happened (the event's `time` is the last one's).
    pub first: String,
}

pub(super) fn open_info(e: &OpenEvent) -> OpenInfo {
    let p = path_text(&e.path);
    OpenInfo {
        syscall: syscall_name(e.syscall),
        path: p.path,
        path_resolved: p.resolved,
        path_truncated: p.truncated,
        flags: open_flag_names(e.flags),
        flags_raw: e.flags,
        result: e.ret,
        repeats: None,
    }
}

/// The open event of counted repeats; the path is the one the daemon saw the process
/// open that inode by (filled by attribution: none when it was not seen).
pub(super) fn repeats_info(e: &OpenRepeatEvent, first: String) -> OpenInfo {
    OpenInfo {
        syscall: syscall_name(e.syscall),
        path: String::new(),
        path_resolved: false,
        path_truncated: false,
        flags: open_flag_names(e.flags),
        flags_raw: e.flags,
        result: 0,
        repeats: Some(Repeats {
            count: e.count,
            first,
        }),
    }
}

/// The open syscall's name, from its number in the kernel's record.
fn syscall_name(n: u32) -> Cow<'static, str> {
    Cow::Borrowed(OpenSyscall::from_u32(n).map_or("unknown", OpenSyscall::name))
}

/// Names of the `O_*` flags set in `flags` (x86_64/generic values), as
/// [`OpenInfo::flags`] holds them.
pub fn open_flag_names(flags: u32) -> Vec<Cow<'static, str>> {
    let mut out = vec![Cow::Borrowed(match flags & 0o3 {
        0 => "O_RDONLY",
        1 => "O_WRONLY",
        2 => "O_RDWR",
        _ => "O_ACCMODE",
    })];
    const NAMES: &[(u32, &str)] = &[
        (0o100, "O_CREAT"),
        (0o200, "O_EXCL"),
        (0o400, "O_NOCTTY"),
        (0o1000, "O_TRUNC"),
        (0o2000, "O_APPEND"),
        (0o4000, "O_NONBLOCK"),
        (0o10000, "O_DSYNC"),
        (0o40000, "O_DIRECT"),
        (0o100000, "O_LARGEFILE"),
        (0o200000, "O_DIRECTORY"),
        (0o400000, "O_NOFOLLOW"),
        (0o1000000, "O_NOATIME"),
        (0o2000000, "O_CLOEXEC"),
        (0o4010000, "O_SYNC"),
        (0o10000000, "O_PATH"),
        (0o20200000, "O_TMPFILE"),
    ];
    for (bit, name) in NAMES {
        if flags & bit == *bit {
            out.push(Cow::Borrowed(name));
        }
    }
    out
}
