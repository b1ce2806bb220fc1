//! Users and their argon2 password hashes, kept in a `passwd`-style file: one `name:hash` per
//! line, the hash in PHC string form (`$argon2id$v=19$...`). Lines starting with `#` are comments.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use std::sync::Mutex;

use argon2::password_hash::PasswordHasher;
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};

/// Work memory for password checks, reused: argon2 needs ~19 MiB per check, and with memory
/// allocated afresh each time the process grew by 19 MiB per login (glibc kept every copy).
/// At most one buffer per concurrent check is kept (the server runs a bounded number at once).
static BLOCKS: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());

/// A hash of an unguessable password with default parameters, checked for unknown users so
/// that a failed login takes as long whether or not the name exists.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$dGFuZGVtZHVtbXlzYWx0$S0m5w3xWgTq7m5pq4cNkqE1sXbnUvDqTnJxuGxQm9uA";

/// Checks `password` against a PHC argon2 hash, with reused work memory.
fn check(password: &[u8], hash: &str) -> bool {
    let Ok(ph) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(params), Ok(alg)) = (
        Params::try_from(&ph),
        Algorithm::try_from(ph.algorithm.as_str()),
    ) else {
        return false;
    };
    let version = ph
        .version
        .map_or(Ok(Version::V0x13), Version::try_from)
        .unwrap_or(Version::V0x13);
    let (Some(salt), Some(expected)) = (ph.salt.as_ref(), ph.hash.as_ref()) else {
        return false;
    };
    // Refuse absurd parameters from a hand-edited file rather than allocate gigabytes.
    let blocks = params.block_count();
    if blocks > (256 << 10) {
        return false;
    }
    let mut mem = BLOCKS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop()
        .unwrap_or_default();
    if mem.len() < blocks {
        mem.resize(blocks, Block::new());
    }
    let expected: &[u8] = expected.as_ref();
    let mut out = vec![0u8; expected.len()];
    let ok = Argon2::new(alg, version, params)
        .hash_password_into_with_memory(password, salt.as_ref(), &mut out, &mut mem[..blocks])
        .is_ok()
        && out
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    let mut pool = BLOCKS.lock().unwrap_or_else(|p| p.into_inner());
    if pool.len() < 16 {
        pool.push(mem);
    }
    ok
}

/// Errors of the users file.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The file could not be read or written.
    #[error("users file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line of the file is not `name:hash`.
    #[error("users file {path}, line {line}: {problem}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// The user name cannot be used (it must be a valid account name).
    #[error("invalid user name {0:?}: use letters, digits, '.', '-', '_' and '@'")]
    InvalidName(String),
    /// Hashing failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// No such user.
    #[error("no such user {0:?}")]
    NoSuchUser(String),
}

/// The users who may log in, with their password hashes.
#[derive(Debug, Clone, Default)]
pub struct Users {
    hashes: BTreeMap<String, String>,
}

/// Whether `name` can be a user (and account) name.
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@' | '+'))
        && !name.starts_with('.')
}

impl Users {
    /// No users.
    pub fn new() -> Users {
        Users::default()
    }

    /// Loads the users file; a missing file means no users.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Users::new()),
            Err(source) => {
                return Err(UsersError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let mut users = Users::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = |problem: &str| UsersError::Syntax {
                path: path.to_owned(),
                line: i + 1,
                problem: problem.to_owned(),
            };
            let (name, hash) = line
                .split_once(':')
                .ok_or_else(|| syntax("expected name:hash"))?;
            if !valid_user_name(name) {
                return Err(syntax("invalid user name"));
            }
            if !hash.starts_with("$argon2") {
                return Err(syntax("the hash is not an argon2 PHC string"));
            }
            users.hashes.insert(name.to_owned(), hash.to_owned());
        }
        Ok(users)
    }

    /// Writes the users file atomically (temporary file, fsync, rename), readable only by its
    /// owner.
    pub fn save(&self, path: &Path) -> Result<(), UsersError> {
        let io = |source| UsersError::Io {
            path: path.to_owned(),
            source,
        };
        let tmp = path.with_extension("tmp");
        let mut text = String::from("# Tandem users: name:argon2 hash. Edit with `tandem user`.\n");
        for (n, h) in &self.hashes {
            text.push_str(&format!("{n}:{h}\n"));
        }
        {
            let mut opts = fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp).map_err(io)?;
            f.write_all(text.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        fs::rename(&tmp, path).map_err(io)
    }

    /// Adds a user or changes their password.
    pub fn set_password(&mut self, name: &str, password: &str) -> Result<(), UsersError> {
        if !valid_user_name(name) {
            return Err(UsersError::InvalidName(name.to_owned()));
        }
        let hash = Argon2::default()
            .hash_password(password.as_bytes())
            .map_err(|e| UsersError::Hash(e.to_string()))?;
        self.hashes.insert(name.to_owned(), hash.to_string());
        Ok(())
    }

    /// Removes a user.
    pub fn remove(&mut self, name: &str) -> Result<(), UsersError> {
        self.hashes
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| UsersError::NoSuchUser(name.to_owned()))
    }

    /// User names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.hashes.keys().map(String::as_str)
    }

    /// Whether `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.hashes.contains_key(name)
    }

    /// Checks a password. Slow on purpose (argon2): call it off the async executor. An unknown
    /// user costs a hash too, so timing does not tell which names exist.
    pub fn verify(&self, name: &str, password: &str) -> bool {
        match self.hashes.get(name) {
            Some(h) => check(password.as_bytes(), h),
            None => {
                let _ = check(password.as_bytes(), DUMMY_HASH);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_verify_save_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let mut u = Users::new();
        u.set_password("alice", "secret").unwrap();
        assert!(u.verify("alice", "secret"));
        assert!(!u.verify("alice", "wrong"));
        assert!(!u.verify("bob", "secret"));
        // The stand-in hash for unknown users really costs a hash.
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
        // Verifying reuses its work memory instead of growing the process by 19 MiB a time.
        let rss = || {
            std::fs::read_to_string("/proc/self/status")
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        assert!(u.verify("alice", "secret"));
        let before = rss();
        for _ in 0..5 {
            assert!(u.verify("alice", "secret"));
        }
        assert!(rss() < before + 10_000, "{} -> {} kB", before, rss());
        u.save(&path).unwrap();
        let v = Users::load(&path).unwrap();
        assert!(v.verify("alice", "secret"));
        assert!(u.set_password("bad name", "x").is_err());
        fs::write(&path, "alice\n").unwrap();
        let e = Users::load(&path).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}
