//! uid → user name, from `/etc/passwd` (cached; re-read on a miss).

use std::{collections::HashMap, fs};

#[derive(Default)]
pub struct Users {
    names: HashMap<u32, String>,
}

impl Users {
    pub fn name(&mut self, uid: u32) -> Option<String> {
        if !self.names.contains_key(&uid) {
            self.names = parse_passwd(&fs::read_to_string("/etc/passwd").unwrap_or_default());
        }
        self.names.get(&uid).cloned()
    }
}

fn parse_passwd(text: &str) -> HashMap<u32, String> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let uid = f.nth(1)?.parse().ok()?;
            Some((uid, name.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_passwd_lines() {
        let m = super::parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\nbroken\nbob:x:1000:1000::/home/bob:/bin/sh\n",
        );
        assert_eq!(m.get(&0).map(String::as_str), Some("root"));
        assert_eq!(m.get(&1000).map(String::as_str), Some("bob"));
        assert_eq!(m.len(), 2);
    }
}
