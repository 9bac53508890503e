//! uid → user name and home directory, from `/etc/passwd` (cached; re-read on a miss).

use std::{
    fs,
    time::{Duration, Instant},
};

/// A uid `/etc/passwd` does not name (a container's, a deleted account's) is looked up
/// again at most this often: each of its processes' events asks for it.
const MISS_REREAD: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Users {
    entries: foldhash::HashMap<u32, Entry>,
    /// When `/etc/passwd` was last read.
    read_at: Option<Instant>,
    /// Another file in its place (tests).
    passwd: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    name: String,
    home: String,
    gid: u32,
}

/// An account an agent is run as (`agentwarden run --user`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    pub home: String,
}

/// Looks up an account by name in `/etc/passwd`.
pub fn account(name: &str) -> Option<Account> {
    parse_passwd(&fs::read_to_string("/etc/passwd").unwrap_or_default())
        .into_iter()
        .find(|(_, e)| e.name == name)
        .map(|(uid, e)| Account {
            uid,
            gid: e.gid,
            name: e.name,
            home: e.home,
        })
}

/// Accounts whose files deny rules are bound for from the daemon's start, before any
/// of their sessions: root and login users (uid 1000 to 59999) whose home exists, up to
/// `limit`, as `(uid, home)`.
pub fn local_accounts(limit: usize) -> Vec<(u32, String)> {
    let mut all: Vec<(u32, String)> =
        parse_passwd(&fs::read_to_string("/etc/passwd").unwrap_or_default())
            .into_iter()
            .filter(|(uid, e)| {
                (*uid == 0 || (1000..60_000).contains(uid))
                    && std::path::Path::new(&e.home).is_dir()
            })
            .map(|(uid, e)| (uid, e.home))
            .collect();
    all.sort();
    all.truncate(limit);
    all
}

impl Users {
    fn entry(&mut self, uid: u32) -> Option<&Entry> {
        if !self.entries.contains_key(&uid)
            && self.read_at.is_none_or(|t| t.elapsed() >= MISS_REREAD)
        {
            let path = self.passwd.as_deref().unwrap_or("/etc/passwd".as_ref());
            self.entries = parse_passwd(&fs::read_to_string(path).unwrap_or_default());
            self.read_at = Some(Instant::now());
        }
        self.entries.get(&uid)
    }

    pub fn name(&mut self, uid: u32) -> Option<String> {
        self.entry(uid).map(|e| e.name.clone())
    }

    /// The home directory `~` stands for in the profiles of this user's sessions.
    pub fn home(&mut self, uid: u32) -> Option<String> {
        self.entry(uid).map(|e| e.home.clone())
    }
}

fn parse_passwd(text: &str) -> foldhash::HashMap<u32, Entry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let uid = f.get(2)?.parse().ok()?;
            let entry = Entry {
                name: (*f.first()?).to_owned(),
                home: (*f.get(5)?).to_owned(),
                gid: f.get(3)?.parse().ok()?,
            };
            Some((uid, entry))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_uid_rereads_the_file_at_most_once_a_window() {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        fs::write(&passwd, "root:x:0:0:root:/root:/bin/bash\n").unwrap();
        let mut users = Users {
            passwd: Some(passwd.clone()),
            ..Users::default()
        };
        assert_eq!(users.name(0).as_deref(), Some("root"));
        // An account added now: a miss within the window does not read the file again
        // (every event of a process with an unknown uid asks)...
        fs::write(
            &passwd,
            "root:x:0:0:root:/root:/bin/bash\nbob:x:4242:4242::/home/bob:/bin/sh\n",
        )
        .unwrap();
        assert_eq!(users.name(4242), None);
        // ...the first miss after it does.
        users.read_at = Some(Instant::now() - MISS_REREAD);
        assert_eq!(users.name(4242).as_deref(), Some("bob"));
        assert_eq!(users.home(4242).as_deref(), Some("/home/bob"));
    }

    #[test]
    fn parses_passwd_lines() {
        let m = super::parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\nbroken\nbob:x:1000:1000::/home/bob:/bin/sh\n",
        );
        assert_eq!(m.get(&0).map(|e| e.name.as_str()), Some("root"));
        assert_eq!(m.get(&1000).map(|e| e.home.as_str()), Some("/home/bob"));
        assert_eq!(m.len(), 2);
    }
}
