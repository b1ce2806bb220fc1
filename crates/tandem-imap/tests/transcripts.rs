//! Transcript tests over a real socket, grouped by RFC.

mod common;

use std::time::{Duration, Instant};

use common::{Client, message, ok, start, status_of};

fn has(lines: &[String], needle: &str) -> bool {
    lines.iter().any(|l| l.contains(needle))
}

fn find<'a>(lines: &'a [String], needle: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.contains(needle))
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no line with {needle:?} in {lines:#?}"))
}

mod rfc3501 {
    use super::*;

    #[test]
    fn greeting_capability_login_logout() {
        let s = start();
        let mut c = Client::connect(s.addr);
        assert!(
            c.greeting
                .to_ascii_uppercase()
                .starts_with("* OK [CAPABILITY IMAP4REV1"),
            "{}",
            c.greeting
        );
        assert!(
            c.greeting.contains("AUTH=PLAIN"),
            "loopback allows plaintext"
        );
        let r = c.cmd("CAPABILITY");
        ok(&r);
        for cap in [
            "IDLE",
            "UIDPLUS",
            "MOVE",
            "CONDSTORE",
            "QRESYNC",
            "ENABLE",
            "LITERAL+",
            "NAMESPACE",
            "ID",
            "UNSELECT",
            "SPECIAL-USE",
            "CHILDREN",
            "SASL-IR",
        ] {
            assert!(r[0].contains(cap), "{cap} missing from {}", r[0]);
        }
        let r = c.cmd("SELECT INBOX");
        assert_eq!(status_of(&r), "BAD");
        let r = c.cmd("LOGIN alice wrong");
        assert_eq!(status_of(&r), "NO");
        assert!(r[0].contains("AUTHENTICATIONFAILED"));
        let r = c.cmd("LOGIN alice secret");
        assert!(ok(&r).contains("[CAPABILITY "));
        let r = c.cmd("LOGOUT");
        assert!(r[0].starts_with("* BYE"));
        ok(&r);
    }

    #[test]
    fn too_many_failed_logins_close_the_connection() {
        let s = start();
        let mut c = Client::connect(s.addr);
        c.cmd("LOGIN alice a");
        c.cmd("LOGIN alice b");
        let r = c.cmd("LOGIN alice c");
        assert_eq!(status_of(&r), "NO");
        let l = c.line();
        assert!(l.starts_with("* BYE"), "{l}");
    }

    #[test]
    fn users_see_only_their_own_mailboxes() {
        let s = start();
        let mut a = Client::login(s.addr, "alice", "secret");
        ok(&a.cmd("CREATE Private"));
        ok(&a.append("Private", "", &message(1, "secret")));
        let mut b = Client::login(s.addr, "bob", "hunter2");
        let r = b.cmd("LIST \"\" *");
        assert!(!has(&r, "Private"), "{r:#?}");
        assert_eq!(status_of(&b.cmd("SELECT Private")), "NO");
        let r = b.cmd("STATUS INBOX (MESSAGES)");
        assert!(has(&r, "MESSAGES 0"));
    }

    #[test]
    fn mailboxes_list_lsub_status() {
        let s = start();
        let mut c = Client::login(s.addr, "alice", "secret");
        let r = c.cmd("LIST \"\" \"\"");
        assert!(has(&r, "* LIST (\\Noselect) \"/\" \"\""), "{r:#?}");
        let r = c.cmd("LIST \"\" *");
        ok(&r);
        assert!(
            has(&r, "\\Sent) \"/\" Sent") || has(&r, "\\Sent) \"/\" \"Sent\""),
            "{r:#?}"
        );
        assert!(has(&r, "INBOX"));
        ok(&c.cmd("CREATE Work/Projects"));
        let r = c.cmd("LIST \"\" %");
        assert!(has(&r, "\\HasChildren) \"/\" Work"), "{r:#?}");
        assert!(!has(&r, "Work/Projects"));
        let r = c.cmd("LIST Work %");
        assert!(has(&r, "Work/Projects"), "{r:#?}");
        assert_eq!(status_of(&c.cmd("CREATE Work")), "NO");
        ok(&c.cmd("RENAME Work/Projects Work/Done"));
        let r = c.cmd("LIST \"\" *");
        assert!(has(&r, "Work/Done") && !has(&r, "Work/Projects"));
        ok(&c.cmd("SUBSCRIBE Work/Done"));
        let r = c.cmd("LSUB \"\" *");
        assert!(has(&r, "Work/Done") && has(&r, "INBOX"), "{r:#?}");
        ok(&c.cmd("UNSUBSCRIBE Work/Done"));
        assert!(!has(&c.cmd("LSUB \"\" *"), "Work/Done"));
        ok(&c.cmd("DELETE Work/Done"));
        assert_eq!(status_of(&c.cmd("DELETE INBOX")), "NO");
        ok(&c.append("INBOX", "\\Seen", &message(1, "a")));
        ok(&c.append("INBOX", "", &message(2, "b")));
        let r = c.cmd("STATUS INBOX (MESSAGES UNSEEN UIDNEXT UIDVALIDITY HIGHESTMODSEQ)");
        let l = find(&r, "* STATUS");
        assert!(
            l.contains("MESSAGES 2") && l.contains("UNSEEN 1") && l.contains("UIDNEXT 18"),
            "{l}"
        );
        let r = c.cmd("NAMESPACE");
        assert!(has(&r, "* NAMESPACE ((\"\" \"/\")) NIL NIL"), "{r:#?}");
    }

    #[test]
    fn select_fetch_store_search_copy_expunge() {
        let s = start();
        let mut c = Client::login(s.addr, "alice", "secret");
        for i in 1..=5 {
            ok(&c.append(
                "INBOX",
                if i % 2 == 0 { "\\Flagged" } else { "" },
                &message(i, &format!("Subject {i}")),
            ));
        }
        let r = c.cmd("SELECT INBOX");
        assert!(has(&r, "* 5 EXISTS") && has(&r, "* 0 RECENT"));
        assert!(has(&r, "[UIDVALIDITY ") && has(&r, "[UIDNEXT ") && has(&r, "[HIGHESTMODSEQ "));
        assert!(has(
            &r,
            "[PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)]"
        ));
        assert!(ok(&r).contains("[READ-WRITE]"));
        assert!(has(&r, "[UNSEEN 1]"));

        let r = c.cmd("FETCH 1 (FLAGS INTERNALDATE RFC822.SIZE ENVELOPE UID)");
        let l = find(&r, "* 1 FETCH");
        assert!(l.contains("ENVELOPE (\"Mon, 7 Feb 1994 21:52:25 -0800\" \"Subject 1\" ((\"Sender 1\" NIL \"sender1\" \"example.org\"))"), "{l}");
        assert!(l.contains("RFC822.SIZE ") && l.contains("INTERNALDATE \"") && l.contains("UID 1"));

        let r = c.cmd("FETCH 2 BODYSTRUCTURE");
        assert!(
            find(&r, "* 2 FETCH")
                .contains("(\"TEXT\" \"PLAIN\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\""),
            "{r:#?}"
        );
        let r = c.cmd("FETCH 2 BODY");
        assert!(has(&r, "BODY (\"TEXT\" \"PLAIN\""));

        // BODY.PEEK does not set \Seen; BODY[] does.
        let r = c.cmd("FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject)])");
        assert!(
            find(&r, "* 1 FETCH").contains("Subject: Subject 1"),
            "{r:#?}"
        );
        assert!(!has(&r, "\\Seen"));
        let r = c.cmd("FETCH 1 BODY[TEXT]<0.7>");
        let l = find(&r, "* 1 FETCH");
        assert!(
            l.contains("BODY[TEXT]<0> {7}") && l.contains("Body of") && l.contains("\\Seen"),
            "{l}"
        );
        let r = c.cmd("FETCH 1 (RFC822.HEADER RFC822.TEXT)");
        assert!(has(&r, "RFC822.HEADER {") && has(&r, "RFC822.TEXT {"));
        let r = c.cmd("FETCH 1 BODY[]");
        assert!(has(&r, "BODY[] {"));
        let r = c.cmd("FETCH 1:* FAST");
        assert_eq!(
            r.iter()
                .filter(|l| l.starts_with("* ") && l.contains(" FETCH "))
                .count(),
            5
        );
        let r = c.cmd("UID FETCH 1:4294967295 (FLAGS)");
        assert_eq!(
            r.iter()
                .filter(|l| l.starts_with("* ") && l.contains(" FETCH "))
                .count(),
            5
        );

        // STORE.
        let r = c.cmd("STORE 2:3 +FLAGS (\\Deleted $Work)");
        assert!(
            find(&r, "* 2 FETCH").contains("\\Deleted") && has(&r, "$Work"),
            "{r:#?}"
        );
        let r = c.cmd("STORE 3 -FLAGS.SILENT ($Work)");
        assert!(!has(&r, "FETCH"), "{r:#?}");
        let r = c.cmd("UID STORE 1 FLAGS (\\Answered)");
        assert!(find(&r, "* 1 FETCH").contains("UID 1"), "{r:#?}");
        assert_eq!(status_of(&c.cmd("STORE 1 +FLAGS (\\Recent)")), "BAD");

        // SEARCH.
        let seq = |r: &[String]| find(r, "* SEARCH").trim().to_owned();
        assert_eq!(seq(&c.cmd("SEARCH DELETED")), "* SEARCH 2 3");
        assert_eq!(seq(&c.cmd("SEARCH FLAGGED NOT DELETED")), "* SEARCH 4");
        assert_eq!(
            seq(&c.cmd("SEARCH OR ANSWERED KEYWORD $Work")),
            "* SEARCH 1 2"
        );
        assert_eq!(seq(&c.cmd("SEARCH SUBJECT \"subject 5\"")), "* SEARCH 5");
        assert_eq!(seq(&c.cmd("SEARCH FROM sender3")), "* SEARCH 3");
        assert_eq!(seq(&c.cmd("SEARCH TO alice")), "* SEARCH 1 2 3 4 5");
        assert_eq!(seq(&c.cmd("SEARCH BODY \"message 4\"")), "* SEARCH 4");
        assert_eq!(seq(&c.cmd("SEARCH TEXT \"SENDER2@\"")), "* SEARCH 2");
        assert_eq!(
            seq(&c.cmd("SEARCH HEADER Message-ID <m5@example.org>")),
            "* SEARCH 5"
        );
        assert_eq!(
            seq(&c.cmd("SEARCH SENTON 7-Feb-1994")),
            "* SEARCH 1 2 3 4 5"
        );
        assert_eq!(seq(&c.cmd("SEARCH SENTBEFORE 1-Jan-1990")), "* SEARCH");
        assert_eq!(seq(&c.cmd("SEARCH SINCE 1-Jan-2000")), "* SEARCH 1 2 3 4 5");
        assert_eq!(seq(&c.cmd("SEARCH BEFORE 1-Jan-2000")), "* SEARCH");
        assert_eq!(
            seq(&c.cmd("SEARCH LARGER 10 SMALLER 100000 2:4")),
            "* SEARCH 2 3 4"
        );
        assert_eq!(seq(&c.cmd("SEARCH UID 17:33")), "* SEARCH 2 3");
        assert_eq!(seq(&c.cmd("SEARCH UID 100:*")), "* SEARCH 5");
        assert_eq!(seq(&c.cmd("UID SEARCH UNSEEN")), "* SEARCH 1 17 33 49 65");
        assert_eq!(seq(&c.cmd("SEARCH NEW")), "* SEARCH");
        assert_eq!(
            seq(&c.cmd("SEARCH CHARSET UTF-8 ALL")),
            "* SEARCH 1 2 3 4 5"
        );
        assert_eq!(status_of(&c.cmd("SEARCH CHARSET KOI8-R ALL")), "NO");

        // COPY with COPYUID (RFC 4315) and EXPUNGE.
        let r = c.cmd("COPY 1:2 Archive");
        assert!(ok(&r).contains("[COPYUID "), "{r:#?}");
        let r = c.cmd("STATUS Archive (MESSAGES)");
        assert!(has(&r, "MESSAGES 2"));
        let r = c.cmd("EXPUNGE");
        assert!(has(&r, "* 3 EXPUNGE") && has(&r, "* 2 EXPUNGE"), "{r:#?}");
        let r = c.cmd("FETCH 1:* UID");
        assert_eq!(
            r.iter()
                .filter(|l| l.starts_with("* ") && l.contains(" FETCH "))
                .count(),
            3
        );

        // EXAMINE is read-only.
        let r = c.cmd("EXAMINE INBOX");
        assert!(ok(&r).contains("[READ-ONLY]"));
        assert_eq!(status_of(&c.cmd("STORE 1 +FLAGS (\\Seen)")), "NO");
        let r = c.cmd("FETCH 2 BODY[]");
        assert!(!has(&r, "\\Seen"));
        ok(&c.cmd("CLOSE"));
        assert_eq!(status_of(&c.cmd("FETCH 1 UID")), "BAD");
    }

    #[test]
    fn copy_to_a_missing_mailbox_says_trycreate() {
        let s = start();
        let mut c = Client::login(s.addr, "alice", "secret");
        ok(&c.append("INBOX", "", &message(1, "x")));
        ok(&c.cmd("SELECT INBOX"));
        let r = c.cmd("COPY 1 Nowhere");
        assert!(
            r.last().is_some_and(|l| l.contains("NO [TRYCREATE]")),
            "{r:#?}"
        );
        let r = c.append("Nowhere", "", &message(1, "x"));
        assert!(
            r.last().is_some_and(|l| l.contains("NO [TRYCREATE]")),
            "{r:#?}"
        );
    }

    #[test]
    fn close_expunges_deleted_silently() {
        let s = start();
        let mut c = Client::login(s.addr, "alice", "secret");
        ok(&c.append("INBOX", "\\Deleted", &message(1, "x")));
        ok(&c.append("INBOX", "", &message(2, "y")));
        ok(&c.cmd("SELECT INBOX"));
        let r = c.cmd("CLOSE");
        assert!(!has(&r, "EXPUNGE"));
        let r = c.cmd("STATUS INBOX (MESSAGES)");
        assert!(has(&r, "MESSAGES 1"));
    }

    #[test]
    fn multipart_sections() {
        let s = start();
        let mut c = Client::login(s.addr, "alice", "secret");
        let msg = b"From: a@example.org\r\nSubject: parts\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\npreamble\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nfirst part\r\n--XX\r\nContent-Type: application/octet-stream; name=\"a.bin\"\r\nContent-Disposition: attachment; filename=\"a.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\nAAECAw==\r\n--XX--\r\n";
        ok(&c.append("INBOX", "", msg));
        ok(&c.cmd("SELECT INBOX"));
        let r = c.cmd("FETCH 1 BODYSTRUCTURE");
        let l = find(&r, "BODYSTRUCTURE");
        assert!(l.contains("\"MIXED\""), "{l}");
        assert!(
            l.contains("(\"APPLICATION\" \"OCTET-STREAM\" (\"name\" \"a.bin\") NIL NIL \"BASE64\""),
            "{l}"
        );
        assert!(
            l.contains("(\"attachment\" (\"filename\" \"a.bin\"))"),
            "{l}"
        );
        let r = c.cmd("FETCH 1 (BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[2])");
        let l = find(&r, "* 1 FETCH");
        assert!(l.contains("BODY[1] {10}\r\nfirst part"), "{l}");
        assert!(l.contains("BODY[2.MIME] {"), "{l}");
        assert!(l.contains("AAECAw=="), "{l}");
    }
}

mod rfc4315_uidplus {
    use super::*;

    #[test]
    fn appenduid_copyuid_uid_expunge() {
        let s = start();
        let mut c = Client::login(s.addr, "alice", "secret");
        let r = c.append("INBOX", "", &message(1, "a"));
        assert!(ok(&r).contains("[APPENDUID "), "{r:#?}");
        let uv: String = ok(&r).split(' ').nth(3).unwrap_or("").to_owned();
        assert!(ok(&r).contains(&format!("[APPENDUID {uv} 1]")));
        ok(&c.append("INBOX", "\\Deleted", &message(2, "b")));
        ok(&c.append("INBOX", "\\Deleted", &message(3, "c")));
        ok(&c.cmd("SELECT INBOX"));
        let r = c.cmd("UID EXPUNGE 17");
        assert!(has(&r, "* 2 EXPUNGE") && !has(&r, "* 3 EXPUNGE"), "{r:#?}");
        let r = c.cmd("UID COPY 1:* Trash");
        assert!(
            ok(&r).contains("[COPYUID ") && ok(&r).contains(" 1,33 1,17]"),
            "{r:#?}"
        );
    }
}

mod rfc6851_move {
    use super::*;

    #[test]
    fn move_reports_copyuid_then_expunge() {
        let s = start();
        let mut c = Client::login(s.addr, "alice", "secret");
        for i in 1..=3 {
            ok(&c.append("INBOX", "", &message(i, "m")));
        }
        ok(&c.cmd("SELECT INBOX"));
        let r = c.cmd("MOVE 2 Archive");
        assert!(r[0].starts_with("* OK [COPYUID "), "{r:#?}");
        assert!(has(&r, "* 2 EXPUNGE"), "{r:#?}");
        ok(&r);
        let r = c.cmd("UID MOVE 1:* Trash");
        assert_eq!(
            r.iter().filter(|l| l.ends_with("EXPUNGE")).count(),
            2,
            "{r:#?}"
        );
        let r = c.cmd("STATUS Trash (MESSAGES)");
        assert!(has(&r, "MESSAGES 2"));
    }
}

mod rfc7162_condstore_qresync {
    use super::*;

    #[test]
    fn condstore_modseq_changedsince_unchangedsince() {
        let s = start();
        let mut c = Client::login(s.addr, "alice", "secret");
        for i in 1..=3 {
            ok(&c.append("INBOX", "", &message(i, "m")));
        }
        let r = c.cmd("SELECT INBOX (CONDSTORE)");
        let hms: u64 = find(&r, "HIGHESTMODSEQ")
            .split("HIGHESTMODSEQ ")
            .nth(1)
            .and_then(|x| x.split(']').next())
            .and_then(|x| x.parse().ok())
            .expect("modseq");
        let r = c.cmd("STORE 2 +FLAGS (\\Seen)");
        let l = find(&r, "* 2 FETCH");
        assert!(l.contains("MODSEQ ("), "{l}");
        let r = c.cmd(&format!("FETCH 1:* (FLAGS) (CHANGEDSINCE {hms})"));
        assert_eq!(
            r.iter()
                .filter(|l| l.starts_with("* ") && l.contains(" FETCH "))
                .count(),
            1,
            "{r:#?}"
        );
        assert!(find(&r, " FETCH ").starts_with("* 2 FETCH"));
        // UNCHANGEDSINCE below the message's modseq: refused with MODIFIED.
        let r = c.cmd(&format!(
            "STORE 2 (UNCHANGEDSINCE {hms}) +FLAGS (\\Flagged)"
        ));
        assert!(ok(&r).contains("[MODIFIED 2]"), "{r:#?}");
        let r = c.cmd(&format!("SEARCH MODSEQ {}", hms + 1));
        assert!(
            find(&r, "* SEARCH").starts_with("* SEARCH 2 (MODSEQ "),
            "{r:#?}"
        );
        let r = c.cmd("STATUS INBOX (HIGHESTMODSEQ)");
        assert!(has(&r, "HIGHESTMODSEQ "));
    }

    #[test]
    fn qresync_select_reports_vanished_and_changes() {
        let s = start();
        let mut c = Client::login(s.addr, "alice", "secret");
        for i in 1..=4 {
            ok(&c.append("INBOX", "", &message(i, "m")));
        }
        let r = c.cmd("ENABLE QRESYNC");
        assert!(has(&r, "* ENABLED QRESYNC"), "{r:#?}");
        let r = c.cmd("SELECT INBOX");
        let uv = find(&r, "UIDVALIDITY")
            .split("UIDVALIDITY ")
            .nth(1)
            .and_then(|x| x.split(']').next())
            .unwrap_or("")
            .to_owned();
        let hms = find(&r, "HIGHESTMODSEQ")
            .split("HIGHESTMODSEQ ")
            .nth(1)
            .and_then(|x| x.split(']').next())
            .unwrap_or("")
            .to_owned();
        ok(&c.cmd("STORE 1 +FLAGS (\\Deleted)"));
        let r = c.cmd("EXPUNGE");
        assert!(
            has(&r, "* VANISHED 1"),
            "with QRESYNC, expunges are VANISHED: {r:#?}"
        );
        ok(&c.cmd("STORE 2 +FLAGS (\\Flagged)"));
        ok(&c.cmd("UNSELECT"));
        let r = c.cmd(&format!("SELECT INBOX (QRESYNC ({uv} {hms} 1:100))"));
        assert!(has(&r, "* VANISHED (EARLIER) 1"), "{r:#?}");
        assert!(
            find(&r, "* 2 FETCH (UID 33").contains("\\Flagged"),
            "{r:#?}"
        );
        let r = c.cmd(&format!(
            "UID FETCH 1:* (FLAGS) (CHANGEDSINCE {hms} VANISHED)"
        ));
        assert!(has(&r, "* VANISHED (EARLIER) 1"), "{r:#?}");
        let r = c.cmd("SELECT Trash");
        assert!(has(&r, "* OK [CLOSED]"), "{r:#?}");
    }
}

mod rfc2177_idle {
    use super::*;

    #[test]
    fn idle_sees_another_sessions_changes_quickly() {
        let s = start();
        let mut a = Client::login(s.addr, "alice", "secret");
        let mut b = Client::login(s.addr, "alice", "secret");
        ok(&a.append("INBOX", "", &message(1, "one")));
        ok(&a.cmd("SELECT INBOX"));
        a.send_raw(b"i1 IDLE\r\n");
        assert!(a.line().starts_with('+'));
        let t = Instant::now();
        ok(&b.append("INBOX", "", &message(2, "two")));
        let l = a.line();
        assert_eq!(l, "* 2 EXISTS");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "took {:?}",
            t.elapsed()
        );
        ok(&b.cmd("SELECT INBOX"));
        ok(&b.cmd("STORE 1 +FLAGS (\\Seen)"));
        let l = a.line();
        assert!(l.starts_with("* 1 FETCH (UID 1 FLAGS (\\Seen))"), "{l}");
        ok(&b.cmd("STORE 2 +FLAGS (\\Deleted)"));
        let _ = a.line();
        ok(&b.cmd("EXPUNGE"));
        assert_eq!(a.line(), "* 2 EXPUNGE");
        a.send_raw(b"DONE\r\n");
        let r = a.until("i1");
        ok(&r);
    }

    #[test]
    fn expunges_wait_for_a_command_that_allows_them() {
        let s = start();
        let mut a = Client::login(s.addr, "alice", "secret");
        let mut b = Client::login(s.addr, "alice", "secret");
        ok(&a.append("INBOX", "\\Deleted", &message(1, "one")));
        ok(&a.append("INBOX", "", &message(2, "two")));
        ok(&a.cmd("SELECT INBOX"));
        ok(&b.cmd("SELECT INBOX"));
        ok(&b.cmd("EXPUNGE"));
        // FETCH must not announce the expunge (the numbers would shift under the client).
        let r = a.cmd("FETCH 1:* UID");
        assert!(!has(&r, "EXPUNGE"), "{r:#?}");
        let r = a.cmd("NOOP");
        assert!(has(&r, "* 1 EXPUNGE"), "{r:#?}");
        assert!(
            !has(&r, "EXISTS"),
            "a removal is not announced with EXISTS: {r:#?}"
        );
    }
}

mod rfc4959_sasl_ir_and_literal_plus {
    use super::*;

    #[test]
    fn authenticate_plain_with_and_without_initial_response() {
        let s = start();
        let mut c = Client::connect(s.addr);
        // "\0alice\0secret"
        let r = c.cmd("AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==");
        ok(&r);
        let mut c = Client::connect(s.addr);
        c.send_raw(b"a1 AUTHENTICATE PLAIN\r\n");
        assert!(c.line().starts_with('+'));
        c.send_raw(b"AGFsaWNlAHdyb25n\r\n");
        let r = c.until("a1");
        assert_eq!(status_of(&r), "NO");
        c.send_raw(b"a2 AUTHENTICATE PLAIN\r\n");
        assert!(c.line().starts_with('+'));
        c.send_raw(b"*\r\n");
        assert_eq!(status_of(&c.until("a2")), "BAD");
        let r = c.cmd("AUTHENTICATE CRAM-MD5");
        assert_eq!(status_of(&r), "NO");
    }

    #[test]
    fn non_synchronising_literal_append() {
        let s = start();
        let mut c = Client::login(s.addr, "alice", "secret");
        let m = message(1, "plus");
        c.send_raw(format!("p1 APPEND INBOX {{{}+}}\r\n", m.len()).as_bytes());
        c.send_raw(&m);
        c.send_raw(b"\r\n");
        ok(&c.until("p1"));
        let r = c.cmd("LOGIN {5+}\r\nalice {6+}\r\nsecret");
        assert_eq!(status_of(&r), "BAD", "already logged in");
    }
}

mod rfc2971_id_and_rfc5161_enable {
    use super::*;

    #[test]
    fn id_and_enable() {
        let s = start();
        let mut c = Client::connect(s.addr);
        let r = c.cmd("ID (\"name\" \"test\")");
        assert!(has(&r, "* ID (\"name\" \"Tandem\""), "{r:#?}");
        let mut c = Client::login(s.addr, "alice", "secret");
        let r = c.cmd("ENABLE CONDSTORE X-UNKNOWN");
        assert!(has(&r, "* ENABLED CONDSTORE"), "{r:#?}");
    }
}

mod robustness {
    use super::*;

    #[test]
    fn malformed_commands_get_bad_and_the_session_survives() {
        let s = start();
        let mut c = Client::login(s.addr, "alice", "secret");
        let r = c.cmd("FROBNICATE now");
        assert_eq!(status_of(&r), "BAD");
        c.send_raw(b"\r\n");
        assert!(c.line().starts_with("* BAD"));
        let r = c.cmd("FETCH 1:* (FLAGS");
        assert_eq!(status_of(&r), "BAD");
        let r = c.cmd("SELECT INBOX");
        ok(&r);
        let r = c.cmd("SORT (DATE) UTF-8 ALL");
        assert_eq!(status_of(&r), "BAD");
    }

    #[test]
    fn deeply_nested_search_is_refused_not_a_stack_overflow() {
        let s = start();
        let mut c = Client::login(s.addr, "alice", "secret");
        ok(&c.cmd("SELECT INBOX"));
        let deep = format!("SEARCH {}ALL", "NOT ".repeat(5000));
        assert_eq!(status_of(&c.cmd(&deep)), "BAD");
        let parens = format!("SEARCH {}ALL{}", "(".repeat(5000), ")".repeat(5000));
        assert_eq!(status_of(&c.cmd(&parens)), "BAD");
        ok(&c.cmd("NOOP"));
    }

    #[test]
    fn oversized_literal_is_refused() {
        let s = common::start_with(tandem_imap::ImapConfig {
            max_literal: 1000,
            ..tandem_imap::ImapConfig::default()
        });
        let mut c = Client::login(s.addr, "alice", "secret");
        c.send_raw(b"x1 APPEND INBOX {5000}\r\n");
        let l = c.line();
        assert!(l.starts_with("x1 BAD"), "{l}");
        ok(&c.cmd("NOOP"));
    }

    #[test]
    fn a_long_line_is_refused_but_a_long_literal_is_not() {
        let s = start();
        let mut c = Client::login(s.addr, "alice", "secret");
        // A 100 KiB message in a literal is fine (the line limit is 64 KiB outside literals).
        let mut big = message(1, "big");
        big.extend(std::iter::repeat_n(b'x', 100 << 10));
        big.extend_from_slice(b"\r\n");
        ok(&c.append("INBOX", "", &big));
        // A 100 KiB command line without a literal is not.
        let long = format!("t99 SEARCH SUBJECT \"{}\"\r\n", "y".repeat(100 << 10));
        c.send_raw(long.as_bytes());
        let l = c.line();
        assert!(l.starts_with("* BAD") && l.contains("line too long"), "{l}");
        assert!(c.line().starts_with("* BYE"));
    }

    #[test]
    fn many_bad_commands_end_the_connection() {
        let s = start();
        let mut c = Client::connect(s.addr);
        for _ in 0..10 {
            c.send_raw(b"garbage\r\n");
        }
        let mut saw_bye = false;
        for _ in 0..11 {
            if c.line().starts_with("* BYE") {
                saw_bye = true;
                break;
            }
        }
        assert!(saw_bye);
    }

    #[test]
    fn binary_junk_does_not_hurt_other_sessions() {
        let s = start();
        let mut good = Client::login(s.addr, "alice", "secret");
        let mut junk = std::net::TcpStream::connect(s.addr).expect("connect");
        use std::io::Write;
        let mut seed = 12345u64;
        let mut bytes = Vec::new();
        for _ in 0..200_000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            bytes.push((seed >> 33) as u8);
        }
        let _ = junk.write_all(&bytes);
        ok(&good.cmd("NOOP"));
        ok(&good.append("INBOX", "", &message(1, "still fine")));
    }

    #[test]
    fn plaintext_login_refused_off_loopback_policy() {
        let s = common::start_with(tandem_imap::ImapConfig {
            plaintext: tandem_imap::Plaintext::Never,
            ..tandem_imap::ImapConfig::default()
        });
        let mut c = Client::connect(s.addr);
        assert!(c.greeting.contains("LOGINDISABLED"), "{}", c.greeting);
        let r = c.cmd("LOGIN alice secret");
        assert!(
            r.last().is_some_and(|l| l.contains("NO [PRIVACYREQUIRED]")),
            "{r:#?}"
        );
        assert_eq!(
            status_of(&c.cmd("AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==")),
            "NO"
        );
    }
}
