//! Mailbox names: parsed once into [`MailboxName`], so the rest of the store never sees an
//! invalid one.

use std::fmt;

use crate::error::{Error, Result};

/// The hierarchy delimiter of mailbox names.
pub const DELIMITER: char = '/';

/// The longest mailbox name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 512;

/// A valid mailbox name: non-empty UTF-8 components separated by `/`, no control characters, no
/// IMAP wildcards. `INBOX` in any case is normalised to `INBOX` (RFC 3501 5.1), also as the first
/// component of a hierarchical name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MailboxName(String);

impl MailboxName {
    /// Parses and normalises `name`.
    pub fn new(name: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidMailboxName {
            name: name.to_owned(),
            reason,
        };
        if name.is_empty() {
            return Err(bad("empty"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(bad("too long"));
        }
        if name.chars().any(|c| c.is_control()) {
            return Err(bad("contains a control character"));
        }
        if name.contains(['*', '%']) {
            return Err(bad("contains a wildcard (* or %)"));
        }
        if name.split(DELIMITER).any(|c| c.is_empty()) {
            return Err(bad("empty hierarchy component"));
        }
        if name.split(DELIMITER).any(|c| c.trim() != c) {
            return Err(bad("component with leading or trailing white space"));
        }
        let normalised = match name.split_once(DELIMITER) {
            Some((first, rest)) if first.eq_ignore_ascii_case("INBOX") => {
                format!("INBOX{DELIMITER}{rest}")
            }
            None if name.eq_ignore_ascii_case("INBOX") => "INBOX".to_owned(),
            _ => name.to_owned(),
        };
        Ok(MailboxName(normalised))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is INBOX itself.
    pub fn is_inbox(&self) -> bool {
        self.0 == "INBOX"
    }

    /// The parent's name, if this name has one (`a/b/c` -> `a/b`).
    pub fn parent(&self) -> Option<MailboxName> {
        self.0
            .rsplit_once(DELIMITER)
            .map(|(p, _)| MailboxName(p.to_owned()))
    }

    /// Every ancestor, outermost first (`a/b/c` -> `a`, `a/b`).
    pub fn ancestors(&self) -> Vec<MailboxName> {
        let mut out = Vec::new();
        let mut cur = self.parent();
        while let Some(p) = cur {
            cur = p.parent();
            out.push(p);
        }
        out.reverse();
        out
    }

    /// Whether `self` is a strict descendant of `other`.
    pub fn is_inside(&self, other: &MailboxName) -> bool {
        self.0.len() > other.0.len()
            && self.0.starts_with(&other.0)
            && self.0[other.0.len()..].starts_with(DELIMITER)
    }

    /// `self` with the prefix `from` replaced by `to` (for renaming a subtree).
    pub(crate) fn reparent(&self, from: &MailboxName, to: &MailboxName) -> Result<MailboxName> {
        if self == from {
            return Ok(to.clone());
        }
        MailboxName::new(&format!("{}{}", to.0, &self.0[from.0.len()..]))
    }

    /// Wraps a name that is known to be valid (it was produced by this module before).
    pub(crate) fn trusted(name: String) -> Self {
        MailboxName(name)
    }
}

impl fmt::Display for MailboxName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_is_case_insensitive() {
        assert_eq!(MailboxName::new("inBox").unwrap().as_str(), "INBOX");
        assert_eq!(MailboxName::new("inbox/Sub").unwrap().as_str(), "INBOX/Sub");
        assert_eq!(MailboxName::new("Inboxes").unwrap().as_str(), "Inboxes");
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "", "a//b", "/a", "a/", "a*", "b%", "a\u{0}b", "x\ny", " a", "a /b",
        ] {
            assert!(MailboxName::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(MailboxName::new(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn hierarchy() {
        let n = MailboxName::new("a/b/c").unwrap();
        let a = MailboxName::new("a").unwrap();
        assert_eq!(n.parent().unwrap().as_str(), "a/b");
        assert_eq!(
            n.ancestors().iter().map(|x| x.as_str()).collect::<Vec<_>>(),
            ["a", "a/b"]
        );
        assert!(n.is_inside(&a));
        assert!(!MailboxName::new("ab").unwrap().is_inside(&a));
        let to = MailboxName::new("z").unwrap();
        assert_eq!(n.reparent(&a, &to).unwrap().as_str(), "z/b/c");
    }
}
