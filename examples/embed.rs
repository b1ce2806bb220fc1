//! Embedding the Tandem store: two replicas in one process.
//!
//! Opens two stores (node A and node B) in a data directory, delivers mail to A, files and flags
//! it, syncs the replicas, and shows that B sees the same mailboxes, UIDs and flags — then makes
//! both sides write concurrently and syncs again.
//!
//! Run: `cargo run --release --example embed [DATA_DIR]` (default: a fresh folder under the
//! system temp dir, printed at the start).

use std::time::{SystemTime, UNIX_EPOCH};

use tandem_store::{Flag, FlagOp, Store, StoreConfig, Timestamp};

fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Timestamp(ms)
}

fn sample(n: u32, subject: &str) -> Vec<u8> {
    format!(
        "From: Carol <carol@example.org>\r\nTo: demo@example.org\r\nSubject: {subject}\r\nMessage-ID: <sample-{n}@example.org>\r\nDate: Fri, 4 Dec 2026 10:0{n}:00 +0000\r\n\r\nSample message number {n}.\r\n"
    )
    .into_bytes()
}

fn show(label: &str, store: &Store) -> Result<(), tandem_store::Error> {
    println!("{label}:");
    for mb in store.list_mailboxes("demo")? {
        let st = store.status("demo", &mb.id)?;
        println!(
            "  {:<10} UIDVALIDITY {:<8} UIDNEXT {:<5} HIGHESTMODSEQ {:<20} {} message(s)",
            mb.name.as_str(),
            st.uidvalidity,
            st.uidnext,
            st.highest_modseq.0,
            st.exists
        );
        for m in store.messages("demo", &mb.id)? {
            let meta = store.message_meta(&m.blob)?;
            let flags: Vec<String> = m.flags.iter().map(|f| f.to_string()).collect();
            println!(
                "      UID {:<4} {:<28} flags [{}]",
                m.uid,
                meta.envelope.subject.clone().unwrap_or_default(),
                flags.join(" ")
            );
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = match std::env::args().nth(1) {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            std::env::temp_dir().join(format!("tandem-demo-{}-{}", std::process::id(), now().0))
        }
    };
    println!("data directory: {}", dir.display());
    let mut a = Store::open(
        dir.join("node-a"),
        StoreConfig {
            slot: 0,
            ..StoreConfig::default()
        },
    )?;
    let mut b = Store::open(
        dir.join("node-b"),
        StoreConfig {
            slot: 1,
            ..StoreConfig::default()
        },
    )?;
    a.create_account("demo", now())?;
    b.create_account("demo", now())?;

    let inbox = a.mailbox_id("demo", "INBOX")?;
    for (n, subject) in [
        (1, "Welcome to Tandem"),
        (2, "Lunch on Friday?"),
        (3, "Quarterly report"),
    ] {
        let added = a.append(
            "demo",
            &inbox,
            &sample(n, subject),
            &[],
            now().as_secs(),
            now(),
        )?;
        println!(
            "delivered to node A: UID {} (acknowledged after fsync)",
            added.uid
        );
    }
    a.store_flags(
        "demo",
        &inbox,
        &[1],
        FlagOp::Add,
        &[Flag::Seen],
        None,
        now(),
    )?;
    let work = a.create_mailbox("demo", "Work", now())?;
    a.move_messages("demo", &inbox, &[33], &work, now())?;

    Store::sync_pair(&mut a, &mut b, now())?;
    println!();
    show("node B after syncing with A", &b)?;

    // A split: both sides take writes, then heal.
    b.append(
        "demo",
        &inbox,
        &sample(4, "Written on B during a split"),
        &[],
        now().as_secs(),
        now(),
    )?;
    a.append(
        "demo",
        &inbox,
        &sample(5, "Written on A during a split"),
        &[],
        now().as_secs(),
        now(),
    )?;
    b.store_flags(
        "demo",
        &inbox,
        &[17],
        FlagOp::Add,
        &[Flag::Flagged],
        None,
        now(),
    )?;
    Store::sync_pair(&mut a, &mut b, now())?;
    println!();
    show("node A after the split healed", &a)?;
    println!();
    show("node B after the split healed", &b)?;
    Ok(())
}
