//! `exec`: the new program as the kernel opened it, its arguments and working directory.

use agent_common::event::{ARGV_TRUNCATED, ExecEvent};
use serde::{Deserialize, Serialize};

use super::path_text;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecInfo {
    pub path: String,
    pub path_truncated: bool,
    pub argv: Vec<String>,
    pub argv_truncated: bool,
    pub cwd: String,
}

pub(super) fn exec_info(e: &ExecEvent) -> ExecInfo {
    let exe = path_text(&e.exe);
    let len = (e.argv_len as usize).min(e.argv.len());
    ExecInfo {
        path: exe.path,
        path_truncated: exe.truncated,
        argv: argv(&e.argv[..len]),
        argv_truncated: e.argv_flags & ARGV_TRUNCATED != 0,
        cwd: path_text(&e.cwd).path,
    }
}

/// Splits a NUL-separated argument vector.
pub fn argv(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}
