//! Parts of a raw message that FETCH BODY[section] names, located with the MIME offsets the
//! store parsed at append time (RFC 3501 6.4.5).

use tandem_store::MimePart;

/// What a section asks for, once the part path has been split off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SectionKind {
    /// The whole part (or message).
    Whole,
    /// `HEADER`
    Header,
    /// `HEADER.FIELDS (...)`, names lower-cased.
    HeaderFields(Vec<String>),
    /// `HEADER.FIELDS.NOT (...)`, names lower-cased.
    HeaderFieldsNot(Vec<String>),
    /// `TEXT`
    Text,
    /// `MIME`
    Mime,
}

/// The part a part path names: `[]` is the message itself.
fn find<'m>(root: &'m MimePart, path: &[u32]) -> Option<&'m MimePart> {
    let mut cur = root;
    for (i, &n) in path.iter().enumerate() {
        // Past the first level, a message/rfc822 part is entered through its enclosed message.
        let container = match (&cur.message, i) {
            (Some(m), i) if i > 0 => &m.1,
            _ => cur,
        };
        if container.ctype == "multipart" && !container.children.is_empty() {
            cur = container.children.get(n.checked_sub(1)? as usize)?;
        } else if n == 1 && (i == 0 || cur.message.is_some()) {
            cur = container;
        } else {
            return None;
        }
    }
    Some(cur)
}

/// The message whose HEADER/TEXT a path names: the top-level message, or the message enclosed
/// in a message/rfc822 part.
fn message_at<'m>(root: &'m MimePart, path: &[u32]) -> Option<&'m MimePart> {
    if path.is_empty() {
        return Some(root);
    }
    find(root, path)?.message.as_ref().map(|m| &m.1)
}

fn slice(raw: &[u8], a: u32, b: u32) -> Vec<u8> {
    let a = (a as usize).min(raw.len());
    let b = (b as usize).clamp(a, raw.len());
    raw[a..b].to_vec()
}

/// The bytes of a section, or `None` if the message has no such part (answered with an empty
/// string, as other servers do).
pub(crate) fn section(
    raw: &[u8],
    root: &MimePart,
    path: &[u32],
    kind: &SectionKind,
) -> Option<Vec<u8>> {
    match kind {
        SectionKind::Whole if path.is_empty() => Some(raw.to_vec()),
        SectionKind::Whole => {
            let p = find(root, path)?;
            Some(slice(raw, p.body_offset, p.end_offset))
        }
        SectionKind::Mime => {
            let p = find(root, path)?;
            Some(slice(raw, p.header_offset, p.body_offset))
        }
        SectionKind::Header => {
            let m = message_at(root, path)?;
            Some(slice(raw, m.header_offset, m.body_offset))
        }
        SectionKind::Text => {
            let m = message_at(root, path)?;
            Some(slice(raw, m.body_offset, m.end_offset))
        }
        SectionKind::HeaderFields(names) | SectionKind::HeaderFieldsNot(names) => {
            let m = message_at(root, path)?;
            let header = slice(raw, m.header_offset, m.body_offset);
            let keep_listed = matches!(kind, SectionKind::HeaderFields(_));
            let mut out = Vec::new();
            for (name, field) in header_fields(&header) {
                let listed = names.iter().any(|n| n.eq_ignore_ascii_case(name));
                if listed == keep_listed {
                    out.extend_from_slice(field);
                }
            }
            out.extend_from_slice(b"\r\n");
            Some(out)
        }
    }
}

/// The fields of a header block: (name, the field's raw bytes including continuation lines and
/// line ends). The blank line that ends the header is not a field.
pub(crate) fn header_fields(header: &[u8]) -> Vec<(&str, &[u8])> {
    let mut out: Vec<(&str, &[u8])> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let n = header.len();
    while i < n {
        // Find the end of this line.
        let eol = header[i..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(n, |p| i + p + 1);
        let next_continues = eol < n && matches!(header[eol], b' ' | b'\t');
        if !next_continues {
            let field = &header[start..eol];
            let trimmed = field.strip_suffix(b"\n").unwrap_or(field);
            let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
            if trimmed.is_empty() {
                break; // the blank line: end of the header
            }
            {
                if let Some(colon) = field.iter().position(|&c| c == b':') {
                    let name = std::str::from_utf8(&field[..colon]).unwrap_or("").trim();
                    out.push((name, field));
                }
            }
            start = eol;
        }
        i = eol;
    }
    out
}

/// Unfolded values of the named header field in a header block (without the name).
pub(crate) fn header_values(header: &[u8], name: &str) -> Vec<String> {
    header_fields(header)
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, f)| {
            let colon = f.iter().position(|&c| c == b':').unwrap_or(0);
            let v = String::from_utf8_lossy(&f[(colon + 1).min(f.len())..]).into_owned();
            v.replace("\r\n", "").replace('\n', "").trim().to_owned()
        })
        .collect()
}

/// ASCII case-insensitive substring search.
pub(crate) fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    if needle.len() > hay.len() {
        return false;
    }
    let first = needle[0].to_ascii_lowercase();
    hay.windows(needle.len())
        .any(|w| w[0].to_ascii_lowercase() == first && w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_store::MessageMeta;

    const MULTI: &[u8] = b"From: a@b\r\nSubject: t\r\n  continued\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\npre\r\n--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n--XX\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n--XX--\r\n";

    #[test]
    fn sections_of_a_multipart() {
        let meta = MessageMeta::parse(MULTI);
        let root = &meta.root;
        let get = |p: &[u32], k: SectionKind| {
            String::from_utf8(section(MULTI, root, p, &k).unwrap_or_default()).unwrap()
        };
        assert_eq!(get(&[1], SectionKind::Whole), "hello");
        assert_eq!(
            get(&[1], SectionKind::Mime),
            "Content-Type: text/plain\r\n\r\n"
        );
        assert_eq!(get(&[2], SectionKind::Header), "Subject: inner\r\n\r\n");
        assert_eq!(get(&[2], SectionKind::Text), "inner body");
        assert_eq!(get(&[2, 1], SectionKind::Whole), "inner body");
        assert_eq!(
            get(&[], SectionKind::HeaderFields(vec!["subject".into()])),
            "Subject: t\r\n  continued\r\n\r\n"
        );
        assert!(
            get(&[], SectionKind::HeaderFieldsNot(vec!["subject".into()]))
                .starts_with("From: a@b\r\nContent-Type")
        );
        assert!(section(MULTI, root, &[3], &SectionKind::Whole).is_none());
        assert_eq!(
            header_values(MULTI, "subject"),
            vec!["t  continued".to_string()]
        );
    }

    #[test]
    fn single_part() {
        let raw = b"Subject: x\r\n\r\nbody\r\n";
        let meta = MessageMeta::parse(raw);
        let s = section(raw, &meta.root, &[1], &SectionKind::Whole).unwrap();
        assert_eq!(s, b"body\r\n");
        assert_eq!(
            section(raw, &meta.root, &[], &SectionKind::Text).unwrap(),
            b"body\r\n"
        );
        assert!(contains_ci(b"Hello World", b"wORLD"));
    }
}
