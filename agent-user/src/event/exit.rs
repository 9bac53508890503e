//! `exit`: the exit status in wait(2) form.

use serde::{Deserialize, Serialize};

/// Exit status in wait(2) form.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub core_dumped: bool,
}

impl ExitInfo {
    pub fn from_wait_status(status: u32) -> Self {
        let sig = (status & 0x7f) as i32;
        if sig == 0 {
            Self {
                code: Some(((status >> 8) & 0xff) as i32),
                signal: None,
                core_dumped: false,
            }
        } else {
            Self {
                code: None,
                signal: Some(sig),
                core_dumped: status & 0x80 != 0,
            }
        }
    }
}
