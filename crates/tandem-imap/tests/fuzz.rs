//! Fuzzing without a nightly toolchain (cargo-fuzz needs one; this machine has stable 1.95
//! only): proptest drives arbitrary and grammar-shaped input through the same code paths.
//!
//! - the IMAP command stream: bytes into imap-next's server and every decoded command into a
//!   [`Session`] over a real store, as the driver does;
//! - message parsing for FETCH: arbitrary bytes appended, then every FETCH item of them.
//!
//! Properties: nothing panics, every response encodes, the session keeps answering. Cases:
//! `TANDEM_FUZZ_CASES` (default 64 per target; CI runs the default, longer runs by hand).

use imap_codec::ResponseCodec;
use imap_codec::encode::Encoder;
use imap_next::imap_types::response::{CommandContinuationRequest, Greeting, Status};
use imap_next::server::{Event, Options, Server};
use imap_next::{Interrupt, Io, State};
use proptest::prelude::*;
use tandem_imap::{ConnInfo, Session};
use tandem_store::{Store, StoreConfig, Timestamp};

fn cases() -> u32 {
    std::env::var("TANDEM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

const NOW: Timestamp = Timestamp(1_800_000_000_000);

/// Runs input chunks through imap-next and a session, as the driver does; returns how many
/// responses were produced.
fn drive(store: &mut Store, chunks: &[Vec<u8>]) -> usize {
    let mut options = Options::default();
    options.crlf_relaxed = true;
    options.max_literal_size = 1 << 20;
    options.max_command_size = (1 << 20) + (64 << 10);
    let greeting = Greeting::ok(None, "fuzz").expect("greeting");
    let mut server = Server::new(options, greeting);
    let mut session = Session::new(ConnInfo {
        secure: false,
        starttls: false,
        plaintext_ok: true,
    });
    let codec = ResponseCodec::default();
    let mut responses = 0usize;
    for chunk in chunks {
        server.enqueue_input(chunk);
        for _ in 0..10_000 {
            match server.next() {
                Ok(Event::CommandReceived { command }) => {
                    let mut out = Vec::new();
                    // A LOGIN is accepted for anyone: the fuzzer should reach the selected state.
                    match session.handle(command, store, NOW, &mut out) {
                        tandem_imap::Action::Login { tag, user, .. } => {
                            let user = if tandem_imap::valid_user_name(&user) {
                                user
                            } else {
                                "fuzz".into()
                            };
                            out.push(session.login_succeeded(&tag, &user, store, NOW));
                        }
                        tandem_imap::Action::More => {
                            while matches!(
                                session.resume(store, NOW, &mut out),
                                tandem_imap::Action::More
                            ) {}
                        }
                        _ => {}
                    }
                    for r in out {
                        let _ = codec.encode(&r).dump();
                        responses += 1;
                        match r {
                            imap_next::imap_types::response::Response::Data(d) => {
                                server.enqueue_data(d);
                            }
                            imap_next::imap_types::response::Response::Status(s) => {
                                server.enqueue_status(s);
                            }
                            imap_next::imap_types::response::Response::CommandContinuationRequest(c) => {
                                server.enqueue_continuation_request(c);
                            }
                        }
                    }
                }
                Ok(Event::CommandAuthenticateReceived {
                    command_authenticate,
                }) => {
                    responses += 1;
                    let _ = server.authenticate_finish(
                        Status::no(Some(command_authenticate.tag), None, "no").expect("status"),
                    );
                }
                Ok(Event::AuthenticateDataReceived { .. }) => {}
                Ok(Event::IdleCommandReceived { tag }) => {
                    // As the driver does: IDLE before login is refused, after it accepted.
                    responses += 1;
                    if session.account().is_none() {
                        let _ = server.idle_reject(
                            Status::bad(Some(tag), None, "log in first").expect("status"),
                        );
                    } else {
                        let _ = server.idle_accept(
                            CommandContinuationRequest::basic(None, "idling").expect("ccr"),
                        );
                        let mut out = Vec::new();
                        session.updates(store, true, &mut out);
                        responses += out.len();
                    }
                }
                Ok(_) => {}
                Err(Interrupt::Io(Io::Output(_))) => {}
                Err(Interrupt::Io(Io::NeedMoreInput)) => break,
                Err(Interrupt::Error(_)) => responses += 1,
            }
        }
    }
    responses
}

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().expect("tmp");
    let mut s = Store::open(
        d.path(),
        StoreConfig {
            durable: false,
            ..StoreConfig::default()
        },
    )
    .expect("store");
    s.create_account("fuzz", NOW).expect("account");
    let ib = s.mailbox_id("fuzz", "INBOX").expect("inbox");
    for raw in [
        &b"Subject: one\r\nFrom: a@b.c\r\n\r\nbody one\r\n"[..],
        b"Content-Type: multipart/mixed; boundary=X\r\n\r\n--X\r\nContent-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\ninner\r\n--X--\r\n",
        b"no header at all",
    ] {
        s.append("fuzz", &ib, raw, &[], 1_700_000_000, NOW).expect("append");
    }
    (d, s)
}

/// Command-shaped lines: real verbs with arguments drawn from IMAP's syntax pieces.
fn command_line() -> impl Strategy<Value = Vec<u8>> {
    let verb = prop::sample::select(vec![
        "LOGIN fuzz x",
        "SELECT INBOX",
        "EXAMINE INBOX",
        "SELECT",
        "FETCH",
        "UID FETCH",
        "STORE",
        "UID STORE",
        "SEARCH",
        "UID SEARCH",
        "COPY",
        "MOVE",
        "UID MOVE",
        "EXPUNGE",
        "UID EXPUNGE",
        "CREATE",
        "DELETE",
        "RENAME",
        "LIST",
        "LSUB",
        "STATUS",
        "APPEND",
        "NOOP",
        "CLOSE",
        "UNSELECT",
        "ENABLE QRESYNC",
        "ENABLE CONDSTORE",
        "SUBSCRIBE",
        "ID NIL",
        "NAMESPACE",
        "CAPABILITY",
        "IDLE",
        "DONE",
        "LOGOUT",
        "AUTHENTICATE PLAIN",
    ]);
    let piece = prop::sample::select(vec![
        "1",
        "1:*",
        "*",
        "2,1",
        "4294967295",
        "0",
        "1:4294967295",
        "(FLAGS)",
        "(BODY[])",
        "BODY.PEEK[1.2.MIME]",
        "BODY[HEADER.FIELDS (Subject)]<0.5>",
        "(UID MODSEQ ENVELOPE BODYSTRUCTURE)",
        "FULL",
        "+FLAGS (\\Seen)",
        "-FLAGS.SILENT (\\Deleted $x)",
        "FLAGS ()",
        "(UNCHANGEDSINCE 1)",
        "(CHANGEDSINCE 1 VANISHED)",
        "ALL",
        "NOT OR SEEN DELETED",
        "HEADER Subject one",
        "TEXT body",
        "SINCE 1-Jan-2000",
        "LARGER 5",
        "MODSEQ 1",
        "UID 1:*",
        "INBOX",
        "Trash",
        "\"a/b\"",
        "\"\"",
        "%",
        "*",
        "{3}\r\nabc",
        "{0+}\r\n",
        "(MESSAGES UIDNEXT HIGHESTMODSEQ)",
        "(QRESYNC (1 1 1:5))",
        "(\\Seen) {5}\r\nhello",
        "\"\\\"",
        "~{2}\r\nab",
        "(",
        ")",
    ]);
    (verb, prop::collection::vec(piece, 0..4), "[a-z0-9]{1,4}").prop_map(|(v, ps, tag)| {
        let mut l = format!("{tag} {v}");
        for p in ps {
            l.push(' ');
            l.push_str(p);
        }
        l.push_str("\r\n");
        l.into_bytes()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_session(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..8)) {
        let (_d, mut s) = store();
        drive(&mut s, &chunks);
    }

    #[test]
    fn command_shaped_input_never_panics_and_is_answered(lines in prop::collection::vec(command_line(), 1..24)) {
        let (_d, mut s) = store();
        let n = drive(&mut s, &lines);
        // Every complete line gets at least one response (a BAD counts).
        prop_assert!(n > 0);
        // And the session still works afterwards.
        let after = drive(&mut s, &[b"z LOGIN fuzz x\r\nz2 STATUS INBOX (MESSAGES)\r\n".to_vec()]);
        prop_assert!(after >= 2);
    }

    #[test]
    fn any_message_can_be_fetched_in_every_way(raw in prop::collection::vec(any::<u8>(), 0..600), mime in any::<bool>()) {
        let (_d, mut s) = store();
        let mut m = if mime {
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n".to_vec()
        } else {
            Vec::new()
        };
        m.extend_from_slice(&raw);
        let ib = s.mailbox_id("fuzz", "INBOX").expect("inbox");
        s.append("fuzz", &ib, &m, &[], 0, NOW).expect("append");
        let n = drive(&mut s, &[
            b"a LOGIN fuzz x\r\nb SELECT INBOX\r\n".to_vec(),
            b"c FETCH 4 (FLAGS ENVELOPE BODYSTRUCTURE BODY RFC822.SIZE INTERNALDATE)\r\n".to_vec(),
            b"d FETCH 4 (BODY.PEEK[] BODY.PEEK[HEADER] BODY.PEEK[TEXT] BODY.PEEK[1] BODY.PEEK[1.MIME] BODY.PEEK[2.1.HEADER] BODY.PEEK[1]<3.7>)\r\n".to_vec(),
            b"e SEARCH TEXT x BODY y HEADER Subject z SENTSINCE 1-Jan-1970\r\n".to_vec(),
        ]);
        prop_assert!(n >= 6);
    }
}
