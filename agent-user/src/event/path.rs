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
    let mut parts: Vec<&str> = raw.split('/').filter(|c| !c.is_empty()).collect();
    parts.reverse();
    let path = format!("/{}", parts.join("/"));
    PathText {
        path,
        truncated,
        resolved: true,
    }
}
