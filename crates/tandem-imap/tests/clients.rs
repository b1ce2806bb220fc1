//! Real IMAP clients from Debian against the server: mbsync, offlineimap, curl, Python's
//! imaplib, curl over TLS (STARTTLS and implicit). `.ci/run` installs them; a missing one fails
//! the test with the package to install.

mod common;

use std::process::Command;

use common::{Client, TestServer, maildir, mbsync, mbsyncrc, message, ok, start, start_with};
use tandem_imap::ImapConfig;

fn tool(name: &str, package: &str) -> String {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "{name} is not installed: apt-get install {package}");
    name.to_owned()
}

fn run(cmd: &mut Command) -> (String, String) {
    let out = cmd.output().expect("run client");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

fn fill(s: &TestServer, n: usize) {
    let mut c = Client::login(s.addr, "alice", "secret");
    for i in 0..n {
        ok(&c.append(
            "INBOX",
            if i % 3 == 0 { "\\Seen" } else { "" },
            &message(i, &format!("mail {i}")),
        ));
    }
    ok(&c.cmd("CREATE Work"));
    ok(&c.append("Work", "\\Flagged", &message(100, "work mail")));
}

#[test]
fn mbsync_full_then_incremental_both_ways() {
    let s = start();
    fill(&s, 12);
    let work = tempfile::tempdir().expect("tmp");
    let rc = mbsyncrc(work.path(), s.addr.port());
    mbsync(&rc);
    let inbox = work.path().join("mail/INBOX");
    assert_eq!(maildir(&inbox).len(), 12);
    assert_eq!(maildir(&work.path().join("mail/Work")).len(), 1);
    let seen = maildir(&inbox).iter().filter(|f| f.ends_with(",S")).count();
    assert_eq!(seen, 4, "\\Seen came down as the S flag");

    // Changes on the server: new mail, a flag, an expunge.
    let mut c = Client::login(s.addr, "alice", "secret");
    for i in 20..23 {
        ok(&c.append("INBOX", "", &message(i, "new")));
    }
    ok(&c.cmd("SELECT INBOX"));
    ok(&c.cmd("STORE 2 +FLAGS (\\Flagged)"));
    ok(&c.cmd("STORE 3 +FLAGS (\\Deleted)"));
    ok(&c.cmd("EXPUNGE"));
    mbsync(&rc);
    let files = maildir(&inbox);
    assert_eq!(files.len(), 14, "{files:#?}");
    assert_eq!(files.iter().filter(|f| f.contains(",F")).count(), 1);

    // A change on the client side goes up: flag a message seen locally, delete another.
    let cur = inbox.join("cur");
    let mut names: Vec<String> = maildir(&inbox).into_iter().collect();
    names.sort();
    let unseen = names
        .iter()
        .find(|n| !n.ends_with('S'))
        .expect("an unseen message")
        .clone();
    let base = unseen.split(":2,").next().unwrap_or(&unseen).to_owned();
    let flags = unseen.split(":2,").nth(1).unwrap_or("").to_owned();
    let from = if cur.join(&unseen).exists() {
        cur.join(&unseen)
    } else {
        inbox.join("new").join(&unseen)
    };
    std::fs::rename(from, cur.join(format!("{base}:2,{flags}S"))).expect("rename");
    mbsync(&rc);
    let r = c.cmd("SEARCH UNSEEN");
    let unseen_before = 14 - 4 - 1; // 4 seen from the start; one just now
    let found = r[0].split(' ').count() - 2;
    assert_eq!(found, unseen_before, "{r:#?}");
    // Nothing changed: a third run transfers nothing and says so.
    let out = mbsync(&rc);
    assert!(!out.contains("Error"));
    assert_eq!(maildir(&inbox).len(), 14);
}

#[test]
fn offlineimap_one_pass_each_way() {
    let s = start();
    fill(&s, 5);
    let work = tempfile::tempdir().expect("tmp");
    let mail = work.path().join("mail");
    let cfg = work.path().join("offlineimaprc");
    std::fs::write(
        &cfg,
        format!(
            "[general]\naccounts = t\nmetadata = {meta}\n\n[Account t]\nlocalrepository = local\nremoterepository = remote\n\n\
             [Repository local]\ntype = Maildir\nlocalfolders = {mail}\n\n\
             [Repository remote]\ntype = IMAP\nremotehost = 127.0.0.1\nremoteport = {port}\nremoteuser = alice\nremotepass = secret\nssl = no\nstarttls = no\n",
            meta = work.path().join("meta").display(),
            mail = mail.display(),
            port = s.addr.port()
        ),
    )
    .expect("cfg");
    let offlineimap = tool("offlineimap", "offlineimap3");
    let pass = || {
        let (out, err) = run(Command::new(&offlineimap)
            .arg("-c")
            .arg(&cfg)
            .args(["-o", "-u", "quiet"]));
        let all = format!("{out}{err}");
        assert!(
            !all.contains("ERROR"),
            "offlineimap reported an error:\n{all}"
        );
    };
    pass();
    assert_eq!(maildir(&mail.join("INBOX")).len(), 5);
    assert_eq!(maildir(&mail.join("Work")).len(), 1);
    // A message written into the local maildir goes up on the next pass.
    std::fs::write(
        mail.join("INBOX/new/1700000000.local.host"),
        message(77, "from offlineimap"),
    )
    .expect("write");
    pass();
    let mut c = Client::login(s.addr, "alice", "secret");
    let r = c.cmd("STATUS INBOX (MESSAGES)");
    assert!(r[0].contains("MESSAGES 6"), "{r:#?}");
    ok(&c.cmd("SELECT INBOX"));
    let r = c.cmd("SEARCH SUBJECT \"from offlineimap\"");
    assert_eq!(r[0].split(' ').count(), 3, "{r:#?}");
}

fn curl(args: &[&str]) -> String {
    run(Command::new(tool("curl", "curl"))
        .args(["-s", "-S", "--max-time", "20"])
        .args(args))
    .0
}

#[test]
fn curl_list_search_fetch_append() {
    let s = start();
    fill(&s, 3);
    let base = format!("imap://127.0.0.1:{}", s.addr.port());
    let list = curl(&["--user", "alice:secret", &format!("{base}/")]);
    assert!(
        list.contains("INBOX") && list.contains("Work") && list.contains("\\Sent"),
        "{list}"
    );
    let search = curl(&[
        "--user",
        "alice:secret",
        &format!("{base}/INBOX"),
        "-X",
        "SEARCH SUBJECT \"mail 1\"",
    ]);
    assert_eq!(search.trim(), "* SEARCH 2", "{search}");
    let body = curl(&["--user", "alice:secret", &format!("{base}/INBOX/;UID=17")]);
    assert!(
        body.contains("Subject: mail 1") && body.contains("Body of message 1."),
        "{body}"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let f = dir.path().join("m.eml");
    std::fs::write(&f, message(9, "via curl")).expect("write");
    curl(&[
        "--user",
        "alice:secret",
        "-T",
        f.to_str().unwrap_or(""),
        &format!("{base}/INBOX"),
    ]);
    let search = curl(&[
        "--user",
        "alice:secret",
        &format!("{base}/INBOX"),
        "-X",
        "SEARCH SUBJECT \"via curl\"",
    ]);
    assert_eq!(search.trim(), "* SEARCH 4", "{search}");
}

#[test]
fn curl_over_starttls_and_implicit_tls() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let tls = tandem_imap::tls::from_der(
        vec![ck.cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).expect("key"),
    )
    .expect("tls");
    let s = start_with(ImapConfig {
        tls: Some(tls),
        plaintext: tandem_imap::Plaintext::Never,
        ..ImapConfig::default()
    });
    fill_tls(&s);
    let port = s.addr.port();
    let tls_port = s.tls_addr.expect("tls listener").port();
    let mut c = Client::connect(s.addr);
    assert!(
        c.greeting.contains("STARTTLS") && c.greeting.contains("LOGINDISABLED"),
        "{}",
        c.greeting
    );
    let starttls = curl(&[
        "-k",
        "--ssl-reqd",
        "--user",
        "alice:secret",
        &format!("imap://localhost:{port}/INBOX"),
        "-X",
        "SEARCH ALL",
    ]);
    assert_eq!(starttls.trim(), "* SEARCH 1", "{starttls}");
    let implicit = curl(&[
        "-k",
        "--user",
        "alice:secret",
        &format!("imaps://localhost:{tls_port}/INBOX/;UID=1"),
    ]);
    assert!(implicit.contains("Body of message 1."), "{implicit}");
    // Without TLS, curl's login is refused.
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "--user",
            "alice:secret",
            &format!("imap://127.0.0.1:{port}/"),
        ])
        .output()
        .expect("curl");
    assert!(!out.status.success());
    let _ = c.cmd("LOGOUT");
}

fn fill_tls(s: &TestServer) {
    let mut st = s.store.lock().unwrap_or_else(|p| p.into_inner());
    let now = tandem_store::Timestamp(1_800_000_000_000);
    st.create_account("alice", now).expect("account");
    let ib = st.mailbox_id("alice", "INBOX").expect("inbox");
    st.append("alice", &ib, &message(1, "tls"), &[], now.as_secs(), now)
        .expect("append");
}

#[test]
fn python_imaplib() {
    let s = start();
    fill(&s, 4);
    let script = r#"
import imaplib, sys
port = int(sys.argv[1])
M = imaplib.IMAP4("127.0.0.1", port)
M.login("alice", "secret")
typ, data = M.select("INBOX")
assert typ == "OK" and data[0] == b"4", data
typ, data = M.search(None, "UNSEEN")
assert data[0].split() == [b"2", b"3"], data
typ, data = M.fetch("1:*", "(FLAGS RFC822.SIZE ENVELOPE)")
assert typ == "OK" and len([d for d in data if isinstance(d, bytes)]) == 4, data
typ, data = M.uid("FETCH", "1:*", "(BODY.PEEK[])")
bodies = [d[1] for d in data if isinstance(d, tuple)]
assert len(bodies) == 4 and b"Body of message 0." in bodies[0], data
typ, data = M.append("INBOX", "(\\Flagged)", None, b"Subject: py\r\n\r\npython body\r\n")
assert typ == "OK" and b"APPENDUID" in data[0], data
typ, data = M.store("1", "+FLAGS", "(\\Answered)")
assert typ == "OK" and b"\\Answered" in data[0], data
typ, data = M.copy("1:2", "Work")
assert typ == "OK", data
typ, data = M.status("Work", "(MESSAGES)")
assert b"MESSAGES 3" in data[0], data
typ, data = M.list()
assert any(b"Work" in d for d in data), data
M.close()
M.logout()
print("ok")
"#;
    let (out, _) = run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(s.addr.port().to_string()));
    assert_eq!(out.trim(), "ok");
}

#[test]
fn server_survives_clients_that_vanish_mid_command() {
    let s = start();
    fill(&s, 2);
    for _ in 0..20 {
        let mut c = Client::login(s.addr, "alice", "secret");
        c.send_raw(b"x APPEND INBOX {100000}\r\n");
        let _ = c.line();
        c.send_raw(&[b'a'; 1000]);
        drop(c);
    }
    let mut c = Client::login(s.addr, "alice", "secret");
    let r = c.cmd("STATUS INBOX (MESSAGES)");
    assert!(r[0].contains("MESSAGES 2"), "{r:#?}");
}
