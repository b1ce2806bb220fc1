//! Message flags and keywords.

use std::fmt;

use crate::error::{Error, Result};

/// A system flag or a keyword. `\Recent` is not supported (IMAP4rev2 dropped it; it cannot be
/// kept meaningful across nodes).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Flag {
    /// `\Seen`
    Seen,
    /// `\Answered`
    Answered,
    /// `\Flagged`
    Flagged,
    /// `\Deleted`
    Deleted,
    /// `\Draft`
    Draft,
    /// A keyword: an IMAP atom such as `$Forwarded` or `Work`.
    Keyword(String),
}

const SYSTEM: [(Flag, &str); 5] = [
    (Flag::Seen, "\\Seen"),
    (Flag::Answered, "\\Answered"),
    (Flag::Flagged, "\\Flagged"),
    (Flag::Deleted, "\\Deleted"),
    (Flag::Draft, "\\Draft"),
];

impl Flag {
    /// Parses a flag as written in IMAP (`\Seen`, `$Junk`, ...). System flags are matched
    /// case-insensitively; keywords must be atoms (no space, parentheses, braces, quotes,
    /// backslash, `%`, `*`, `]` or control characters).
    pub fn parse(s: &str) -> Result<Flag> {
        if let Some(rest) = s.strip_prefix('\\') {
            for (f, name) in &SYSTEM {
                if name[1..].eq_ignore_ascii_case(rest) {
                    return Ok(f.clone());
                }
            }
            return Err(Error::InvalidFlag(s.to_owned()));
        }
        let atom_ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes().all(|b| {
                b > 0x20
                    && b < 0x7f
                    && !matches!(b, b'(' | b')' | b'{' | b'"' | b'\\' | b'%' | b'*' | b']')
            });
        if !atom_ok {
            return Err(Error::InvalidFlag(s.to_owned()));
        }
        Ok(Flag::Keyword(s.to_owned()))
    }

    /// The flag as IMAP writes it.
    pub fn as_str(&self) -> &str {
        match self {
            Flag::Keyword(k) => k,
            other => SYSTEM
                .iter()
                .find(|(f, _)| f == other)
                .map(|(_, n)| *n)
                .unwrap_or(""),
        }
    }

    fn bit(&self) -> Option<u8> {
        SYSTEM.iter().position(|(f, _)| f == self).map(|i| 1 << i)
    }
}

impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of flags: system flags as bits, keywords sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FlagSet {
    system: u8,
    keywords: Vec<Box<str>>,
}

impl FlagSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `flag` is in the set.
    pub fn contains(&self, flag: &Flag) -> bool {
        match (flag.bit(), flag) {
            (Some(b), _) => self.system & b != 0,
            (None, Flag::Keyword(k)) => self.keywords.binary_search_by(|x| (**x).cmp(k)).is_ok(),
            (None, _) => false,
        }
    }

    /// Adds `flag`.
    pub fn insert(&mut self, flag: &Flag) {
        match (flag.bit(), flag) {
            (Some(b), _) => self.system |= b,
            (None, Flag::Keyword(k)) => {
                if let Err(i) = self.keywords.binary_search_by(|x| (**x).cmp(k)) {
                    self.keywords.insert(i, k.as_str().into());
                }
            }
            (None, _) => {}
        }
    }

    /// Removes `flag`.
    pub fn remove(&mut self, flag: &Flag) {
        match (flag.bit(), flag) {
            (Some(b), _) => self.system &= !b,
            (None, Flag::Keyword(k)) => {
                if let Ok(i) = self.keywords.binary_search_by(|x| (**x).cmp(k)) {
                    self.keywords.remove(i);
                }
            }
            (None, _) => {}
        }
    }

    /// The flags, system flags first, then keywords in order.
    pub fn iter(&self) -> impl Iterator<Item = Flag> + '_ {
        SYSTEM
            .iter()
            .filter(|(f, _)| f.bit().is_some_and(|b| self.system & b != 0))
            .map(|(f, _)| f.clone())
            .chain(self.keywords.iter().map(|k| Flag::Keyword(k.to_string())))
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.system == 0 && self.keywords.is_empty()
    }

    /// Number of flags in the set.
    pub fn len(&self) -> usize {
        self.system.count_ones() as usize + self.keywords.len()
    }
}

impl<'a> FromIterator<&'a Flag> for FlagSet {
    fn from_iter<I: IntoIterator<Item = &'a Flag>>(iter: I) -> Self {
        let mut s = FlagSet::new();
        for f in iter {
            s.insert(f);
        }
        s
    }
}

/// How a STORE changes flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagOp {
    /// `+FLAGS`: add these.
    Add,
    /// `-FLAGS`: remove these.
    Remove,
    /// `FLAGS`: make the set exactly these.
    Replace,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_flags() {
        assert_eq!(Flag::parse("\\seen").unwrap(), Flag::Seen);
        assert_eq!(Flag::parse("$Junk").unwrap(), Flag::Keyword("$Junk".into()));
        assert!(Flag::parse("\\Recent").is_err());
        assert!(Flag::parse("a b").is_err());
        assert!(Flag::parse("").is_err());
        assert!(Flag::parse("x]").is_err());
    }

    #[test]
    fn set_operations() {
        let mut s = FlagSet::new();
        s.insert(&Flag::Seen);
        s.insert(&Flag::Keyword("b".into()));
        s.insert(&Flag::Keyword("a".into()));
        s.insert(&Flag::Keyword("a".into()));
        assert_eq!(s.len(), 3);
        assert!(s.contains(&Flag::Keyword("a".into())));
        let names: Vec<String> = s.iter().map(|f| f.to_string()).collect();
        assert_eq!(names, ["\\Seen", "a", "b"]);
        s.remove(&Flag::Seen);
        s.remove(&Flag::Keyword("a".into()));
        assert_eq!(s.iter().count(), 1);
    }
}
