//! Immutable message metadata, parsed once at append time with mail-parser and kept in the blob
//! file's header, so that IMAP can answer FETCH ENVELOPE / BODYSTRUCTURE / BODY[section] and most
//! of SEARCH without parsing the message again.

use mail_parser::{Address as MpAddress, HeaderValue, Message, MessageParser, MimeHeaders};

use crate::codec::{CodecError, Reader, Writer};

/// What IMAP needs to know about one message, without its body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageMeta {
    /// Size of the raw message in bytes (RFC822.SIZE).
    pub size: u32,
    /// False when mail-parser could not parse the message; the raw bytes are still stored
    /// unchanged and `root` then describes it as one `text/plain` part.
    pub parsed: bool,
    /// The ENVELOPE fields.
    pub envelope: Envelope,
    /// The MIME structure, with byte offsets into the raw message.
    pub root: MimePart,
}

/// RFC 3501 ENVELOPE fields. Strings are raw header values, unfolded and trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Envelope {
    /// `Date:`
    pub date: Option<String>,
    /// `Subject:`
    pub subject: Option<String>,
    /// `From:`
    pub from: Vec<Address>,
    /// `Sender:`
    pub sender: Vec<Address>,
    /// `Reply-To:`
    pub reply_to: Vec<Address>,
    /// `To:`
    pub to: Vec<Address>,
    /// `Cc:`
    pub cc: Vec<Address>,
    /// `Bcc:`
    pub bcc: Vec<Address>,
    /// `In-Reply-To:`
    pub in_reply_to: Option<String>,
    /// `Message-ID:`
    pub message_id: Option<String>,
}

/// One address of an ENVELOPE address list. Groups are encoded the RFC 3501 way: a start
/// marker with `host: None` and the group name in `mailbox`, and an end marker with both `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Address {
    /// Display name.
    pub name: Option<String>,
    /// Local part (or group name in a group start marker).
    pub mailbox: Option<String>,
    /// Domain.
    pub host: Option<String>,
}

/// One MIME part.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MimePart {
    /// Media type, lower case (`text`).
    pub ctype: String,
    /// Media subtype, lower case (`plain`).
    pub subtype: String,
    /// Content-Type parameters.
    pub params: Vec<(String, String)>,
    /// `Content-ID`
    pub id: Option<String>,
    /// `Content-Description`
    pub description: Option<String>,
    /// `Content-Transfer-Encoding`
    pub encoding: Option<String>,
    /// `Content-Disposition` type and parameters.
    pub disposition: Option<(String, Vec<(String, String)>)>,
    /// `Content-Language`
    pub language: Vec<String>,
    /// `Content-Location`
    pub location: Option<String>,
    /// Offset of the part's header in the raw message.
    pub header_offset: u32,
    /// Offset of the part's body.
    pub body_offset: u32,
    /// Offset one past the part's body.
    pub end_offset: u32,
    /// Lines in the body.
    pub lines: u32,
    /// Sub-parts of a multipart.
    pub children: Vec<MimePart>,
    /// For `message/rfc822`: the enclosed message's envelope and structure.
    pub message: Option<Box<(Envelope, MimePart)>>,
}

impl MessageMeta {
    /// Parses `raw`. Never fails: an unparseable message gets a minimal description.
    pub fn parse(raw: &[u8]) -> MessageMeta {
        let size = u32::try_from(raw.len()).unwrap_or(u32::MAX);
        match MessageParser::default().parse(raw) {
            Some(msg) if !msg.parts.is_empty() => MessageMeta {
                size,
                parsed: true,
                envelope: envelope(&msg),
                root: part(&msg, 0, 0, raw, 0),
            },
            _ => MessageMeta {
                size,
                parsed: false,
                envelope: Envelope::default(),
                root: MimePart {
                    ctype: "text".into(),
                    subtype: "plain".into(),
                    params: vec![("charset".into(), "us-ascii".into())],
                    end_offset: size,
                    lines: count_lines(raw),
                    ..MimePart::default()
                },
            },
        }
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.u32(self.size);
        w.u8(self.parsed as u8);
        encode_envelope(&self.envelope, w);
        encode_part(&self.root, w);
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<MessageMeta, CodecError> {
        Ok(MessageMeta {
            size: r.u32()?,
            parsed: r.u8()? != 0,
            envelope: decode_envelope(r)?,
            root: decode_part(r, 0)?,
        })
    }
}

fn count_lines(b: &[u8]) -> u32 {
    u32::try_from(b.iter().filter(|&&c| c == b'\n').count()).unwrap_or(u32::MAX)
}

fn raw_header(msg: &Message<'_>, name: &str) -> Option<String> {
    let v = msg.header_raw(name)?;
    // Unfolding (RFC 5322 2.2.3) removes the line breaks and keeps the white space after them.
    let unfolded: String = v.chars().filter(|&c| c != '\r' && c != '\n').collect();
    let t = unfolded.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

fn addresses(a: Option<&MpAddress<'_>>) -> Vec<Address> {
    fn one(name: Option<&str>, addr: Option<&str>) -> Address {
        let (mailbox, host) = match addr {
            Some(a) => match a.rsplit_once('@') {
                Some((l, h)) => (Some(l.to_owned()), Some(h.to_owned())),
                None => (Some(a.to_owned()), None),
            },
            None => (None, None),
        };
        Address {
            name: name.map(str::to_owned),
            mailbox,
            // A missing host would read as a group marker; RFC 3501 clients expect a string.
            host: host.or_else(|| Some(String::new())),
        }
    }
    match a {
        None => Vec::new(),
        Some(MpAddress::List(l)) => l
            .iter()
            .map(|x| one(x.name.as_deref(), x.address.as_deref()))
            .collect(),
        Some(MpAddress::Group(groups)) => {
            let mut out = Vec::new();
            for g in groups {
                let named = g.name.is_some();
                if named {
                    out.push(Address {
                        mailbox: g.name.as_deref().map(str::to_owned),
                        ..Address::default()
                    });
                }
                out.extend(
                    g.addresses
                        .iter()
                        .map(|x| one(x.name.as_deref(), x.address.as_deref())),
                );
                if named {
                    out.push(Address::default());
                }
            }
            out
        }
    }
}

fn envelope(msg: &Message<'_>) -> Envelope {
    let from = addresses(msg.from());
    let sender = match addresses(msg.sender()) {
        s if s.is_empty() => from.clone(),
        s => s,
    };
    let reply_to = match addresses(msg.reply_to()) {
        s if s.is_empty() => from.clone(),
        s => s,
    };
    Envelope {
        date: raw_header(msg, "Date"),
        subject: raw_header(msg, "Subject"),
        from,
        sender,
        reply_to,
        to: addresses(msg.to()),
        cc: addresses(msg.cc()),
        bcc: addresses(msg.bcc()),
        in_reply_to: raw_header(msg, "In-Reply-To"),
        message_id: raw_header(msg, "Message-ID"),
    }
}

fn attrs(ct: Option<&[mail_parser::Attribute<'_>]>) -> Vec<(String, String)> {
    ct.unwrap_or_default()
        .iter()
        .map(|a| (a.name.to_ascii_lowercase(), a.value.to_string()))
        .collect()
}

/// Describes part `idx` of `msg`, whose offsets are relative to `base` in the outer raw message.
fn part(msg: &Message<'_>, idx: usize, base: u32, outer: &[u8], depth: u32) -> MimePart {
    let Some(p) = msg.parts.get(idx) else {
        return MimePart::default();
    };
    let (ctype, subtype, params) = match p.content_type() {
        Some(ct) => (
            ct.ctype().to_ascii_lowercase(),
            ct.subtype()
                .map(str::to_ascii_lowercase)
                .unwrap_or_else(|| "plain".into()),
            attrs(ct.attributes()),
        ),
        None if p.is_message() => ("message".into(), "rfc822".into(), Vec::new()),
        None => (
            "text".into(),
            "plain".into(),
            vec![("charset".into(), "us-ascii".into())],
        ),
    };
    let body_offset = base.saturating_add(p.offset_body);
    let end_offset = base.saturating_add(p.offset_end).min(outer.len() as u32);
    let body = outer
        .get(body_offset as usize..end_offset as usize)
        .unwrap_or_default();
    let language = match p.content_language() {
        HeaderValue::Text(t) => vec![t.to_string()],
        HeaderValue::TextList(l) => l.iter().map(|x| x.to_string()).collect(),
        _ => Vec::new(),
    };
    let mut out = MimePart {
        ctype,
        subtype,
        params,
        id: p.content_id().map(|s| format!("<{s}>")),
        description: p.content_description().map(str::to_owned),
        encoding: p.content_transfer_encoding().map(str::to_owned),
        disposition: p
            .content_disposition()
            .map(|d| (d.ctype().to_ascii_lowercase(), attrs(d.attributes()))),
        language,
        location: p.content_location().map(str::to_owned),
        header_offset: base.saturating_add(p.offset_header),
        body_offset,
        end_offset,
        lines: count_lines(body),
        children: Vec::new(),
        message: None,
    };
    // Bound recursion: a hostile message can nest parts arbitrarily deep.
    if depth >= 32 {
        return out;
    }
    if let Some(ids) = p.sub_parts() {
        out.children = ids
            .iter()
            .map(|&i| part(msg, i as usize, base, outer, depth + 1))
            .collect();
    } else if let Some(inner) = p.message() {
        // mail-parser 0.11 gives a nested message's parts offsets into the outer message
        // already (checked by a test below).
        let inner_base = base;
        if !inner.parts.is_empty() {
            out.message = Some(Box::new((
                envelope(inner),
                part(inner, 0, inner_base, outer, depth + 1),
            )));
        }
    }
    out
}

fn encode_addrs(v: &[Address], w: &mut Writer) {
    w.u32(v.len() as u32);
    for a in v {
        w.opt_str(a.name.as_deref());
        w.opt_str(a.mailbox.as_deref());
        w.opt_str(a.host.as_deref());
    }
}

fn decode_addrs(r: &mut Reader<'_>) -> Result<Vec<Address>, CodecError> {
    let n = r.count(3)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(Address {
            name: r.opt_string()?,
            mailbox: r.opt_string()?,
            host: r.opt_string()?,
        });
    }
    Ok(v)
}

fn encode_envelope(e: &Envelope, w: &mut Writer) {
    w.opt_str(e.date.as_deref());
    w.opt_str(e.subject.as_deref());
    for list in [&e.from, &e.sender, &e.reply_to, &e.to, &e.cc, &e.bcc] {
        encode_addrs(list, w);
    }
    w.opt_str(e.in_reply_to.as_deref());
    w.opt_str(e.message_id.as_deref());
}

fn decode_envelope(r: &mut Reader<'_>) -> Result<Envelope, CodecError> {
    Ok(Envelope {
        date: r.opt_string()?,
        subject: r.opt_string()?,
        from: decode_addrs(r)?,
        sender: decode_addrs(r)?,
        reply_to: decode_addrs(r)?,
        to: decode_addrs(r)?,
        cc: decode_addrs(r)?,
        bcc: decode_addrs(r)?,
        in_reply_to: r.opt_string()?,
        message_id: r.opt_string()?,
    })
}

fn encode_params(p: &[(String, String)], w: &mut Writer) {
    w.u32(p.len() as u32);
    for (k, v) in p {
        w.str(k);
        w.str(v);
    }
}

fn decode_params(r: &mut Reader<'_>) -> Result<Vec<(String, String)>, CodecError> {
    let n = r.count(8)?;
    (0..n).map(|_| Ok((r.string()?, r.string()?))).collect()
}

fn encode_part(p: &MimePart, w: &mut Writer) {
    w.str(&p.ctype);
    w.str(&p.subtype);
    encode_params(&p.params, w);
    w.opt_str(p.id.as_deref());
    w.opt_str(p.description.as_deref());
    w.opt_str(p.encoding.as_deref());
    match &p.disposition {
        None => w.u8(0),
        Some((t, params)) => {
            w.u8(1);
            w.str(t);
            encode_params(params, w);
        }
    }
    w.u32(p.language.len() as u32);
    for l in &p.language {
        w.str(l);
    }
    w.opt_str(p.location.as_deref());
    w.u32(p.header_offset);
    w.u32(p.body_offset);
    w.u32(p.end_offset);
    w.u32(p.lines);
    w.u32(p.children.len() as u32);
    for c in &p.children {
        encode_part(c, w);
    }
    match &p.message {
        None => w.u8(0),
        Some(m) => {
            w.u8(1);
            encode_envelope(&m.0, w);
            encode_part(&m.1, w);
        }
    }
}

fn decode_part(r: &mut Reader<'_>, depth: u32) -> Result<MimePart, CodecError> {
    if depth > 64 {
        return Err(CodecError {
            what: "mime part nesting",
            at: 0,
        });
    }
    let ctype = r.string()?;
    let subtype = r.string()?;
    let params = decode_params(r)?;
    let id = r.opt_string()?;
    let description = r.opt_string()?;
    let encoding = r.opt_string()?;
    let disposition = match r.u8()? {
        0 => None,
        _ => Some((r.string()?, decode_params(r)?)),
    };
    let nl = r.count(4)?;
    let language = (0..nl).map(|_| r.string()).collect::<Result<_, _>>()?;
    let location = r.opt_string()?;
    let header_offset = r.u32()?;
    let body_offset = r.u32()?;
    let end_offset = r.u32()?;
    let lines = r.u32()?;
    let nc = r.count(16)?;
    let children = (0..nc)
        .map(|_| decode_part(r, depth + 1))
        .collect::<Result<_, _>>()?;
    let message = match r.u8()? {
        0 => None,
        _ => Some(Box::new((decode_envelope(r)?, decode_part(r, depth + 1)?))),
    };
    Ok(MimePart {
        ctype,
        subtype,
        params,
        id,
        description,
        encoding,
        disposition,
        language,
        location,
        header_offset,
        body_offset,
        end_offset,
        lines,
        children,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIMPLE: &[u8] = b"From: Alice Example <alice@example.org>\r\nTo: bob@example.net, \"Carol\" <carol@example.com>\r\nSubject: Hello\r\n there\r\nDate: Fri, 4 Dec 2026 10:00:00 +0000\r\nMessage-ID: <m1@example.org>\r\n\r\nHi Bob,\r\nsecond line\r\n";

    const NESTED: &[u8] = b"From: a@x.org\r\nSubject: fwd\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nsee attached\r\n--b1\r\nContent-Type: message/rfc822\r\n\r\nFrom: inner@y.org\r\nSubject: inner\r\n\r\ninner body\r\n--b1--\r\n";

    fn round_trip(m: &MessageMeta) -> MessageMeta {
        let mut w = Writer::new();
        m.encode(&mut w);
        let buf = w.finish();
        MessageMeta::decode(&mut Reader::new(&buf, "meta")).unwrap()
    }

    #[test]
    fn envelope_of_a_simple_message() {
        let m = MessageMeta::parse(SIMPLE);
        assert!(m.parsed);
        assert_eq!(m.size as usize, SIMPLE.len());
        assert_eq!(m.envelope.subject.as_deref(), Some("Hello there"));
        assert_eq!(m.envelope.message_id.as_deref(), Some("<m1@example.org>"));
        assert_eq!(m.envelope.from[0].name.as_deref(), Some("Alice Example"));
        assert_eq!(m.envelope.from[0].mailbox.as_deref(), Some("alice"));
        assert_eq!(m.envelope.from[0].host.as_deref(), Some("example.org"));
        assert_eq!(m.envelope.sender, m.envelope.from);
        assert_eq!(m.envelope.to.len(), 2);
        assert_eq!(
            (m.root.ctype.as_str(), m.root.subtype.as_str()),
            ("text", "plain")
        );
        let body = &SIMPLE[m.root.body_offset as usize..m.root.end_offset as usize];
        assert_eq!(body, b"Hi Bob,\r\nsecond line\r\n");
        assert_eq!(m.root.lines, 2);
        assert_eq!(round_trip(&m), m);
    }

    #[test]
    fn nested_message_offsets_point_into_the_outer_message() {
        let m = MessageMeta::parse(NESTED);
        assert_eq!(m.root.ctype, "multipart");
        assert_eq!(m.root.children.len(), 2);
        let text = &m.root.children[0];
        assert_eq!(
            &NESTED[text.body_offset as usize..text.end_offset as usize],
            b"see attached"
        );
        let rfc822 = &m.root.children[1];
        assert_eq!(
            (rfc822.ctype.as_str(), rfc822.subtype.as_str()),
            ("message", "rfc822")
        );
        let (env, inner) = rfc822.message.as_deref().expect("inner message");
        assert_eq!(env.subject.as_deref(), Some("inner"));
        assert_eq!(
            &NESTED[inner.body_offset as usize..inner.end_offset as usize],
            b"inner body"
        );
        assert_eq!(round_trip(&m), m);
    }

    #[test]
    fn garbage_is_described_not_rejected() {
        let raw = b"\xff\xfe\x00 not a message";
        let m = MessageMeta::parse(raw);
        assert_eq!(m.size as usize, raw.len());
        assert_eq!(round_trip(&m), m);
    }

    #[test]
    fn decoding_truncated_meta_fails_cleanly() {
        let mut w = Writer::new();
        MessageMeta::parse(NESTED).encode(&mut w);
        let buf = w.finish();
        for cut in 0..buf.len() {
            assert!(MessageMeta::decode(&mut Reader::new(&buf[..cut], "meta")).is_err());
        }
    }
}
