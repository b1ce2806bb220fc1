//! One IMAP session as a state machine over a [`Store`]: a decoded command in, responses out.
//! No sockets and no clock (time is passed in), so it can be driven by tests directly; the
//! tokio driver in [`crate::server`] does the I/O, authentication and IDLE waiting.

use std::borrow::Cow;
use std::collections::HashMap;

use imap_codec::imap_types::{
    command::{Command, CommandBody, FetchModifier, SelectParameter, StoreModifier},
    core::{AString, Atom, Charset, IString, NString, Tag, Text, Vec1},
    extensions::{binary::LiteralOrLiteral8, enable::CapabilityEnable, namespace::Namespace},
    fetch::{MacroOrMessageDataItemNames, MessageDataItem, MessageDataItemName, Section},
    flag::{FlagNameAttribute, StoreResponse, StoreType},
    mailbox::{ListMailbox, Mailbox},
    response::{Capability, Code, CodeOther, Data, Response, Status, StatusKind},
    search::SearchKey,
    sequence::SequenceSet,
    status::{StatusDataItem, StatusDataItemName},
};
use tandem_store::{
    Error as StoreError, Flag, FlagOp, MailboxId, MessageInfo, MessageMeta, Modseq, Store,
    Timestamp,
};

use crate::convert::{
    body_structure, date_in, date_out, envelope, flag_in, flags_fetch, in_ranges, nz, nz64,
    permanent_flags, ranges, sequence_set, system_flags, uid_set,
};
use crate::message::{SectionKind, section};
use crate::search::{Matcher, SearchError};

/// How many messages one step of a FETCH handles before the driver gets to write them out (and
/// other sessions get the store): keeps the memory of a `FETCH 1:* BODY[]` bounded.
const FETCH_STEP_MESSAGES: usize = 256;
/// ... or this many bytes of message data, whichever comes first.
const FETCH_STEP_BYTES: usize = 8 << 20;

/// What the driver must do after [`Session::handle`].
#[derive(Debug)]
pub enum Action {
    /// Nothing beyond sending the responses.
    None,
    /// Check these credentials (slowly, off the executor), then call
    /// [`Session::login_succeeded`] or [`Session::login_failed`].
    Login {
        /// The command's tag.
        tag: Tag<'static>,
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// Send the responses, then start TLS (the tagged OK is already among them).
    StartTls,
    /// Send the responses, then close the connection.
    Logout,
    /// A FETCH has more to send: write out what is there, then call [`Session::resume`].
    More,
}

/// Per-connection facts the session needs to answer CAPABILITY and LOGIN.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The connection is encrypted.
    pub secure: bool,
    /// STARTTLS can be offered (a certificate is configured and the connection is plain).
    pub starttls: bool,
    /// Plaintext logins are allowed on this connection (loopback, or the admin said so).
    pub plaintext_ok: bool,
}

/// The mailbox a session has selected, as its client knows it.
#[derive(Debug)]
struct Selected {
    id: MailboxId,
    read_only: bool,
    /// Message sequence number - 1 -> UID, as the client was told.
    uids: Vec<u32>,
    /// HIGHESTMODSEQ the client was shown (changes above it are news to it).
    highest_modseq: u64,
    /// Flag changes this session made itself and already reported (UID -> MODSEQ).
    own: HashMap<u32, u64>,
    /// Expunges waiting for a command during which they may be announced.
    expunge_pending: bool,
}

impl Selected {
    fn seq_of(&self, uid: u32) -> Option<u32> {
        self.uids.binary_search(&uid).ok().map(|i| i as u32 + 1)
    }

    fn max_uid(&self) -> u32 {
        self.uids.last().copied().unwrap_or(0)
    }

    /// (seq, uid) pairs a set names.
    fn resolve(&self, set: &SequenceSet, uid: bool) -> Vec<(u32, u32)> {
        if uid {
            let r = ranges(set, self.max_uid());
            self.uids
                .iter()
                .enumerate()
                .filter(|(_, u)| in_ranges(&r, **u))
                .map(|(i, u)| (i as u32 + 1, *u))
                .collect()
        } else {
            let n = self.uids.len() as u32;
            let mut out = Vec::new();
            for (a, b) in ranges(set, n) {
                for s in a.max(1)..=b.min(n) {
                    out.push((s, self.uids[s as usize - 1]));
                }
            }
            out.sort_unstable();
            out.dedup();
            out
        }
    }
}

/// A FETCH in progress.
#[derive(Debug)]
struct FetchJob {
    tag: Tag<'static>,
    targets: Vec<(u32, u32)>,
    pos: usize,
    items: Vec<MessageDataItemName<'static>>,
    sets_seen: bool,
    allow_expunge: bool,
}

/// One IMAP session.
#[derive(Debug)]
pub struct Session {
    conn: ConnInfo,
    account: Option<String>,
    selected: Option<Selected>,
    condstore: bool,
    qresync: bool,
    fetch: Option<FetchJob>,
}

type Out = Vec<Response<'static>>;

fn text(s: impl Into<String>) -> Text<'static> {
    let s: String = s
        .into()
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    let s = if s.is_empty() { "-".to_owned() } else { s };
    Text::try_from(s).unwrap_or_else(|_| Text::unvalidated("-"))
}

fn code(name: &'static str) -> Code<'static> {
    Code::Other(CodeOther::unvalidated(name.as_bytes()))
}

pub(crate) fn status(
    tag: Option<&Tag<'static>>,
    kind: StatusKind,
    code: Option<Code<'static>>,
    msg: impl Into<String>,
) -> Response<'static> {
    let st = match kind {
        StatusKind::Ok => Status::ok(tag.cloned(), code, text(msg)),
        StatusKind::No => Status::no(tag.cloned(), code, text(msg)),
        StatusKind::Bad => Status::bad(tag.cloned(), code, text(msg)),
    };
    Response::Status(st.unwrap_or_else(|_| {
        Status::Untagged(imap_codec::imap_types::response::StatusBody {
            kind,
            code: None,
            text: Text::unvalidated("-"),
        })
    }))
}

/// An untagged BYE.
pub(crate) fn bye(msg: &str) -> Status<'static> {
    Status::bye(None, text(msg)).unwrap_or_else(|_| {
        Status::Bye(imap_codec::imap_types::response::Bye {
            code: None,
            text: Text::unvalidated("bye"),
        })
    })
}

fn ok(tag: &Tag<'static>, msg: impl Into<String>) -> Response<'static> {
    status(Some(tag), StatusKind::Ok, None, msg)
}

fn ok_code(tag: &Tag<'static>, code: Code<'static>, msg: impl Into<String>) -> Response<'static> {
    status(Some(tag), StatusKind::Ok, Some(code), msg)
}

fn no(
    tag: &Tag<'static>,
    code: Option<Code<'static>>,
    msg: impl Into<String>,
) -> Response<'static> {
    status(Some(tag), StatusKind::No, code, msg)
}

fn bad(tag: &Tag<'static>, msg: impl Into<String>) -> Response<'static> {
    status(Some(tag), StatusKind::Bad, None, msg)
}

fn untagged_ok(code: Option<Code<'static>>, msg: impl Into<String>) -> Response<'static> {
    status(None, StatusKind::Ok, code, msg)
}

fn data(d: Data<'static>) -> Response<'static> {
    Response::Data(d)
}

/// The tagged answer to a store error.
fn store_error(tag: &Tag<'static>, e: &StoreError) -> Response<'static> {
    match e {
        StoreError::NoSuchMailbox(_) => no(tag, Some(code("NONEXISTENT")), e.to_string()),
        StoreError::MailboxExists(_) => no(tag, Some(code("ALREADYEXISTS")), e.to_string()),
        StoreError::InvalidMailboxName { .. }
        | StoreError::InboxImmutable(_)
        | StoreError::HasChildren(_)
        | StoreError::Recovered(_) => no(tag, Some(code("CANNOT")), e.to_string()),
        StoreError::MessageTooLarge { .. } => no(tag, Some(Code::TooBig), e.to_string()),
        StoreError::InvalidFlag(_) => bad(tag, e.to_string()),
        StoreError::NoSuchMessage(_) => no(tag, Some(code("NONEXISTENT")), e.to_string()),
        e if e.is_temporary() => {
            tracing::warn!(error = %e, "temporary store failure");
            no(
                tag,
                Some(code("UNAVAILABLE")),
                format!("temporary failure, try again later: {e}"),
            )
        }
        e => {
            tracing::error!(error = %e, "store failure");
            no(tag, Some(code("SERVERBUG")), format!("internal error: {e}"))
        }
    }
}

/// A mailbox name from the client, as the store spells it (INBOX in any case is INBOX).
fn mailbox_name(m: &Mailbox<'_>) -> String {
    match m {
        Mailbox::Inbox => "INBOX".to_owned(),
        Mailbox::Other(o) => {
            let s = String::from_utf8_lossy(o.as_ref()).into_owned();
            if s.eq_ignore_ascii_case("inbox") {
                "INBOX".to_owned()
            } else {
                s
            }
        }
    }
}

fn mailbox_out(name: &str) -> Mailbox<'static> {
    if name.eq_ignore_ascii_case("inbox") {
        return Mailbox::Inbox;
    }
    Mailbox::try_from(name.to_owned()).unwrap_or(Mailbox::Inbox)
}

fn astring(a: &AString<'_>) -> String {
    String::from_utf8_lossy(a.as_ref()).into_owned()
}

fn list_pattern(m: &ListMailbox<'_>) -> String {
    match m {
        ListMailbox::Token(t) => String::from_utf8_lossy(t.as_ref()).into_owned(),
        ListMailbox::String(s) => String::from_utf8_lossy(s.as_ref()).into_owned(),
    }
}

/// LIST wildcard matching: `*` matches anything, `%` anything but the hierarchy delimiter.
fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| wildcard(rest, &name[i..])),
        Some((b'%', rest)) => (0..=name.len())
            .take_while(|&i| i == 0 || name[i - 1] != b'/')
            .any(|i| wildcard(rest, &name[i..])),
        Some((c, rest)) => name
            .split_first()
            .is_some_and(|(n, nr)| n == c && wildcard(rest, nr)),
    }
}

fn list_matches(pattern: &str, name: &str) -> bool {
    // INBOX is case-insensitive, in patterns too.
    let norm = |s: &str| {
        if s.len() >= 5
            && s[..5].eq_ignore_ascii_case("inbox")
            && (s.len() == 5 || s.as_bytes()[5] == b'/')
        {
            format!("INBOX{}", &s[5..])
        } else {
            s.to_owned()
        }
    };
    // Bounded backtracking: patterns are short, names too.
    if pattern.len() > 256 || pattern.bytes().filter(|&c| c == b'*' || c == b'%').count() > 8 {
        return false;
    }
    wildcard(norm(pattern).as_bytes(), norm(name).as_bytes())
}

fn section_parts(s: &Option<Section<'_>>) -> (Vec<u32>, SectionKind) {
    let part = |p: &Option<imap_codec::imap_types::fetch::Part>| {
        p.as_ref()
            .map(|p| p.0.as_ref().iter().map(|n| n.get()).collect())
            .unwrap_or_default()
    };
    let names = |v: &Vec1<AString<'_>>| {
        v.as_ref()
            .iter()
            .map(|a| astring(a).to_ascii_lowercase())
            .collect()
    };
    match s {
        None => (Vec::new(), SectionKind::Whole),
        Some(Section::Part(p)) => (
            p.0.as_ref().iter().map(|n| n.get()).collect(),
            SectionKind::Whole,
        ),
        Some(Section::Header(p)) => (part(p), SectionKind::Header),
        Some(Section::HeaderFields(p, v)) => (part(p), SectionKind::HeaderFields(names(v))),
        Some(Section::HeaderFieldsNot(p, v)) => (part(p), SectionKind::HeaderFieldsNot(names(v))),
        Some(Section::Text(p)) => (part(p), SectionKind::Text),
        Some(Section::Mime(p)) => (
            p.0.as_ref().iter().map(|n| n.get()).collect(),
            SectionKind::Mime,
        ),
    }
}

/// Message data as a literal (bytes unchanged).
/// Message data as a literal. An IMAP4rev1 literal cannot carry NUL, so a NUL byte in a stored
/// message is sent as 0x80, as Dovecot does (the length, and so RFC822.SIZE, stays the same;
/// the stored bytes are not changed). Found by `tests/fuzz.rs`: imap-types refuses (and in
/// debug builds panics on) a literal with NUL.
fn literal(mut b: Vec<u8>) -> NString<'static> {
    // `contains` on bytes is a memchr; the byte-by-byte rewrite runs only when there is a NUL.
    // (Scanning every byte of every body one at a time was a sixth of a `FETCH 1:* BODY[]`.)
    if b.contains(&0) {
        for c in b.iter_mut().filter(|c| **c == 0) {
            *c = 0x80;
        }
    }
    NString(Some(IString::Literal(
        imap_codec::imap_types::core::Literal::unvalidated(b),
    )))
}

fn partial(b: Vec<u8>, p: Option<(u32, std::num::NonZeroU32)>) -> Vec<u8> {
    match p {
        None => b,
        Some((origin, len)) => {
            let a = (origin as usize).min(b.len());
            let e = a.saturating_add(len.get() as usize).min(b.len());
            b[a..e].to_vec()
        }
    }
}

impl Session {
    /// A new, not yet authenticated session.
    pub fn new(conn: ConnInfo) -> Session {
        Session {
            conn,
            account: None,
            selected: None,
            condstore: false,
            qresync: false,
            fetch: None,
        }
    }

    /// The logged-in account.
    pub fn account(&self) -> Option<&str> {
        self.account.as_deref()
    }

    /// Whether a mailbox is selected (IDLE then reports its changes).
    pub fn is_selected(&self) -> bool {
        self.selected.is_some()
    }

    /// The connection became encrypted (after STARTTLS).
    pub fn set_secure(&mut self) {
        self.conn.secure = true;
        self.conn.starttls = false;
    }

    /// Whether LOGIN / AUTHENTICATE may be used on this connection.
    pub fn login_allowed(&self) -> bool {
        self.conn.secure || self.conn.plaintext_ok
    }

    /// The capabilities to advertise now.
    pub fn capabilities(&self) -> Vec1<Capability<'static>> {
        let mut c = vec![Capability::Imap4Rev1];
        if self.account.is_none() {
            if self.conn.starttls {
                c.push(Capability::StartTls);
            }
            if self.login_allowed() {
                c.push(Capability::Auth(
                    imap_codec::imap_types::auth::AuthMechanism::Plain,
                ));
            } else {
                c.push(Capability::LoginDisabled);
            }
        }
        c.extend([
            Capability::SaslIr,
            Capability::LiteralPlus,
            Capability::Id,
            Capability::Enable,
            Capability::Idle,
            Capability::Namespace,
            Capability::Unselect,
            Capability::UidPlus,
            Capability::Move,
            Capability::CondStore,
            Capability::QResync,
        ]);
        for other in ["SPECIAL-USE", "CHILDREN"] {
            if let Ok(a) = Atom::try_from(other) {
                c.push(Capability::from(a));
            }
        }
        Vec1::try_from(c).unwrap_or_else(|_| Vec1::from(Capability::Imap4Rev1))
    }

    /// The LOGIN/AUTHENTICATE that [`Action::Login`] asked about succeeded.
    pub fn login_succeeded(
        &mut self,
        tag: &Tag<'static>,
        user: &str,
        store: &mut Store,
        now: Timestamp,
    ) -> Response<'static> {
        // First login of a user on this node: their account (and its default mailboxes, with
        // fixed ids, so a peer creating the same account converges) comes into being.
        if let Err(e) = store.create_account(user, now) {
            return store_error(tag, &e);
        }
        self.account = Some(user.to_owned());
        ok_code(tag, Code::Capability(self.capabilities()), "logged in")
    }

    /// The LOGIN/AUTHENTICATE failed.
    pub fn login_failed(&self, tag: &Tag<'static>) -> Response<'static> {
        no(
            tag,
            Some(code("AUTHENTICATIONFAILED")),
            "invalid credentials",
        )
    }

    /// Handles one command. Responses are appended to `out`.
    pub fn handle(
        &mut self,
        cmd: Command<'static>,
        store: &mut Store,
        now: Timestamp,
        out: &mut Out,
    ) -> Action {
        let tag = cmd.tag;
        let before = out.len();
        let (action, allow_expunge) = self.dispatch(&tag, cmd.body, store, now, out);
        if matches!(action, Action::More) {
            return action;
        }
        // Changes made by others reach the client before the tagged response.
        if let Some(last) = out.pop() {
            if out.len() >= before {
                self.updates(store, allow_expunge, out);
            }
            out.push(last);
        }
        action
    }

    /// Continues a FETCH after [`Action::More`].
    pub fn resume(&mut self, store: &mut Store, now: Timestamp, out: &mut Out) -> Action {
        let Some(mut job) = self.fetch.take() else {
            return Action::None;
        };
        self.fetch_step(&mut job, store, now, out);
        if job.pos < job.targets.len() {
            self.fetch = Some(job);
            return Action::More;
        }
        self.updates(store, job.allow_expunge, out);
        out.push(ok(&job.tag, "FETCH completed"));
        Action::None
    }

    /// Changes to the selected mailbox that the client has not heard of, as untagged
    /// responses (for IDLE, NOOP and the end of every command). Expunges are held back while
    /// `allow_expunge` is false (during FETCH, STORE, SEARCH by sequence number).
    pub fn updates(&mut self, store: &Store, allow_expunge: bool, out: &mut Out) {
        let (Some(account), Some(sel)) = (self.account.as_deref(), self.selected.as_mut()) else {
            return;
        };
        // After every command: the cheap counters, not a full STATUS (which counts unseen).
        let (exists, highest) = match store.counters(account, &sel.id) {
            Ok(c) => c,
            Err(_) => {
                // Deleted under us (here or on a peer): there is no sane view left.
                out.push(Response::Status(bye("selected mailbox was deleted")));
                self.selected = None;
                return;
            }
        };
        if highest.0 == sel.highest_modseq
            && exists as usize == sel.uids.len()
            && !sel.expunge_pending
        {
            return;
        }
        let current = match store.uids(account, &sel.id) {
            Ok(u) => u,
            Err(_) => return,
        };
        // Expunged: in the client's list, no longer in the store's.
        let gone: Vec<u32> = sel
            .uids
            .iter()
            .copied()
            .filter(|u| current.binary_search(u).is_err())
            .collect();
        if !gone.is_empty() {
            if allow_expunge {
                if self.qresync {
                    if let Some(set) = sequence_set(&gone) {
                        out.push(data(Data::Vanished {
                            earlier: false,
                            known_uids: set,
                        }));
                    }
                } else {
                    // Highest first, so each number is still right when the client applies it.
                    for u in gone.iter().rev() {
                        if let Some(seq) = sel.seq_of(*u)
                            && let Ok(d) = Data::expunge(seq)
                        {
                            out.push(data(d));
                        }
                    }
                }
                sel.uids.retain(|u| gone.binary_search(u).is_err());
                sel.expunge_pending = false;
            } else {
                sel.expunge_pending = true;
            }
        }
        // Flag changes of messages the client knows.
        if let Ok(changed) = store.changed_since(account, &sel.id, Modseq(sel.highest_modseq)) {
            for m in changed {
                if sel.own.get(&m.uid) == Some(&m.modseq.0) {
                    continue;
                }
                if let Some(seq) = sel.seq_of(m.uid) {
                    let mut items = vec![
                        MessageDataItem::Uid(nz(m.uid)),
                        MessageDataItem::Flags(flags_fetch(&m.flags)),
                    ];
                    if self.condstore {
                        items.push(MessageDataItem::ModSeq(nz64(m.modseq.0)));
                    }
                    if let Ok(d) = Data::fetch(seq, items) {
                        out.push(data(d));
                    }
                }
            }
        }
        // New messages: always above every UID the client was shown (the store's I2).
        let last = sel.max_uid();
        let new: Vec<u32> = current.iter().copied().filter(|&u| u > last).collect();
        let skipped = current
            .iter()
            .filter(|&&u| u < last && sel.uids.binary_search(&u).is_err())
            .count();
        if skipped > 0 {
            tracing::warn!(skipped, "messages below the client's UIDNEXT are not shown");
        }
        // EXISTS only announces growth: a removal is told by EXPUNGE/VANISHED alone.
        if !new.is_empty() {
            sel.uids.extend(new);
            out.push(data(Data::Exists(sel.uids.len() as u32)));
        }
        sel.own.clear();
        sel.highest_modseq = highest.0;
    }

    fn need_auth(&self, tag: &Tag<'static>, out: &mut Out) -> Option<String> {
        match &self.account {
            Some(a) => Some(a.clone()),
            None => {
                out.push(bad(tag, "log in first"));
                None
            }
        }
    }

    #[allow(clippy::too_many_lines)]
    fn dispatch(
        &mut self,
        tag: &Tag<'static>,
        body: CommandBody<'static>,
        store: &mut Store,
        now: Timestamp,
        out: &mut Out,
    ) -> (Action, bool) {
        let mut allow_expunge = true;
        let action = match body {
            CommandBody::Capability => {
                out.push(data(Data::Capability(self.capabilities())));
                out.push(ok(tag, "CAPABILITY completed"));
                Action::None
            }
            CommandBody::Noop | CommandBody::Check => {
                out.push(ok(tag, "completed"));
                Action::None
            }
            CommandBody::Logout => {
                out.push(Response::Status(bye("Tandem logging out")));
                out.push(ok(tag, "LOGOUT completed"));
                self.selected = None;
                return (Action::Logout, false);
            }
            CommandBody::Id { .. } => {
                let params = vec![
                    (
                        crate::convert::istring("name"),
                        crate::convert::nstring(Some("Tandem")),
                    ),
                    (
                        crate::convert::istring("version"),
                        crate::convert::nstring(Some(env!("CARGO_PKG_VERSION"))),
                    ),
                ];
                out.push(data(Data::Id {
                    parameters: Some(params),
                }));
                out.push(ok(tag, "ID completed"));
                Action::None
            }
            CommandBody::StartTLS => {
                if self.conn.starttls && self.account.is_none() {
                    out.push(ok(tag, "begin TLS negotiation now"));
                    return (Action::StartTls, false);
                }
                out.push(bad(tag, "STARTTLS is not available here"));
                Action::None
            }
            CommandBody::Login { username, password } => {
                if self.account.is_some() {
                    out.push(bad(tag, "already logged in"));
                } else if !self.login_allowed() {
                    out.push(no(
                        tag,
                        Some(code("PRIVACYREQUIRED")),
                        "plaintext login is disabled: use TLS",
                    ));
                } else {
                    return (
                        Action::Login {
                            tag: tag.clone(),
                            user: astring(&username),
                            password: astring(password.declassify()),
                        },
                        false,
                    );
                }
                Action::None
            }
            CommandBody::Authenticate { .. } => {
                // Handled by the driver (imap-next has a flow for it); reaching here is a bug.
                out.push(bad(tag, "AUTHENTICATE out of sequence"));
                Action::None
            }
            CommandBody::Enable { capabilities } => {
                if self.need_auth(tag, out).is_none() {
                    return (Action::None, false);
                }
                let mut enabled = Vec::new();
                for c in capabilities.as_ref() {
                    match c {
                        CapabilityEnable::CondStore => {
                            self.condstore = true;
                            enabled.push(c.clone());
                        }
                        other if other.to_string().eq_ignore_ascii_case("QRESYNC") => {
                            self.condstore = true;
                            self.qresync = true;
                            enabled.push(other.clone());
                        }
                        _ => {}
                    }
                }
                out.push(data(Data::Enabled {
                    capabilities: enabled,
                }));
                out.push(ok(tag, "ENABLE completed"));
                Action::None
            }
            CommandBody::Namespace => {
                if self.need_auth(tag, out).is_none() {
                    return (Action::None, false);
                }
                let personal = vec![Namespace::new(
                    crate::convert::istring(""),
                    imap_codec::imap_types::core::QuotedChar::try_from('/').ok(),
                )];
                out.push(data(Data::Namespace {
                    personal,
                    other: Vec::new(),
                    shared: Vec::new(),
                }));
                out.push(ok(tag, "NAMESPACE completed"));
                Action::None
            }
            CommandBody::Select {
                mailbox,
                parameters,
            } => {
                self.select(tag, &mailbox, parameters, false, store, out);
                Action::None
            }
            CommandBody::Examine {
                mailbox,
                parameters,
            } => {
                self.select(tag, &mailbox, parameters, true, store, out);
                Action::None
            }
            CommandBody::Create { mailbox } => {
                if let Some(account) = self.need_auth(tag, out) {
                    let name = mailbox_name(&mailbox);
                    let name = name.trim_end_matches('/');
                    match store.create_mailbox(&account, name, now) {
                        Ok(_) => out.push(ok(tag, "CREATE completed")),
                        Err(e) => out.push(store_error(tag, &e)),
                    }
                }
                Action::None
            }
            CommandBody::Delete { mailbox } => {
                if let Some(account) = self.need_auth(tag, out) {
                    let name = mailbox_name(&mailbox);
                    if self.selected.as_ref().is_some_and(|s| {
                        store.mailbox_id(&account, &name).ok().as_ref() == Some(&s.id)
                    }) {
                        self.selected = None;
                    }
                    match store.delete_mailbox(&account, &name, now) {
                        Ok(()) => out.push(ok(tag, "DELETE completed")),
                        Err(e) => out.push(store_error(tag, &e)),
                    }
                }
                Action::None
            }
            CommandBody::Rename { from, to } => {
                if let Some(account) = self.need_auth(tag, out) {
                    match store.rename_mailbox(
                        &account,
                        &mailbox_name(&from),
                        &mailbox_name(&to),
                        now,
                    ) {
                        Ok(()) => out.push(ok(tag, "RENAME completed")),
                        Err(e) => out.push(store_error(tag, &e)),
                    }
                }
                Action::None
            }
            CommandBody::Subscribe { mailbox } => {
                self.subscribe(tag, &mailbox, true, store, now, out);
                Action::None
            }
            CommandBody::Unsubscribe { mailbox } => {
                self.subscribe(tag, &mailbox, false, store, now, out);
                Action::None
            }
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => {
                self.list(tag, &reference, &mailbox_wildcard, false, store, out);
                Action::None
            }
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => {
                self.list(tag, &reference, &mailbox_wildcard, true, store, out);
                Action::None
            }
            CommandBody::Status {
                mailbox,
                item_names,
            } => {
                self.status(tag, &mailbox, &item_names, store, out);
                Action::None
            }
            CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            } => {
                let Some(account) = self.need_auth(tag, out) else {
                    return (Action::None, false);
                };
                let raw: &[u8] = match &message {
                    LiteralOrLiteral8::Literal(l) => l.data(),
                    LiteralOrLiteral8::Literal8(l) => &l.data,
                };
                let flags: Result<Vec<Flag>, String> = flags.iter().map(flag_in).collect();
                let flags = match flags {
                    Ok(f) => f,
                    Err(e) => {
                        out.push(bad(tag, e));
                        return (Action::None, false);
                    }
                };
                let name = mailbox_name(&mailbox);
                let id = match store.mailbox_id(&account, &name) {
                    Ok(id) => id,
                    Err(_) => {
                        out.push(no(tag, Some(Code::TryCreate), "no such mailbox"));
                        return (Action::None, false);
                    }
                };
                let date = date.as_ref().map_or(now.as_secs(), date_in);
                match store.append(&account, &id, raw, &flags, date, now) {
                    Ok(a) => out.push(ok_code(
                        tag,
                        Code::AppendUid {
                            uid_validity: nz(a.uidvalidity),
                            uid: nz(a.uid),
                        },
                        "APPEND completed",
                    )),
                    Err(e) => out.push(store_error(tag, &e)),
                }
                Action::None
            }
            CommandBody::Idle => {
                out.push(bad(tag, "IDLE out of sequence"));
                Action::None
            }
            // ----- selected state ----------------------------------------------------------
            body => {
                if self.account.is_none() {
                    out.push(bad(tag, "log in first"));
                    return (Action::None, false);
                }
                if self.selected.is_none() {
                    out.push(bad(tag, "no mailbox selected"));
                    return (Action::None, false);
                }
                match body {
                    CommandBody::Close | CommandBody::Unselect => {
                        let close = matches!(body, CommandBody::Close);
                        if let (true, Some(sel), Some(account)) =
                            (close, self.selected.as_ref(), self.account.as_deref())
                            && !sel.read_only
                        {
                            let deleted = deleted_uids(store, account, &sel.id, None);
                            if !deleted.is_empty()
                                && let Err(e) = store.expunge(account, &sel.id, &deleted, now)
                            {
                                out.push(store_error(tag, &e));
                                return (Action::None, false);
                            }
                        }
                        self.selected = None;
                        out.push(ok(tag, "completed"));
                        return (Action::None, false);
                    }
                    CommandBody::Expunge => {
                        self.expunge(tag, None, store, now, out);
                        Action::None
                    }
                    CommandBody::ExpungeUid { sequence_set } => {
                        self.expunge(tag, Some(&sequence_set), store, now, out);
                        Action::None
                    }
                    CommandBody::Search {
                        charset,
                        criteria,
                        uid,
                    } => {
                        allow_expunge = uid;
                        self.search(tag, charset.as_ref(), &criteria, uid, store, out);
                        Action::None
                    }
                    CommandBody::Fetch {
                        sequence_set,
                        macro_or_item_names,
                        uid,
                        modifiers,
                    } => {
                        allow_expunge = uid;
                        if self.start_fetch(
                            tag,
                            &sequence_set,
                            macro_or_item_names,
                            uid,
                            &modifiers,
                            store,
                            out,
                        ) {
                            return (self.resume(store, now, out), allow_expunge);
                        }
                        Action::None
                    }
                    CommandBody::Store {
                        sequence_set,
                        kind,
                        response,
                        flags,
                        uid,
                        modifiers,
                    } => {
                        allow_expunge = uid;
                        self.store(
                            tag,
                            &sequence_set,
                            &kind,
                            &response,
                            &flags,
                            uid,
                            &modifiers,
                            store,
                            now,
                            out,
                        );
                        Action::None
                    }
                    CommandBody::Copy {
                        sequence_set,
                        mailbox,
                        uid,
                    } => {
                        allow_expunge = uid;
                        self.copy_move(tag, &sequence_set, &mailbox, uid, false, store, now, out);
                        Action::None
                    }
                    CommandBody::Move {
                        sequence_set,
                        mailbox,
                        uid,
                    } => {
                        self.copy_move(tag, &sequence_set, &mailbox, uid, true, store, now, out);
                        Action::None
                    }
                    other => {
                        out.push(bad(tag, format!("{} is not supported", other.name())));
                        Action::None
                    }
                }
            }
        };
        (action, allow_expunge)
    }

    fn subscribe(
        &mut self,
        tag: &Tag<'static>,
        mailbox: &Mailbox<'_>,
        on: bool,
        store: &mut Store,
        now: Timestamp,
        out: &mut Out,
    ) {
        let Some(account) = self.need_auth(tag, out) else {
            return;
        };
        match store.set_subscribed(&account, &mailbox_name(mailbox), on, now) {
            Ok(()) => out.push(ok(tag, "completed")),
            Err(e) => out.push(store_error(tag, &e)),
        }
    }

    fn select(
        &mut self,
        tag: &Tag<'static>,
        mailbox: &Mailbox<'_>,
        params: Vec<SelectParameter>,
        read_only: bool,
        store: &mut Store,
        out: &mut Out,
    ) {
        let Some(account) = self.need_auth(tag, out) else {
            return;
        };
        if self.selected.take().is_some() && self.qresync {
            out.push(untagged_ok(Some(Code::Closed), "previous mailbox closed"));
        }
        let name = mailbox_name(mailbox);
        let id = match store.mailbox_id(&account, &name) {
            Ok(id) => id,
            Err(e) => {
                out.push(store_error(tag, &e));
                return;
            }
        };
        let (st, uids) = match (store.status(&account, &id), store.uids(&account, &id)) {
            (Ok(s), Ok(u)) => (s, u),
            (Err(e), _) | (_, Err(e)) => {
                out.push(store_error(tag, &e));
                return;
            }
        };
        let mut qresync = None;
        for p in params {
            match p {
                SelectParameter::CondStore => self.condstore = true,
                SelectParameter::QResync {
                    uid_validity,
                    mod_sequence_value,
                    known_uids,
                    ..
                } => {
                    if !self.qresync {
                        out.push(bad(tag, "QRESYNC must be enabled first"));
                        return;
                    }
                    qresync = Some((uid_validity.get(), mod_sequence_value.get(), known_uids));
                }
            }
        }
        out.push(data(Data::Flags(system_flags())));
        out.push(data(Data::Exists(st.exists)));
        out.push(data(Data::Recent(0)));
        if let Ok(msgs) = store.messages(&account, &id)
            && let Some(i) = msgs.iter().position(|m| !m.flags.contains(&Flag::Seen))
        {
            out.push(untagged_ok(
                Some(Code::Unseen(nz(i as u32 + 1))),
                "first unseen",
            ));
        }
        out.push(untagged_ok(
            Some(Code::PermanentFlags(if read_only {
                Vec::new()
            } else {
                permanent_flags()
            })),
            "flags permitted",
        ));
        out.push(untagged_ok(
            Some(Code::UidValidity(nz(st.uidvalidity))),
            "UIDs valid",
        ));
        out.push(untagged_ok(
            Some(Code::UidNext(nz(st.uidnext))),
            "predicted next UID",
        ));
        out.push(untagged_ok(
            Some(Code::HighestModSeq(nz64(st.highest_modseq.0))),
            "highest",
        ));
        let sel = Selected {
            id: id.clone(),
            read_only,
            uids,
            highest_modseq: st.highest_modseq.0,
            own: HashMap::new(),
            expunge_pending: false,
        };
        if let Some((uv, since, known)) = qresync
            && uv == st.uidvalidity
        {
            if let Ok(mut vanished) = store.vanished_since(&account, &id, Modseq(since)) {
                if let Some(k) = &known {
                    let r = ranges(k, u32::MAX);
                    vanished.retain(|u| in_ranges(&r, *u));
                }
                if let Some(set) = sequence_set(&vanished) {
                    out.push(data(Data::Vanished {
                        earlier: true,
                        known_uids: set,
                    }));
                }
            }
            if let Ok(changed) = store.changed_since(&account, &id, Modseq(since)) {
                for m in changed {
                    if let Some(seq) = sel.seq_of(m.uid)
                        && let Ok(d) = Data::fetch(
                            seq,
                            vec![
                                MessageDataItem::Uid(nz(m.uid)),
                                MessageDataItem::Flags(flags_fetch(&m.flags)),
                                MessageDataItem::ModSeq(nz64(m.modseq.0)),
                            ],
                        )
                    {
                        out.push(data(d));
                    }
                }
            }
        }
        self.selected = Some(sel);
        out.push(ok_code(
            tag,
            if read_only {
                Code::ReadOnly
            } else {
                Code::ReadWrite
            },
            if read_only {
                "EXAMINE completed"
            } else {
                "SELECT completed"
            },
        ));
    }

    fn list(
        &mut self,
        tag: &Tag<'static>,
        reference: &Mailbox<'_>,
        pattern: &ListMailbox<'_>,
        lsub: bool,
        store: &Store,
        out: &mut Out,
    ) {
        let Some(account) = self.need_auth(tag, out) else {
            return;
        };
        let reference = match reference {
            Mailbox::Inbox => "INBOX".to_owned(),
            Mailbox::Other(o) => String::from_utf8_lossy(o.as_ref()).into_owned(),
        };
        let pattern = list_pattern(pattern);
        let delim = imap_codec::imap_types::core::QuotedChar::try_from('/').ok();
        if pattern.is_empty() && !lsub {
            // The hierarchy delimiter and root.
            let root = Mailbox::try_from(String::new()).unwrap_or(Mailbox::Inbox);
            out.push(data(Data::List {
                items: vec![FlagNameAttribute::Noselect],
                delimiter: delim,
                mailbox: root,
            }));
            out.push(ok(tag, "LIST completed"));
            return;
        }
        let full = if reference.is_empty() || pattern.starts_with('/') {
            pattern
        } else if reference.ends_with('/') {
            format!("{reference}{pattern}")
        } else {
            format!("{reference}/{pattern}")
        };
        let mailboxes = match store.list_mailboxes(&account) {
            Ok(m) => m,
            Err(e) => {
                out.push(store_error(tag, &e));
                return;
            }
        };
        let attr = |s: &str| -> Option<FlagNameAttribute<'static>> {
            Some(FlagNameAttribute::from(
                Atom::try_from(s.trim_start_matches('\\').to_owned()).ok()?,
            ))
        };
        if lsub {
            let subs = store.subscriptions(&account).unwrap_or_default();
            for name in subs {
                if !list_matches(&full, &name) {
                    continue;
                }
                let exists = mailboxes.iter().any(|m| m.name.as_str() == name);
                let mut items = Vec::new();
                if !exists {
                    items.push(FlagNameAttribute::Noselect);
                }
                out.push(data(Data::Lsub {
                    items,
                    delimiter: delim,
                    mailbox: mailbox_out(&name),
                }));
            }
            out.push(ok(tag, "LSUB completed"));
            return;
        }
        for m in &mailboxes {
            if !list_matches(&full, m.name.as_str()) {
                continue;
            }
            let mut items = Vec::new();
            items.extend(attr(if m.has_children {
                "HasChildren"
            } else {
                "HasNoChildren"
            }));
            if let Some(role) = m.role {
                items.extend(attr(role.as_str()));
            }
            out.push(data(Data::List {
                items,
                delimiter: delim,
                mailbox: mailbox_out(m.name.as_str()),
            }));
        }
        out.push(ok(tag, "LIST completed"));
    }

    fn status(
        &mut self,
        tag: &Tag<'static>,
        mailbox: &Mailbox<'_>,
        names: &[StatusDataItemName],
        store: &Store,
        out: &mut Out,
    ) {
        let Some(account) = self.need_auth(tag, out) else {
            return;
        };
        let name = mailbox_name(mailbox);
        let st = match store
            .mailbox_id(&account, &name)
            .and_then(|id| store.status(&account, &id))
        {
            Ok(s) => s,
            Err(e) => {
                out.push(store_error(tag, &e));
                return;
            }
        };
        let mut items = Vec::new();
        for n in names {
            items.push(match n {
                StatusDataItemName::Messages => StatusDataItem::Messages(st.exists),
                StatusDataItemName::Recent => StatusDataItem::Recent(0),
                StatusDataItemName::UidNext => StatusDataItem::UidNext(nz(st.uidnext)),
                StatusDataItemName::UidValidity => StatusDataItem::UidValidity(nz(st.uidvalidity)),
                StatusDataItemName::Unseen => StatusDataItem::Unseen(st.unseen),
                StatusDataItemName::HighestModSeq => {
                    self.condstore = true;
                    StatusDataItem::HighestModSeq(st.highest_modseq.0)
                }
                StatusDataItemName::Deleted => {
                    let n = store
                        .messages(&account, &st.id)
                        .map(|m| {
                            m.iter()
                                .filter(|m| m.flags.contains(&Flag::Deleted))
                                .count()
                        })
                        .unwrap_or(0);
                    StatusDataItem::Deleted(n as u32)
                }
                StatusDataItemName::DeletedStorage => {
                    let n: u64 = store
                        .messages(&account, &st.id)
                        .map(|m| {
                            m.iter()
                                .filter(|m| m.flags.contains(&Flag::Deleted))
                                .map(|m| u64::from(m.size))
                                .sum()
                        })
                        .unwrap_or(0);
                    StatusDataItem::DeletedStorage(n)
                }
            });
        }
        out.push(data(Data::Status {
            mailbox: mailbox_out(&st.name),
            items: Cow::Owned(items),
        }));
        out.push(ok(tag, "STATUS completed"));
    }

    fn expunge(
        &mut self,
        tag: &Tag<'static>,
        set: Option<&SequenceSet>,
        store: &mut Store,
        now: Timestamp,
        out: &mut Out,
    ) {
        let (Some(account), Some(sel)) = (self.account.as_deref(), self.selected.as_ref()) else {
            return;
        };
        if sel.read_only {
            out.push(no(tag, Some(Code::ReadOnly), "mailbox is read-only"));
            return;
        }
        let limit = set.map(|s| ranges(s, sel.max_uid()));
        let uids = deleted_uids(store, account, &sel.id, limit.as_deref());
        if let Err(e) = store.expunge(account, &sel.id, &uids, now) {
            out.push(store_error(tag, &e));
            return;
        }
        out.push(ok(tag, "EXPUNGE completed"));
    }

    #[allow(clippy::too_many_arguments)]
    fn search(
        &mut self,
        tag: &Tag<'static>,
        charset: Option<&Charset<'_>>,
        criteria: &Vec1<SearchKey<'_>>,
        uid: bool,
        store: &Store,
        out: &mut Out,
    ) {
        if let Some(cs) = charset {
            let cs = match cs {
                Charset::Atom(a) => a.inner().to_owned(),
                Charset::Quoted(q) => q.inner().to_owned(),
            };
            if !cs.eq_ignore_ascii_case("us-ascii") && !cs.eq_ignore_ascii_case("utf-8") {
                out.push(no(
                    tag,
                    Some(Code::BadCharset {
                        allowed: vec![
                            Charset::try_from("US-ASCII")
                                .unwrap_or_else(|_| Charset::from(Atom::unvalidated("US-ASCII"))),
                            Charset::try_from("UTF-8")
                                .unwrap_or_else(|_| Charset::from(Atom::unvalidated("UTF-8"))),
                        ],
                    }),
                    "unsupported charset",
                ));
                return;
            }
        }
        let (Some(account), Some(sel)) = (self.account.as_deref(), self.selected.as_ref()) else {
            return;
        };
        let msgs = match store.messages(account, &sel.id) {
            Ok(m) => m,
            Err(e) => {
                out.push(store_error(tag, &e));
                return;
            }
        };
        let by_uid: HashMap<u32, &MessageInfo> = msgs.iter().map(|m| (m.uid, m)).collect();
        let matcher = Matcher::new(criteria.as_ref(), sel.uids.len() as u32, sel.max_uid());
        let mut hits = Vec::new();
        let mut max_modseq = 0u64;
        for (i, u) in sel.uids.iter().enumerate() {
            let Some(m) = by_uid.get(u) else { continue };
            match matcher.matches(store, i as u32 + 1, m) {
                Ok(true) => {
                    hits.push(nz(if uid { *u } else { i as u32 + 1 }));
                    max_modseq = max_modseq.max(m.modseq.0);
                }
                Ok(false) => {}
                Err(SearchError::Store(e)) => {
                    out.push(store_error(tag, &e));
                    return;
                }
            }
        }
        let modseq = if matcher.uses_modseq() {
            self.condstore = true;
            (!hits.is_empty()).then(|| nz64(max_modseq))
        } else {
            None
        };
        out.push(data(Data::Search(hits, modseq)));
        out.push(ok(tag, "SEARCH completed"));
    }

    #[allow(clippy::too_many_arguments)]
    fn start_fetch(
        &mut self,
        tag: &Tag<'static>,
        set: &SequenceSet,
        names: MacroOrMessageDataItemNames<'static>,
        uid: bool,
        modifiers: &[FetchModifier],
        store: &Store,
        out: &mut Out,
    ) -> bool {
        let (Some(account), Some(sel)) = (self.account.as_deref(), self.selected.as_ref()) else {
            return false;
        };
        let mut items: Vec<MessageDataItemName<'static>> = match names {
            MacroOrMessageDataItemNames::Macro(m) => m
                .expand()
                .into_iter()
                .map(imap_codec::imap_types::IntoStatic::into_static)
                .collect(),
            MacroOrMessageDataItemNames::MessageDataItemNames(v) => v,
        };
        for i in &items {
            if matches!(
                i,
                MessageDataItemName::Binary { .. } | MessageDataItemName::BinarySize { .. }
            ) {
                out.push(bad(tag, "BINARY is not supported"));
                return false;
            }
        }
        let mut changed_since = None;
        let mut vanished = false;
        for m in modifiers {
            match m {
                FetchModifier::ChangedSince(s) => changed_since = Some(s.get()),
                FetchModifier::Vanished => vanished = true,
            }
        }
        if vanished && (!uid || !self.qresync || changed_since.is_none()) {
            out.push(bad(
                tag,
                "VANISHED needs UID FETCH, QRESYNC enabled and CHANGEDSINCE",
            ));
            return false;
        }
        if uid && !items.contains(&MessageDataItemName::Uid) {
            items.insert(0, MessageDataItemName::Uid);
        }
        if changed_since.is_some() && !items.contains(&MessageDataItemName::ModSeq) {
            items.push(MessageDataItemName::ModSeq);
        }
        if items.contains(&MessageDataItemName::ModSeq) {
            self.condstore = true;
        }
        let mut targets = sel.resolve(set, uid);
        if let Some(since) = changed_since {
            let changed: std::collections::HashSet<u32> = store
                .changed_since(account, &sel.id, Modseq(since))
                .map(|v| v.into_iter().map(|m| m.uid).collect())
                .unwrap_or_default();
            targets.retain(|(_, u)| changed.contains(u));
            if vanished {
                let r = ranges(set, sel.max_uid());
                if let Ok(mut v) = store.vanished_since(account, &sel.id, Modseq(since)) {
                    v.retain(|u| in_ranges(&r, *u));
                    if let Some(s) = sequence_set(&v) {
                        out.push(data(Data::Vanished {
                            earlier: true,
                            known_uids: s,
                        }));
                    }
                }
            }
        }
        let sets_seen = !sel.read_only
            && items.iter().any(|i| {
                matches!(
                    i,
                    MessageDataItemName::BodyExt { peek: false, .. }
                        | MessageDataItemName::Rfc822
                        | MessageDataItemName::Rfc822Text
                )
            });
        self.fetch = Some(FetchJob {
            tag: tag.clone(),
            targets,
            pos: 0,
            items,
            sets_seen,
            allow_expunge: uid,
        });
        true
    }

    fn fetch_step(&mut self, job: &mut FetchJob, store: &mut Store, now: Timestamp, out: &mut Out) {
        let (Some(account), Some(sel)) = (self.account.clone(), self.selected.as_mut()) else {
            job.pos = job.targets.len();
            return;
        };
        let end = (job.pos + FETCH_STEP_MESSAGES).min(job.targets.len());
        let batch: Vec<(u32, u32)> = job.targets[job.pos..end].to_vec();
        // Implicit \Seen first, so the FLAGS we send are the new ones.
        let mut seen_set = std::collections::HashSet::new();
        if job.sets_seen {
            let unseen: Vec<u32> = batch
                .iter()
                .filter(|(_, u)| {
                    store
                        .message(&account, &sel.id, *u)
                        .is_ok_and(|m| !m.flags.contains(&Flag::Seen))
                })
                .map(|(_, u)| *u)
                .collect();
            if !unseen.is_empty()
                && let Ok(o) = store.store_flags(
                    &account,
                    &sel.id,
                    &unseen,
                    FlagOp::Add,
                    &[Flag::Seen],
                    None,
                    now,
                )
            {
                for m in o.updated {
                    sel.own.insert(m.uid, m.modseq.0);
                    seen_set.insert(m.uid);
                }
            }
        }
        let mut bytes = 0usize;
        let raw_uses = job
            .items
            .iter()
            .filter(|i| {
                matches!(
                    i,
                    MessageDataItemName::BodyExt { .. }
                        | MessageDataItemName::Rfc822
                        | MessageDataItemName::Rfc822Header
                        | MessageDataItemName::Rfc822Text
                )
            })
            .count();
        for (seq, uid) in batch {
            job.pos += 1;
            let Ok(info) = store.message(&account, &sel.id, uid) else {
                continue; // expunged meanwhile: nothing to say about it
            };
            let mut meta: Option<std::sync::Arc<MessageMeta>> = None;
            let mut raw: Option<Vec<u8>> = None;
            let mut items = Vec::with_capacity(job.items.len() + 1);
            let mut failed = false;
            for name in &job.items {
                let item = match name {
                    MessageDataItemName::Uid => MessageDataItem::Uid(nz(uid)),
                    MessageDataItemName::Flags => MessageDataItem::Flags(flags_fetch(&info.flags)),
                    MessageDataItemName::InternalDate => {
                        MessageDataItem::InternalDate(date_out(info.internal_date))
                    }
                    MessageDataItemName::Rfc822Size => MessageDataItem::Rfc822Size(info.size),
                    MessageDataItemName::ModSeq => MessageDataItem::ModSeq(nz64(info.modseq.0)),
                    MessageDataItemName::Envelope
                    | MessageDataItemName::Body
                    | MessageDataItemName::BodyStructure => {
                        if meta.is_none() {
                            match store.message_meta(&info.blob) {
                                Ok(m) => meta = Some(m),
                                Err(e) => {
                                    tracing::error!(error = %e, uid, "cannot read message metadata");
                                    failed = true;
                                    break;
                                }
                            }
                        }
                        let Some(m) = &meta else { break };
                        match name {
                            MessageDataItemName::Envelope => {
                                MessageDataItem::Envelope(envelope(&m.envelope))
                            }
                            MessageDataItemName::Body => {
                                MessageDataItem::Body(body_structure(&m.root, false))
                            }
                            _ => MessageDataItem::BodyStructure(body_structure(&m.root, true)),
                        }
                    }
                    MessageDataItemName::BodyExt { .. }
                    | MessageDataItemName::Rfc822
                    | MessageDataItemName::Rfc822Header
                    | MessageDataItemName::Rfc822Text => {
                        if raw.is_none() {
                            match store.message_bytes(&info.blob) {
                                Ok(r) => raw = Some(r),
                                Err(e) => {
                                    tracing::error!(error = %e, uid, "cannot read message body");
                                    failed = true;
                                    break;
                                }
                            }
                        }
                        // The whole message, asked for once (the usual BODY.PEEK[]): hand
                        // over the buffer instead of copying it.
                        let whole = matches!(
                            name,
                            MessageDataItemName::BodyExt {
                                section: None,
                                partial: None,
                                ..
                            } | MessageDataItemName::Rfc822
                        );
                        if whole && raw_uses == 1 {
                            let b = raw.take().unwrap_or_default();
                            bytes += b.len();
                            items.push(match name {
                                MessageDataItemName::Rfc822 => MessageDataItem::Rfc822(literal(b)),
                                _ => MessageDataItem::BodyExt {
                                    section: None,
                                    origin: None,
                                    data: literal(b),
                                },
                            });
                            continue;
                        }
                        let Some(r) = &raw else { break };
                        let need_meta = !matches!(name, MessageDataItemName::Rfc822)
                            && !matches!(name, MessageDataItemName::BodyExt { section: None, .. });
                        if need_meta && meta.is_none() {
                            meta =
                                Some(store.message_meta(&info.blob).unwrap_or_else(|_| {
                                    std::sync::Arc::new(MessageMeta::parse(r))
                                }));
                        }
                        let root = meta.as_ref().map(|m| &m.root);
                        let get = |path: &[u32], kind: SectionKind| -> Vec<u8> {
                            match root {
                                Some(root) => section(r, root, path, &kind).unwrap_or_default(),
                                None => r.clone(),
                            }
                        };
                        match name {
                            MessageDataItemName::Rfc822 => {
                                MessageDataItem::Rfc822(literal(r.clone()))
                            }
                            MessageDataItemName::Rfc822Header => MessageDataItem::Rfc822Header(
                                literal(get(&[], SectionKind::Header)),
                            ),
                            MessageDataItemName::Rfc822Text => {
                                MessageDataItem::Rfc822Text(literal(get(&[], SectionKind::Text)))
                            }
                            MessageDataItemName::BodyExt {
                                section: s,
                                partial: p,
                                ..
                            } => {
                                let (path, kind) = section_parts(s);
                                let b = partial(get(&path, kind), *p);
                                bytes += b.len();
                                MessageDataItem::BodyExt {
                                    section: s.clone(),
                                    origin: p.map(|p| p.0),
                                    data: literal(b),
                                }
                            }
                            _ => continue,
                        }
                    }
                    MessageDataItemName::Binary { .. } | MessageDataItemName::BinarySize { .. } => {
                        continue;
                    }
                };
                items.push(item);
            }
            if failed {
                continue;
            }
            if seen_set.contains(&uid) && !job.items.contains(&MessageDataItemName::Flags) {
                let mut f = info.flags.clone();
                f.insert(&Flag::Seen);
                items.push(MessageDataItem::Flags(flags_fetch(&f)));
            }
            if let Some(r) = &raw {
                bytes += r.len() / 4;
            }
            if let Ok(d) = Data::fetch(seq, items) {
                out.push(data(d));
            }
            if bytes >= FETCH_STEP_BYTES {
                break;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn store(
        &mut self,
        tag: &Tag<'static>,
        set: &SequenceSet,
        kind: &StoreType,
        response: &StoreResponse,
        flags: &[imap_codec::imap_types::flag::Flag<'_>],
        uid: bool,
        modifiers: &[StoreModifier],
        store: &mut Store,
        now: Timestamp,
        out: &mut Out,
    ) {
        let (Some(account), Some(sel)) = (self.account.clone(), self.selected.as_mut()) else {
            return;
        };
        if sel.read_only {
            out.push(no(tag, Some(Code::ReadOnly), "mailbox is read-only"));
            return;
        }
        let flags: Result<Vec<Flag>, String> = flags.iter().map(flag_in).collect();
        let flags = match flags {
            Ok(f) => f,
            Err(e) => {
                out.push(bad(tag, e));
                return;
            }
        };
        let mut unchanged_since = None;
        for m in modifiers {
            let StoreModifier::UnchangedSince(s) = m;
            unchanged_since = Some(Modseq(*s));
            self.condstore = true;
        }
        let op = match kind {
            StoreType::Add => FlagOp::Add,
            StoreType::Remove => FlagOp::Remove,
            StoreType::Replace => FlagOp::Replace,
        };
        let targets = sel.resolve(set, uid);
        let uids: Vec<u32> = targets.iter().map(|(_, u)| *u).collect();
        let res =
            match store.store_flags(&account, &sel.id, &uids, op, &flags, unchanged_since, now) {
                Ok(r) => r,
                Err(e) => {
                    out.push(store_error(tag, &e));
                    return;
                }
            };
        let updated: HashMap<u32, &MessageInfo> = res.updated.iter().map(|m| (m.uid, m)).collect();
        for m in &res.updated {
            sel.own.insert(m.uid, m.modseq.0);
        }
        let silent = matches!(response, StoreResponse::Silent);
        for (seq, u) in &targets {
            if res.modified.contains(u) {
                continue;
            }
            let info = match updated.get(u) {
                Some(m) => (*m).clone(),
                None if silent => continue,
                None => match store.message(&account, &sel.id, *u) {
                    Ok(m) => m,
                    Err(_) => continue,
                },
            };
            // With CONDSTORE, a silent STORE still reports the new MODSEQ (RFC 7162 3.1.3).
            if silent && !self.condstore {
                continue;
            }
            let mut items = Vec::new();
            if uid {
                items.push(MessageDataItem::Uid(nz(*u)));
            }
            if !silent {
                items.push(MessageDataItem::Flags(flags_fetch(&info.flags)));
            }
            if self.condstore {
                items.push(MessageDataItem::ModSeq(nz64(info.modseq.0)));
            }
            if let Ok(d) = Data::fetch(*seq, items) {
                out.push(data(d));
            }
        }
        if res.modified.is_empty() {
            out.push(ok(tag, "STORE completed"));
        } else {
            let nums: Vec<u32> = if uid {
                let mut m = res.modified.clone();
                m.sort_unstable();
                m
            } else {
                let mut m: Vec<u32> = res.modified.iter().filter_map(|u| sel.seq_of(*u)).collect();
                m.sort_unstable();
                m
            };
            match sequence_set(&nums) {
                Some(s) => out.push(ok_code(
                    tag,
                    Code::Modified(s),
                    "conditional STORE failed for some",
                )),
                None => out.push(ok(tag, "STORE completed")),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_move(
        &mut self,
        tag: &Tag<'static>,
        set: &SequenceSet,
        mailbox: &Mailbox<'_>,
        uid: bool,
        is_move: bool,
        store: &mut Store,
        now: Timestamp,
        out: &mut Out,
    ) {
        let (Some(account), Some(sel)) = (self.account.clone(), self.selected.as_ref()) else {
            return;
        };
        if is_move && sel.read_only {
            out.push(no(tag, Some(Code::ReadOnly), "mailbox is read-only"));
            return;
        }
        let to = match store.mailbox_id(&account, &mailbox_name(mailbox)) {
            Ok(id) => id,
            Err(_) => {
                out.push(no(tag, Some(Code::TryCreate), "no such mailbox"));
                return;
            }
        };
        let uids: Vec<u32> = sel.resolve(set, uid).into_iter().map(|(_, u)| u).collect();
        if uids.is_empty() {
            out.push(ok(tag, "nothing to do"));
            return;
        }
        let res = if is_move {
            store.move_messages(&account, &sel.id, &uids, &to, now)
        } else {
            store.copy(&account, &sel.id, &uids, &to, now)
        };
        let res = match res {
            Ok(r) => r,
            Err(e) => {
                out.push(store_error(tag, &e));
                return;
            }
        };
        let src: Vec<u32> = res.pairs.iter().map(|p| p.0).collect();
        let dst: Vec<u32> = res.pairs.iter().map(|p| p.1).collect();
        let copyuid = match (uid_set(&src), uid_set(&dst)) {
            (Some(source), Some(destination)) => Some(Code::CopyUid {
                uid_validity: nz(res.uidvalidity),
                source,
                destination,
            }),
            _ => None,
        };
        if is_move {
            if let Some(c) = copyuid {
                out.push(untagged_ok(Some(c), "moved"));
            }
            out.push(ok(tag, "MOVE completed"));
        } else {
            match copyuid {
                Some(c) => out.push(ok_code(tag, c, "COPY completed")),
                None => out.push(ok(tag, "COPY completed")),
            }
        }
    }
}

/// UIDs of messages flagged \Deleted (within `limit`, a UID range list, if given).
fn deleted_uids(
    store: &Store,
    account: &str,
    id: &MailboxId,
    limit: Option<&[(u32, u32)]>,
) -> Vec<u32> {
    store
        .messages(account, id)
        .map(|ms| {
            ms.into_iter()
                .filter(|m| m.flags.contains(&Flag::Deleted))
                .filter(|m| limit.is_none_or(|r| in_ranges(r, m.uid)))
                .map(|m| m.uid)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(list_matches("*", "INBOX"));
        assert!(list_matches("%", "Sent"));
        assert!(!list_matches("%", "a/b"));
        assert!(list_matches("a/%", "a/b"));
        assert!(list_matches("inbox", "INBOX"));
        assert!(list_matches("*b*", "a/b/c"));
        assert!(!list_matches("Sent", "Sent/x"));
    }
}
