//! Conversions between the store's types and imap-types' wire types.

use std::num::{NonZeroU32, NonZeroU64};

use chrono::{DateTime as ChronoDateTime, FixedOffset, Offset};
use imap_codec::imap_types::{
    body::{
        BasicFields, Body, BodyStructure, Disposition, Language, Location, MultiPartExtensionData,
        SinglePartExtensionData, SpecificFields,
    },
    core::{Atom, IString, Literal, NString, Quoted, Vec1},
    datetime::DateTime,
    envelope::{Address as ImapAddress, Envelope as ImapEnvelope},
    extensions::uidplus::{UidElement, UidSet},
    flag::{Flag as ImapFlag, FlagFetch, FlagPerm},
    sequence::{SeqOrUid, Sequence, SequenceSet},
};
use tandem_store::{Address, Envelope, Flag, FlagSet, MimePart};

/// An IMAP string holding `s`: quoted where it can be, a literal otherwise. NUL bytes (which no
/// IMAP string can carry) are dropped.
pub(crate) fn istring(s: &str) -> IString<'static> {
    let clean: String = s.chars().filter(|&c| c != '\0').collect();
    match Quoted::try_from(clean.clone()) {
        Ok(q) if clean.is_ascii() => IString::Quoted(q),
        _ => IString::Literal(Literal::unvalidated(clean.into_bytes())),
    }
}

pub(crate) fn nstring(s: Option<&str>) -> NString<'static> {
    NString(s.map(istring))
}

pub(crate) fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

pub(crate) fn nz64(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n).unwrap_or(NonZeroU64::MIN)
}

/// A store flag as IMAP sends it. Keywords that are not valid atoms (they cannot be set over
/// IMAP, but an embedding application might) are left out.
pub(crate) fn flag_out(f: &Flag) -> Option<ImapFlag<'static>> {
    Some(match f {
        Flag::Seen => ImapFlag::Seen,
        Flag::Answered => ImapFlag::Answered,
        Flag::Flagged => ImapFlag::Flagged,
        Flag::Deleted => ImapFlag::Deleted,
        Flag::Draft => ImapFlag::Draft,
        Flag::Keyword(k) => ImapFlag::Keyword(Atom::try_from(k.clone()).ok()?),
    })
}

pub(crate) fn flags_fetch(fs: &FlagSet) -> Vec<FlagFetch<'static>> {
    fs.iter()
        .filter_map(|f| flag_out(&f))
        .map(FlagFetch::Flag)
        .collect()
}

/// An IMAP flag from a client, as the store knows it. `\Recent` and unknown system flags are
/// refused.
pub(crate) fn flag_in(f: &ImapFlag<'_>) -> Result<Flag, String> {
    Ok(match f {
        ImapFlag::Seen => Flag::Seen,
        ImapFlag::Answered => Flag::Answered,
        ImapFlag::Flagged => Flag::Flagged,
        ImapFlag::Deleted => Flag::Deleted,
        ImapFlag::Draft => Flag::Draft,
        ImapFlag::Keyword(a) => Flag::Keyword(a.inner().to_owned()),
        ImapFlag::Extension(e) => return Err(format!("unsupported system flag {e:?}")),
    })
}

pub(crate) fn system_flags() -> Vec<ImapFlag<'static>> {
    vec![
        ImapFlag::Answered,
        ImapFlag::Flagged,
        ImapFlag::Deleted,
        ImapFlag::Seen,
        ImapFlag::Draft,
    ]
}

pub(crate) fn permanent_flags() -> Vec<FlagPerm<'static>> {
    let mut v: Vec<FlagPerm<'static>> = system_flags().into_iter().map(FlagPerm::Flag).collect();
    v.push(FlagPerm::Asterisk);
    v
}

/// INTERNALDATE (seconds since the epoch) as an IMAP date-time in UTC.
pub(crate) fn date_out(secs: i64) -> DateTime {
    let utc: FixedOffset = chrono::Utc.fix();
    let dt = ChronoDateTime::from_timestamp(secs, 0)
        .or_else(|| ChronoDateTime::from_timestamp(0, 0))
        .map(|d| d.with_timezone(&utc));
    match dt.map(DateTime::try_from) {
        Some(Ok(d)) => d,
        _ => DateTime::unvalidated(ChronoDateTime::<chrono::Utc>::default().with_timezone(&utc)),
    }
}

pub(crate) fn date_in(d: &DateTime) -> i64 {
    d.as_ref().timestamp()
}

fn addresses(list: &[Address]) -> Vec<ImapAddress<'static>> {
    list.iter()
        .map(|a| ImapAddress {
            name: nstring(a.name.as_deref()),
            adl: NString(None),
            mailbox: nstring(a.mailbox.as_deref()),
            host: nstring(a.host.as_deref()),
        })
        .collect()
}

pub(crate) fn envelope(e: &Envelope) -> ImapEnvelope<'static> {
    // RFC 3501: if Sender or Reply-To is absent, the server uses From.
    let sender = if e.sender.is_empty() {
        &e.from
    } else {
        &e.sender
    };
    let reply_to = if e.reply_to.is_empty() {
        &e.from
    } else {
        &e.reply_to
    };
    ImapEnvelope {
        date: nstring(e.date.as_deref()),
        subject: nstring(e.subject.as_deref()),
        from: addresses(&e.from),
        sender: addresses(sender),
        reply_to: addresses(reply_to),
        to: addresses(&e.to),
        cc: addresses(&e.cc),
        bcc: addresses(&e.bcc),
        in_reply_to: nstring(e.in_reply_to.as_deref()),
        message_id: nstring(e.message_id.as_deref()),
    }
}

fn params(p: &[(String, String)]) -> Vec<(IString<'static>, IString<'static>)> {
    p.iter().map(|(k, v)| (istring(k), istring(v))).collect()
}

fn disposition_tail(p: &MimePart) -> Option<Disposition<'static>> {
    Some(Disposition {
        disposition: p
            .disposition
            .as_ref()
            .map(|(t, ps)| (istring(t), params(ps))),
        tail: Some(Language {
            language: p.language.iter().map(|l| istring(l)).collect(),
            tail: Some(Location {
                location: nstring(p.location.as_deref()),
                extensions: Vec::new(),
            }),
        }),
    })
}

/// BODYSTRUCTURE (`ext`: with extension data) or BODY of a MIME part.
pub(crate) fn body_structure(p: &MimePart, ext: bool) -> BodyStructure<'static> {
    if p.ctype == "multipart" && !p.children.is_empty() {
        let bodies: Vec<BodyStructure<'static>> =
            p.children.iter().map(|c| body_structure(c, ext)).collect();
        if let Ok(bodies) = Vec1::try_from(bodies) {
            return BodyStructure::Multi {
                bodies,
                subtype: istring(&p.subtype.to_ascii_uppercase()),
                extension_data: ext.then(|| MultiPartExtensionData {
                    parameter_list: params(&p.params),
                    tail: disposition_tail(p),
                }),
            };
        }
    }
    let size = p.end_offset.saturating_sub(p.body_offset);
    let ctype = if p.ctype.is_empty() { "text" } else { &p.ctype };
    let subtype = if p.subtype.is_empty() {
        "plain"
    } else {
        &p.subtype
    };
    let mut parameter_list = params(&p.params);
    if ctype == "text"
        && !p
            .params
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("charset"))
    {
        parameter_list.push((istring("charset"), istring("us-ascii")));
    }
    let basic = BasicFields {
        parameter_list,
        id: nstring(p.id.as_deref()),
        description: nstring(p.description.as_deref()),
        content_transfer_encoding: istring(
            &p.encoding.as_deref().unwrap_or("7bit").to_ascii_uppercase(),
        ),
        size,
    };
    let specific = match (ctype, subtype, &p.message) {
        ("text", _, _) => SpecificFields::Text {
            subtype: istring(&subtype.to_ascii_uppercase()),
            number_of_lines: p.lines,
        },
        ("message", "rfc822", Some(inner)) => SpecificFields::Message {
            envelope: Box::new(envelope(&inner.0)),
            body_structure: Box::new(body_structure(&inner.1, ext)),
            number_of_lines: p.lines,
        },
        _ => SpecificFields::Basic {
            r#type: istring(&ctype.to_ascii_uppercase()),
            subtype: istring(&subtype.to_ascii_uppercase()),
        },
    };
    BodyStructure::Single {
        body: Body { basic, specific },
        extension_data: ext.then(|| SinglePartExtensionData {
            md5: NString(None),
            tail: disposition_tail(p),
        }),
    }
}

/// A UID set (for COPYUID) from a list of UIDs, in the given order (runs of consecutive UIDs
/// become ranges).
pub(crate) fn uid_set(uids: &[u32]) -> Option<UidSet> {
    let mut out: Vec<UidElement> = Vec::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end.wrapping_add(1) {
            i += 1;
            end = uids[i];
        }
        out.push(if start == end {
            UidElement::Single(nz(start))
        } else {
            UidElement::Range(nz(start), nz(end))
        });
        i += 1;
    }
    Vec1::try_from(out).ok().map(UidSet)
}

/// A sequence set from ascending numbers.
pub(crate) fn sequence_set(nums: &[u32]) -> Option<SequenceSet> {
    let mut out: Vec<Sequence> = Vec::new();
    let mut i = 0;
    while i < nums.len() {
        let start = nums[i];
        let mut end = start;
        while i + 1 < nums.len() && nums[i + 1] == end.wrapping_add(1) {
            i += 1;
            end = nums[i];
        }
        out.push(if start == end {
            Sequence::Single(SeqOrUid::Value(nz(start)))
        } else {
            Sequence::Range(SeqOrUid::Value(nz(start)), SeqOrUid::Value(nz(end)))
        });
        i += 1;
    }
    Vec1::try_from(out).ok().map(SequenceSet)
}

/// The numbers a sequence set names, given the largest number in use (`*`), as sorted ranges
/// (never expanded one by one: `1:4294967295` is a normal thing for a client to send).
pub(crate) fn ranges(set: &SequenceSet, largest: u32) -> Vec<(u32, u32)> {
    let val = |s: &SeqOrUid| match s {
        SeqOrUid::Value(v) => v.get(),
        SeqOrUid::Asterisk => largest,
    };
    let mut out: Vec<(u32, u32)> = set
        .0
        .as_ref()
        .iter()
        .map(|s| match s {
            Sequence::Single(a) => (val(a), val(a)),
            Sequence::Range(a, b) => {
                let (a, b) = (val(a), val(b));
                (a.min(b), a.max(b))
            }
        })
        .collect();
    out.sort_unstable();
    out
}

/// Whether `n` is in the (sorted) ranges.
pub(crate) fn in_ranges(r: &[(u32, u32)], n: u32) -> bool {
    let i = r.partition_point(|&(a, _)| a <= n);
    r[..i].iter().rev().any(|&(a, b)| a <= n && n <= b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets() {
        let s: SequenceSet = "1:3,7,9:*".parse().unwrap();
        let r = ranges(&s, 20);
        assert!(in_ranges(&r, 2) && in_ranges(&r, 7) && in_ranges(&r, 20));
        assert!(!in_ranges(&r, 5) && !in_ranges(&r, 8));
        let u = uid_set(&[1, 2, 3, 5]).unwrap();
        assert_eq!(u.0.as_ref().len(), 2);
        assert_eq!(date_in(&date_out(1_700_000_000)), 1_700_000_000);
    }
}
