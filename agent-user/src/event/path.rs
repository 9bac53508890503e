//! Kernel paths (`KPath`) as text: resolved paths arrive leaf-first and are reversed.

use agent_common::event::{KPath, PATH_FLAG_RAW, PATH_FLAG_TRUNCATED};

/// A kernel path turned into text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathText {
    pub path: String,
    pub truncated: bool,
    /// Resolved by the kernel from the file object (false: the raw syscall argument).
    pub resolved: bool,
}

/// Turns a [`KPath`] into a path string. Resolved paths arrive leaf-first
/// (`hostname/etc/`) and are reversed here.
pub fn path_text(p: &KPath) -> PathText {
    let len = usize::from(p.len).min(p.bytes.len());
    let raw = String::from_utf8_lossy(&p.bytes[..len]);
    let truncated = p.flags & PATH_FLAG_TRUNCATED != 0;
    if p.flags & PATH_FLAG_RAW != 0 {
        return PathText {
            path: raw.into_owned(),
            truncated,
            resolved: false,
        };
    }
    // One allocation: every event of a file carries its path, on the reader's hot path.
    let mut path = String::with_capacity(raw.len() + 1);
    for part in raw.rsplit('/').filter(|c| !c.is_empty()) {
        path.push('/');
        path.push_str(part);
    }
    if path.is_empty() {
        path.push('/');
    }
    PathText {
        path,
        truncated,
        resolved: true,
    }
}
