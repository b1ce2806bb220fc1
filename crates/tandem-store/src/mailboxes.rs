//! Accounts and mailboxes: create, rename, delete, list, subscribe, special-use roles.

use automerge::{ROOT, ScalarValue, transaction::Transactable};
use sha2::{Digest, Sha256};

use crate::clock::Timestamp;
use crate::doc::{self, registry_key};
use crate::error::{Error, Result};
use crate::name::MailboxName;
use crate::store::Store;
use crate::{MailboxId, MailboxInfo, SpecialUse};

/// UIDVALIDITY generation of INBOX and of the default special-use mailboxes.
const FIRST_GENERATION: u32 = 1 << 16;

/// The mailboxes every account starts with: fixed ids and UIDVALIDITY, so that two nodes that
/// both create an account converge on the same mailboxes.
const DEFAULTS: [(&str, &str, Option<SpecialUse>); 6] = [
    ("inbox", "INBOX", None),
    ("sent", "Sent", Some(SpecialUse::Sent)),
    ("drafts", "Drafts", Some(SpecialUse::Drafts)),
    ("trash", "Trash", Some(SpecialUse::Trash)),
    ("junk", "Junk", Some(SpecialUse::Junk)),
    ("archive", "Archive", Some(SpecialUse::Archive)),
];

/// A registry write: key and value.
type Put = (String, ScalarValue);

impl Store {
    /// Creates `account` with INBOX, Sent, Drafts, Trash, Junk and Archive (subscribed).
    /// Does nothing if the account exists.
    pub fn create_account(&mut self, account: &str, now: Timestamp) -> Result<()> {
        if !doc::valid_account(account) {
            return Err(Error::InvalidAccountName(account.to_owned()));
        }
        if self
            .accounts
            .get(account)
            .is_some_and(|a| a.mailboxes.contains_key("inbox"))
        {
            return Ok(());
        }
        let stamp = self.hlc.tick(now).0 as i64;
        let mut puts: Vec<Put> = Vec::new();
        for (id, name, role) in DEFAULTS {
            let uv = uidvalidity_for(FIRST_GENERATION, id);
            puts.push((format!("mb.{id}.n"), name.into()));
            puts.push((format!("mb.{id}.v"), ScalarValue::Uint(uv.into())));
            if let Some(r) = role {
                puts.push((format!("mb.{id}.r"), r.as_str().into()));
            }
            puts.push((format!("hw.{name}"), ScalarValue::Uint(uv.into())));
            puts.push((format!("sub.{name}"), ScalarValue::Int(stamp)));
        }
        self.registry_write(account, puts, now)
    }

    /// Accounts in this store.
    pub fn accounts(&self) -> Vec<String> {
        self.accounts
            .iter()
            .filter(|(_, a)| a.mailboxes.contains_key("inbox"))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The id of the mailbox clients see as `name`.
    pub fn mailbox_id(&self, account: &str, name: &str) -> Result<MailboxId> {
        let name = MailboxName::new(name)?;
        let acct = self.account(account)?;
        acct.names
            .get(name.as_str())
            .map(|id| MailboxId(id.clone()))
            .ok_or_else(|| Error::NoSuchMailbox(name.to_string()))
    }

    /// Every mailbox of `account`, sorted by name.
    pub fn list_mailboxes(&self, account: &str) -> Result<Vec<MailboxInfo>> {
        let acct = self.account(account)?;
        let mut out = Vec::new();
        for (name, id) in &acct.names {
            let Some(m) = acct.mailboxes.get(id) else {
                continue;
            };
            let Some(d) = &m.doc else { continue };
            let mn = MailboxName::trusted(name.clone());
            let has_children = acct
                .names
                .range(format!("{name}/")..)
                .next()
                .is_some_and(|(n, _)| n.starts_with(&format!("{name}/")));
            out.push(MailboxInfo {
                id: MailboxId(id.clone()),
                subscribed: acct.registry.subscriptions.contains(name),
                name: mn,
                uidvalidity: d.uidvalidity,
                role: d.role.as_deref().and_then(SpecialUse::parse),
                has_children,
                recovered: m.recovered,
            });
        }
        Ok(out)
    }

    /// Names subscribed to (they need not exist, RFC 3501 6.3.6).
    pub fn subscriptions(&self, account: &str) -> Result<Vec<String>> {
        Ok(self
            .account(account)?
            .registry
            .subscriptions
            .iter()
            .cloned()
            .collect())
    }

    /// Creates mailbox `name`, and any missing parents (RFC 3501 6.3.3).
    pub fn create_mailbox(
        &mut self,
        account: &str,
        name: &str,
        now: Timestamp,
    ) -> Result<MailboxId> {
        let name = MailboxName::new(name)?;
        let acct = self.account(account)?;
        if acct.names.contains_key(name.as_str()) {
            return Err(Error::MailboxExists(name.to_string()));
        }
        let mut puts = Vec::new();
        let mut id = String::new();
        for n in name.ancestors().into_iter().chain([name.clone()]) {
            if acct.names.contains_key(n.as_str()) {
                continue;
            }
            let generation = next_generation(high_water(acct, n.as_str()))?;
            id = mailbox_id_for(n.as_str(), generation);
            let uv = uidvalidity_for(generation, &id);
            puts.push((format!("mb.{id}.n"), n.as_str().into()));
            puts.push((format!("mb.{id}.v"), ScalarValue::Uint(uv.into())));
            puts.push((format!("hw.{n}"), ScalarValue::Uint(uv.into())));
        }
        self.registry_write(account, puts, now)?;
        Ok(MailboxId(id))
    }

    /// Renames mailbox `from` to `to`; its children follow (RFC 3501 6.3.5). The mailbox keeps
    /// its id, UIDs and — unless `to` was used by another mailbox before — its UIDVALIDITY.
    pub fn rename_mailbox(
        &mut self,
        account: &str,
        from: &str,
        to: &str,
        now: Timestamp,
    ) -> Result<()> {
        let from = MailboxName::new(from)?;
        let to = MailboxName::new(to)?;
        if from.is_inbox() {
            return Err(Error::InboxImmutable("renamed"));
        }
        let acct = self.account(account)?;
        let Some(root_id) = acct.names.get(from.as_str()) else {
            return Err(Error::NoSuchMailbox(from.to_string()));
        };
        if acct.mailboxes.get(root_id).is_some_and(|m| m.recovered) {
            return Err(Error::Recovered(from.to_string()));
        }
        if acct.names.contains_key(to.as_str()) {
            return Err(Error::MailboxExists(to.to_string()));
        }
        if to.is_inside(&from) {
            return Err(Error::InvalidMailboxName {
                name: to.to_string(),
                reason: "cannot move a mailbox inside itself",
            });
        }
        let mut puts = Vec::new();
        let moving: Vec<(String, MailboxName)> = acct
            .names
            .iter()
            .filter_map(|(n, id)| {
                let n = MailboxName::trusted(n.clone());
                (n == from || n.is_inside(&from)).then(|| (id.clone(), n))
            })
            .collect();
        for (id, old) in moving {
            let new = old.reparent(&from, &to)?;
            let Some(d) = acct.mailboxes.get(&id).and_then(|m| m.doc.as_ref()) else {
                continue;
            };
            let hw = high_water(acct, new.as_str());
            let mut uv = d.uidvalidity;
            if uv <= hw {
                // The name was used before: clients may hold a cache for it under a lower
                // UIDVALIDITY, so this mailbox must show a greater one there (RFC 3501 2.3.1.1).
                uv = uidvalidity_for(next_generation(hw)?, &id);
                puts.push((format!("mb.{id}.v"), ScalarValue::Uint(uv.into())));
            }
            puts.push((format!("mb.{id}.n"), new.as_str().into()));
            puts.push((format!("hw.{new}"), ScalarValue::Uint(uv.max(hw).into())));
            // Keep the old name's high-water mark too: it may have come from this mailbox's
            // UIDVALIDITY alone (after a rename race), and a later CREATE of the old name must
            // still get a greater one.
            let old_hw = high_water(acct, old.as_str());
            puts.push((format!("hw.{old}"), ScalarValue::Uint(old_hw.into())));
        }
        for anc in to.ancestors() {
            if !acct.names.contains_key(anc.as_str()) && !anc.is_inside(&from) && anc != from {
                let generation = next_generation(high_water(acct, anc.as_str()))?;
                let id = mailbox_id_for(anc.as_str(), generation);
                let uv = uidvalidity_for(generation, &id);
                puts.push((format!("mb.{id}.n"), anc.as_str().into()));
                puts.push((format!("mb.{id}.v"), ScalarValue::Uint(uv.into())));
                puts.push((format!("hw.{anc}"), ScalarValue::Uint(uv.into())));
            }
        }
        self.registry_write(account, puts, now)
    }

    /// Deletes mailbox `name`: its messages are expunged and it disappears. Refused for INBOX
    /// and for a mailbox with children.
    ///
    /// If another node delivers into the mailbox concurrently, those messages are not lost: after
    /// the merge the mailbox shows up as `Recovered/<name>` holding them.
    pub fn delete_mailbox(&mut self, account: &str, name: &str, now: Timestamp) -> Result<()> {
        let name = MailboxName::new(name)?;
        if name.is_inbox() {
            return Err(Error::InboxImmutable("deleted"));
        }
        let acct = self.account(account)?;
        let Some(id) = acct.names.get(name.as_str()).cloned() else {
            return Err(Error::NoSuchMailbox(name.to_string()));
        };
        if acct
            .names
            .keys()
            .any(|n| MailboxName::trusted(n.clone()).is_inside(&name))
        {
            return Err(Error::HasChildren(name.to_string()));
        }
        let mut live: Vec<u32> = acct
            .mailboxes
            .get(&id)
            .map(|m| {
                m.view
                    .instances
                    .iter()
                    // Only what this node has shown: a message still waiting for its body was
                    // never seen by whoever deletes, so it survives in a recovery folder (I6).
                    .filter(|(_, i)| i.visible())
                    .map(|(o, _)| *o)
                    .collect()
            })
            .unwrap_or_default();
        live.sort_unstable(); // deterministic change bytes, for reproducible simulations
        let stamp = self.hlc.tick(now);
        let mut record = Vec::new();
        let mut touched = Vec::new();
        let mut by_shard: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
        for o in live {
            by_shard
                .entry(doc::shard_key(account, &id, o))
                .or_default()
                .push(o);
        }
        for (key, origs) in &by_shard {
            let d = self.doc_mut(key)?;
            let mut tx = d.transaction();
            for o in origs {
                tx.put(ROOT, format!("{o}.x"), ScalarValue::Uint(stamp.0))
                    .map_err(|e| Error::corrupt(key, e))?;
            }
            tx.commit_with(Store::commit_opts(now));
            if let Some(c) = d.get_last_local_change() {
                record.push((key.clone(), c.raw_bytes().to_vec()));
            }
            touched.push((key.clone(), origs.clone()));
        }
        let rkey = registry_key(account);
        let d = self.doc_mut(&rkey)?;
        let mut tx = d.transaction();
        tx.put(ROOT, format!("mb.{id}.x"), ScalarValue::Uint(stamp.0))
            .map_err(|e| Error::corrupt(&rkey, e))?;
        tx.commit_with(Store::commit_opts(now));
        if let Some(c) = d.get_last_local_change() {
            record.push((rkey.clone(), c.raw_bytes().to_vec()));
        }
        self.persist(record)?;
        for (key, origs) in touched {
            self.refresh_instances(&key, origs)?;
        }
        self.refresh_registry(&rkey)?;
        self.maybe_compact()
    }

    /// Subscribes to or unsubscribes from `name` (which need not exist).
    pub fn set_subscribed(
        &mut self,
        account: &str,
        name: &str,
        on: bool,
        now: Timestamp,
    ) -> Result<()> {
        let name = MailboxName::new(name)?;
        self.account(account)?;
        let s = self.hlc.tick(now).0 as i64;
        let v = if on { s } else { -s };
        self.registry_write(
            account,
            vec![(format!("sub.{name}"), ScalarValue::Int(v))],
            now,
        )
    }

    /// Sets or clears the special-use role of mailbox `name` (RFC 6154).
    pub fn set_role(
        &mut self,
        account: &str,
        name: &str,
        role: Option<SpecialUse>,
        now: Timestamp,
    ) -> Result<()> {
        let id = self.mailbox_id(account, name)?;
        let v = role.map_or("", |r| r.as_str());
        self.registry_write(account, vec![(format!("mb.{}.r", id.0), v.into())], now)
    }

    pub(crate) fn account(&self, account: &str) -> Result<&crate::store::AccountState> {
        self.accounts
            .get(account)
            .filter(|a| a.mailboxes.contains_key("inbox"))
            .ok_or_else(|| Error::NoSuchAccount(account.to_owned()))
    }

    /// Writes `puts` to the account's registry in one durable change.
    /// Sets a mailbox's UIDVALIDITY (for [`Store::import_batch`]); raises the name's
    /// high-water mark so that a later re-creation of the name still gets a new value.
    pub(crate) fn set_uidvalidity(
        &mut self,
        account: &str,
        mailbox: &MailboxId,
        uv: u32,
        now: Timestamp,
    ) -> Result<()> {
        let acct = self.account(account)?;
        let name = acct
            .mailboxes
            .get(&mailbox.0)
            .and_then(|m| m.display.clone())
            .ok_or_else(|| Error::NoSuchMailbox(mailbox.0.clone()))?;
        let hw = high_water(acct, &name).max(uv);
        let puts = vec![
            (format!("mb.{}.v", mailbox.0), ScalarValue::Uint(uv.into())),
            (format!("hw.{name}"), ScalarValue::Uint(hw.into())),
        ];
        self.registry_write(account, puts, now)
    }

    fn registry_write(&mut self, account: &str, puts: Vec<Put>, now: Timestamp) -> Result<()> {
        if puts.is_empty() {
            return Ok(());
        }
        let key = registry_key(account);
        let d = self.doc_mut(&key)?;
        let mut tx = d.transaction();
        for (k, v) in puts {
            tx.put(ROOT, k, v).map_err(|e| Error::corrupt(&key, e))?;
        }
        tx.commit_with(Store::commit_opts(now));
        let record = d
            .get_last_local_change()
            .map(|c| vec![(key.clone(), c.raw_bytes().to_vec())])
            .unwrap_or_default();
        self.persist(record)?;
        // refresh_registry queues the Mailboxes event.
        self.refresh_registry(&key)?;
        self.maybe_compact()
    }
}

/// The first UIDVALIDITY of the next generation of a name whose high-water mark is `hw`.
fn next_generation(hw: u32) -> Result<u32> {
    let generation = (hw >> 16) + 1;
    if generation > 0xffff {
        return Err(Error::InvalidMailboxName {
            name: String::new(),
            reason: "name re-created too many times",
        });
    }
    Ok(generation << 16)
}

/// The largest UIDVALIDITY ever used under `name`: the registry's high-water mark, or a mailbox
/// now carrying that name (a rename race can pair one node's name with the other's UIDVALIDITY).
fn high_water(acct: &crate::store::AccountState, name: &str) -> u32 {
    let hw = acct.registry.high_water.get(name).copied().unwrap_or(0);
    acct.registry
        .mailboxes
        .iter()
        .filter(|m| m.name == name)
        .map(|m| m.uidvalidity)
        .fold(hw, u32::max)
}

/// UIDVALIDITY of mailbox `id` in `generation` (a multiple of 2^16): the generation in the high
/// half, 1..=65535 derived from the id in the low half, so that two different mailboxes that
/// race onto one name get different values (except with probability 2^-16), while two nodes
/// creating the same name concurrently (same id) agree.
fn uidvalidity_for(generation: u32, id: &str) -> u32 {
    generation | (1 + u32::from_le_bytes(hash4(id)) % 0xffff)
}

/// Id of a mailbox created as `name` in UIDVALIDITY generation `uidvalidity`: deterministic, so two nodes creating the
/// same name from the same history create the same mailbox.
fn mailbox_id_for(name: &str, uidvalidity: u32) -> String {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0]);
    h.update(uidvalidity.to_be_bytes());
    crate::codec::hex(&h.finalize()[..8])
}

fn hash4(s: &str) -> [u8; 4] {
    let d = Sha256::digest(s.as_bytes());
    [d[0], d[1], d[2], d[3]]
}
