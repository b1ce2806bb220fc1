//! Import from maildir (Dovecot's included: `dovecot-uidlist` keeps UIDs and UIDVALIDITY) and
//! mbox, and export to maildir (with a `dovecot-uidlist`, so an export imports back with the
//! same UIDs).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use crate::now;

use tandem_store::{Flag, NewMessage, Store};

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Mailboxes imported into.
    pub mailboxes: usize,
    /// Messages stored.
    pub messages: usize,
    /// Mailboxes whose UIDs and UIDVALIDITY were kept (from `dovecot-uidlist`).
    pub kept_uids: usize,
    /// Files skipped, with the reason.
    pub skipped: Vec<String>,
}

/// Called as messages are stored: (done, total, mailbox).
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, &str);

/// Bare LF line ends become CRLF (IMAP sends messages as stored, and RFC 5322 wants CRLF).
pub fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 40);
    let mut prev = 0u8;
    for &c in raw {
        if c == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(c);
        prev = c;
    }
    out
}

/// Flags from a maildir file name's `:2,` suffix.
pub fn maildir_flags(name: &str) -> Vec<Flag> {
    let Some((_, info)) = name.rsplit_once(":2,") else {
        return Vec::new();
    };
    info.chars()
        .filter_map(|c| match c {
            'S' => Some(Flag::Seen),
            'R' => Some(Flag::Answered),
            'F' => Some(Flag::Flagged),
            'T' => Some(Flag::Deleted),
            'D' => Some(Flag::Draft),
            'P' => Some(Flag::Keyword("$Forwarded".into())),
            _ => None,
        })
        .collect()
}

/// `dovecot-uidlist`: UIDVALIDITY and file base name -> UID.
#[derive(Debug, Default)]
pub struct UidList {
    /// UIDVALIDITY.
    pub uidvalidity: u32,
    /// Base name (before `:`) -> UID.
    pub uids: HashMap<String, u32>,
}

/// Parses a `dovecot-uidlist` (versions 1 and 3).
pub fn parse_uidlist(text: &str) -> Option<UidList> {
    let mut lines = text.lines();
    let header = lines.next()?;
    let mut parts = header.split_whitespace();
    let version = parts.next()?;
    let uidvalidity = match version {
        "1" => parts.next()?.parse().ok()?,
        "3" => parts
            .find_map(|p| p.strip_prefix('V'))
            .and_then(|v| v.parse().ok())?,
        _ => return None,
    };
    let mut uids = HashMap::new();
    for l in lines {
        let l = l.trim();
        if l.is_empty() {
            continue;
        }
        let uid: u32 = l.split_whitespace().next()?.parse().ok()?;
        let file = if version == "3" {
            l.split_once(':').map(|(_, f)| f)?
        } else {
            l.split_whitespace().nth(1)?
        };
        let base = file.split(':').next().unwrap_or(file);
        uids.insert(base.to_owned(), uid);
    }
    Some(UidList { uidvalidity, uids })
}

/// One maildir folder and the mailbox name it imports as.
fn folders(root: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let is_maildir = |p: &Path| p.join("cur").is_dir() || p.join("new").is_dir();
    if !root.is_dir() {
        return Err(format!("{} is not a directory", root.display()));
    }
    let mut out = Vec::new();
    if is_maildir(root) {
        out.push(("INBOX".to_owned(), root.to_owned()));
    }
    let mut subs: Vec<(String, PathBuf)> = std::fs::read_dir(root)
        .map_err(|e| format!("{}: {e}", root.display()))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let folder = name.strip_prefix('.')?;
            (!folder.is_empty() && is_maildir(&e.path()))
                .then(|| (folder.replace('.', "/"), e.path()))
        })
        .collect();
    subs.sort();
    out.extend(subs);
    if out.is_empty() {
        return Err(format!(
            "{} is not a maildir (no cur/ or new/, no .Folder subdirectories)",
            root.display()
        ));
    }
    Ok(out)
}

fn mailbox(
    store: &mut Store,
    account: &str,
    name: &str,
) -> Result<tandem_store::MailboxId, String> {
    match store.mailbox_id(account, name) {
        Ok(id) => Ok(id),
        Err(_) => store
            .create_mailbox(account, name, now())
            .map_err(|e| format!("creating mailbox {name}: {e}")),
    }
}

struct Item {
    uid: Option<u32>,
    raw: Vec<u8>,
    flags: Vec<Flag>,
    date: i64,
}

#[allow(clippy::too_many_arguments)]
/// Stores the items of one mailbox: with their UIDs when every one has a UID and the mailbox
/// never held mail, else appended in date order.
fn store_items(
    store: &mut Store,
    account: &str,
    name: &str,
    uidvalidity: Option<u32>,
    mut items: Vec<Item>,
    report: &mut Report,
    progress: Progress<'_>,
    done: &mut usize,
    total: usize,
) -> Result<(), String> {
    let id = mailbox(store, account, name)?;
    let keep = uidvalidity.is_some()
        && !items.is_empty()
        && items.iter().all(|i| i.uid.is_some())
        && store
            .uids(account, &id)
            .map(|u| u.is_empty())
            .unwrap_or(false)
        && store
            .status(account, &id)
            .map(|s| s.uidnext <= 1)
            .unwrap_or(false);
    if keep {
        items.sort_by_key(|i| i.uid);
        items.dedup_by_key(|i| i.uid);
        let msgs: Vec<(u32, NewMessage<'_>)> = items
            .iter()
            .map(|i| {
                (
                    i.uid.unwrap_or(0),
                    NewMessage {
                        raw: &i.raw,
                        flags: i.flags.clone(),
                        internal_date: i.date,
                    },
                )
            })
            .collect();
        store
            .import_batch(account, &id, uidvalidity, &msgs, now())
            .map_err(|e| format!("importing {name}: {e}"))?;
        report.kept_uids += 1;
        *done += items.len();
        progress(*done, total, name);
    } else {
        items.sort_by_key(|i| (i.uid.unwrap_or(u32::MAX), i.date));
        for chunk in items.chunks(500) {
            let msgs: Vec<NewMessage<'_>> = chunk
                .iter()
                .map(|i| NewMessage {
                    raw: &i.raw,
                    flags: i.flags.clone(),
                    internal_date: i.date,
                })
                .collect();
            store
                .append_batch(account, &id, &msgs, now())
                .map_err(|e| format!("importing {name}: {e}"))?;
            *done += chunk.len();
            progress(*done, total, name);
        }
    }
    report.mailboxes += 1;
    report.messages += items.len();
    Ok(())
}

/// Imports a maildir (Maildir++ layout: the root is INBOX, `.A.B` is `A/B`) into `account`.
pub fn import_maildir(
    store: &mut Store,
    account: &str,
    root: &Path,
    max_size: u64,
    progress: Progress<'_>,
) -> Result<Report, String> {
    store
        .create_account(account, now())
        .map_err(|e| format!("account {account}: {e}"))?;
    let folders = folders(root)?;
    let mut plan = Vec::new();
    let mut total = 0;
    for (name, dir) in folders {
        let mut files = Vec::new();
        for sub in ["cur", "new"] {
            if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
                files.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_file()));
            }
        }
        total += files.len();
        let uidlist = std::fs::read_to_string(dir.join("dovecot-uidlist"))
            .ok()
            .and_then(|t| parse_uidlist(&t));
        plan.push((name, files, uidlist));
    }
    let mut report = Report::default();
    let mut done = 0;
    for (name, files, uidlist) in plan {
        let mut items = Vec::new();
        for f in files {
            let fname = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let meta = match std::fs::metadata(&f) {
                Ok(m) => m,
                Err(e) => {
                    report.skipped.push(format!("{}: {e}", f.display()));
                    continue;
                }
            };
            if meta.len() > max_size {
                report
                    .skipped
                    .push(format!("{}: larger than {max_size} bytes", f.display()));
                continue;
            }
            let raw = match std::fs::read(&f) {
                Ok(r) => crlf(&r),
                Err(e) => {
                    report.skipped.push(format!("{}: {e}", f.display()));
                    continue;
                }
            };
            let base = fname.split(':').next().unwrap_or(&fname).to_owned();
            let date = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs() as i64);
            items.push(Item {
                uid: uidlist.as_ref().and_then(|u| u.uids.get(&base).copied()),
                raw,
                flags: maildir_flags(&fname),
                date,
            });
        }
        let uv = uidlist.as_ref().map(|u| u.uidvalidity);
        store_items(
            store,
            account,
            &name,
            uv,
            items,
            &mut report,
            progress,
            &mut done,
            total,
        )?;
    }
    Ok(report)
}

/// The date of an mbox `From ` line (`From sender Sat Jan  3 01:05:34 1996`).
fn from_line_date(line: &str) -> Option<i64> {
    let rest = line.strip_prefix("From ")?;
    let (_, date) = rest.trim_end().split_once(' ')?;
    // The weekday is left out: a wrong one (common in hand-made files) must not lose the date.
    let date = date
        .split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ");
    chrono::NaiveDateTime::parse_from_str(&date, "%b %d %H:%M:%S %Y")
        .ok()
        .map(|d| d.and_utc().timestamp())
}

/// Flags from mbox `Status:` / `X-Status:` headers.
fn mbox_flags(msg: &[u8]) -> Vec<Flag> {
    let end = msg
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(msg.len());
    let head = String::from_utf8_lossy(&msg[..end]);
    let mut flags = Vec::new();
    for l in head.lines() {
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("status:") {
            if v.contains('r') {
                flags.push(Flag::Seen);
            }
        } else if let Some(v) = lower.strip_prefix("x-status:") {
            for (c, f) in [
                ('a', Flag::Answered),
                ('f', Flag::Flagged),
                ('t', Flag::Draft),
                ('d', Flag::Deleted),
            ] {
                if v.contains(c) {
                    flags.push(f);
                }
            }
        }
    }
    flags
}

/// Imports an mbox file (mboxrd or mboxo) into `mailbox` of `account`.
pub fn import_mbox(
    store: &mut Store,
    account: &str,
    path: &Path,
    mailbox_name: &str,
    max_size: u64,
    progress: Progress<'_>,
) -> Result<Report, String> {
    store
        .create_account(account, now())
        .map_err(|e| format!("account {account}: {e}"))?;
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut r = BufReader::new(f);
    let mut items = Vec::new();
    let mut report = Report::default();
    let mut cur: Option<(Vec<u8>, i64)> = None;
    let mut prev_blank = true;
    let mut line = Vec::new();
    let finish = |cur: Option<(Vec<u8>, i64)>, items: &mut Vec<Item>, report: &mut Report| {
        if let Some((mut raw, date)) = cur {
            // The blank line before the next From_ belongs to the separator.
            if raw.ends_with(b"\n\n") {
                raw.pop();
            }
            let raw = crlf(&raw);
            if raw.len() as u64 > max_size {
                report
                    .skipped
                    .push(format!("a message of {} bytes (over the limit)", raw.len()));
                return;
            }
            items.push(Item {
                uid: None,
                flags: mbox_flags(&raw),
                raw,
                date,
            });
        }
    };
    loop {
        line.clear();
        let n = r
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        if prev_blank && line.starts_with(b"From ") {
            finish(cur.take(), &mut items, &mut report);
            let date = from_line_date(&String::from_utf8_lossy(&line)).unwrap_or(0);
            cur = Some((Vec::new(), date));
            prev_blank = false;
            continue;
        }
        prev_blank = line == b"\n" || line == b"\r\n";
        let Some((raw, _)) = cur.as_mut() else {
            if !line.iter().all(|c| c.is_ascii_whitespace()) {
                return Err(format!(
                    "{} is not an mbox file (it does not start with a \"From \" line)",
                    path.display()
                ));
            }
            continue;
        };
        // mboxrd: ">From ", ">>From " ... lose one '>'.
        let gt = line.iter().take_while(|&&c| c == b'>').count();
        if gt > 0 && line[gt..].starts_with(b"From ") {
            raw.extend_from_slice(&line[1..]);
        } else {
            raw.extend_from_slice(&line);
        }
    }
    finish(cur.take(), &mut items, &mut report);
    let total = items.len();
    let mut done = 0;
    for i in &mut items {
        if i.date == 0 {
            i.date = now().as_secs();
        }
    }
    store_items(
        store,
        account,
        mailbox_name,
        None,
        items,
        &mut report,
        progress,
        &mut done,
        total,
    )?;
    Ok(report)
}

/// Exports every mailbox of `account` to a Maildir++ tree at `root`, with a `dovecot-uidlist`
/// per folder. Returns the number of messages written.
pub fn export_maildir(
    store: &Store,
    account: &str,
    root: &Path,
    progress: Progress<'_>,
) -> Result<usize, String> {
    let mailboxes = store
        .list_mailboxes(account)
        .map_err(|e| format!("account {account}: {e}"))?;
    let total: usize = mailboxes
        .iter()
        .map(|m| store.uids(account, &m.id).map_or(0, |u| u.len()))
        .sum();
    let mut done = 0;
    for m in mailboxes {
        let name = m.name.as_str().to_owned();
        let dir = if name == "INBOX" {
            root.to_owned()
        } else {
            root.join(format!(".{}", name.replace('/', ".")))
        };
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let st = store.status(account, &m.id).map_err(|e| e.to_string())?;
        let mut uidlist = format!("3 V{} N{}\n", st.uidvalidity, st.uidnext);
        for msg in store.messages(account, &m.id).map_err(|e| e.to_string())? {
            let raw = store
                .message_bytes(&msg.blob)
                .map_err(|e| format!("{name} UID {}: {e}", msg.uid))?;
            let mut flags: Vec<char> = msg
                .flags
                .iter()
                .filter_map(|f| match f {
                    Flag::Draft => Some('D'),
                    Flag::Flagged => Some('F'),
                    Flag::Keyword(k) if k == "$Forwarded" => Some('P'),
                    Flag::Answered => Some('R'),
                    Flag::Seen => Some('S'),
                    Flag::Deleted => Some('T'),
                    Flag::Keyword(_) => None,
                })
                .collect();
            flags.sort_unstable();
            let base = format!("{}.T{}.tandem", msg.internal_date, msg.uid);
            let file = dir
                .join("cur")
                .join(format!("{base}:2,{}", flags.iter().collect::<String>()));
            std::fs::write(&file, &raw).map_err(|e| format!("{}: {e}", file.display()))?;
            if let Ok(f) = std::fs::File::options().write(true).open(&file) {
                let t = UNIX_EPOCH + Duration::from_secs(msg.internal_date.max(0) as u64);
                let _ = f.set_modified(t);
            }
            uidlist.push_str(&format!("{} :{base}\n", msg.uid));
            done += 1;
            progress(done, total, &name);
        }
        std::fs::write(dir.join("dovecot-uidlist"), uidlist)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uidlists_flags_and_from_lines() {
        let u = parse_uidlist("3 V1796407373 N5 G3085f01b7f11094c501100008c4a11c1\n1 W1234 :1700000000.M1P2.host\n4 :1700000001.M2P2.host:2,S\n").unwrap();
        assert_eq!(u.uidvalidity, 1_796_407_373);
        assert_eq!(u.uids.get("1700000001.M2P2.host"), Some(&4));
        let v1 = parse_uidlist("1 1234 3\n2 abc\n").unwrap();
        assert_eq!((v1.uidvalidity, v1.uids.get("abc")), (1234, Some(&2)));
        assert_eq!(
            maildir_flags("x:2,FRS"),
            vec![Flag::Flagged, Flag::Answered, Flag::Seen]
        );
        assert_eq!(
            from_line_date("From a@b Sat Jan  3 01:05:34 1996\n"),
            Some(820_631_134)
        );
        assert_eq!(crlf(b"a\nb\r\nc\n"), b"a\r\nb\r\nc\r\n");
    }
}
