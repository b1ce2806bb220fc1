//! [`Session`]: one side of a sync connection, as a state machine without I/O or clock.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use tandem_store::{BlobHash, ChangeHash, Error as StoreError, PartProgress, Store, Timestamp};

use crate::frame::{CloseCode, Frame, PROTOCOL_VERSION};

/// How a session behaves.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Send a full manifest at least this often (milliseconds), so that anything lost in a
    /// cut connection or dropped by a peer is found again (anti-entropy).
    pub resync_interval_ms: i64,
    /// At most this many bodies are requested from one peer at a time (back-pressure: a
    /// first sync of 100,000 messages does not queue 100,000 bodies at once).
    pub max_blobs_in_flight: usize,
    /// One answer to WantBlobs carries bodies up to about this many bytes (at least one body);
    /// the rest are answered with Later and asked for again as these arrive. With
    /// `max_blobs_in_flight` this bounds the body bytes queued for one peer however large the
    /// messages are.
    pub max_blob_bytes_per_answer: usize,
    /// Bodies larger than this travel as BlobPart frames of this many bytes, one part in
    /// flight per body, so neither side holds a large body in a frame, and a cut transfer
    /// resumes where it stopped.
    pub part_bytes: usize,
    /// At most this many change bytes go in one Changes frame; more are split.
    pub max_changes_per_frame: usize,
    /// Changes whose message bodies have not arrived are held back this long (milliseconds)
    /// before they are applied anyway (their messages then stay hidden until the bodies come).
    pub hold_for_bodies_ms: i64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            resync_interval_ms: 5_000,
            max_blobs_in_flight: 64,
            max_blob_bytes_per_answer: 16 << 20,
            part_bytes: 1 << 20,
            max_changes_per_frame: 8 << 20,
            hold_for_bodies_ms: 30_000,
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {reason}")]
pub struct Closed {
    /// The close code (sent to the peer, or received from it).
    pub code: CloseCode,
    /// What happened.
    pub reason: String,
}

/// Counters, for status output and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Changes received and applied.
    pub changes_in: u64,
    /// Changes sent.
    pub changes_out: u64,
    /// Bodies received and stored.
    pub blobs_in: u64,
    /// Bodies sent.
    pub blobs_out: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Our Hello is queued; waiting for the peer's.
    Handshake,
    Ready,
    Closed,
}

/// One side of a sync connection between two nodes.
///
/// Sans-IO, in the manner of quinn-proto: feed bytes-turned-frames in with
/// [`Session::handle_frame`], tell it about time with [`Session::handle_timeout`] (at or after
/// [`Session::poll_timeout`]) and about local writes with [`Session::local_change`]; then drain
/// [`Session::poll_frame`] and send what it returns, in order. It never blocks, reads a clock or
/// touches a socket, so a simulation can drive many sessions over a virtual network.
///
/// The protocol tolerates lost, duplicated and reordered frames: every frame is idempotent, and
/// each side re-sends its manifest every `resync_interval_ms`, to which the other answers with
/// whatever the first still lacks. So after any disruption, state converges once frames flow.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    phase: Phase,
    peer_slot: Option<u8>,
    /// What the peer is known to have, per document: heads it announced or that we sent.
    peer_heads: HashMap<String, Vec<ChangeHash>>,
    /// Bodies requested from this peer and not yet received, with when they were asked for.
    /// A request is repeated only after `3 × resync_interval_ms` (a slow link is not flooded).
    blobs_requested: BTreeMap<BlobHash, Timestamp>,
    /// Bodies this peer said it does not have; not asked of it again until its next manifest.
    peer_lacks: BTreeSet<BlobHash>,
    /// Batches of changes waiting for their bodies, oldest first. They are applied in order, each
    /// as one batch once all its bodies are here, so a first sync shows messages in UID order
    /// and never has to lift one above another that merely arrived first.
    held: VecDeque<Held>,
    out: VecDeque<Frame>,
    /// Our changes the peer reported as applied with their bodies, not yet taken by the driver.
    applied_by_peer: Vec<ChangeHash>,
    next_resync: Option<Timestamp>,
    closed: Option<Closed>,
    stats: SessionStats,
}

impl Session {
    /// A new session; its Hello is ready in [`Session::poll_frame`].
    pub fn new(store: &Store, cfg: SessionConfig) -> Session {
        let mut out = VecDeque::new();
        out.push_back(Frame::Hello {
            version: PROTOCOL_VERSION,
            slot: store.slot(),
        });
        Session {
            cfg,
            phase: Phase::Handshake,
            peer_slot: None,
            peer_heads: HashMap::new(),
            blobs_requested: BTreeMap::new(),
            peer_lacks: BTreeSet::new(),
            held: VecDeque::new(),
            out,
            applied_by_peer: Vec::new(),
            next_resync: None,
            closed: None,
            stats: SessionStats::default(),
        }
    }

    /// Hashes of our changes the peer has applied durably, with their bodies, since the last
    /// call (from its Applied frames).
    pub fn take_applied_by_peer(&mut self) -> Vec<ChangeHash> {
        std::mem::take(&mut self.applied_by_peer)
    }

    /// The next frame to send, if any.
    pub fn poll_frame(&mut self) -> Option<Frame> {
        self.out.pop_front()
    }

    /// When [`Session::handle_timeout`] wants to be called next.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let release = self
            .held
            .front()
            .map(|h| Timestamp(h.since.0 + self.cfg.hold_for_bodies_ms));
        match (self.next_resync, release) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Why the session ended, once it has.
    pub fn closed(&self) -> Option<&Closed> {
        self.closed.as_ref()
    }

    /// Whether the handshake is done (a driver closes connections that stay silent).
    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    /// The peer's slot, once its Hello arrived.
    pub fn peer_slot(&self) -> Option<u8> {
        self.peer_slot
    }

    /// Counters so far.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Ends the session, telling the peer why.
    pub fn close(&mut self, code: CloseCode, reason: impl Into<String>) {
        if self.phase == Phase::Closed {
            return;
        }
        let reason = reason.into();
        self.out.push_back(Frame::Close {
            code: code as u16,
            reason: reason.clone(),
        });
        self.phase = Phase::Closed;
        self.next_resync = None;
        self.closed = Some(Closed { code, reason });
    }

    /// Periodic work: a full manifest every `resync_interval_ms`, and changes held too long
    /// for bodies that do not come are applied.
    pub fn handle_timeout(&mut self, store: &mut Store, now: Timestamp) {
        if self.phase != Phase::Ready {
            return;
        }
        self.release_held(store, now, true);
        if self.next_resync.is_some_and(|t| t <= now) {
            self.send_manifest(store, now);
        }
    }

    /// Local writes happened: push the changes the peer lacks right away (no polling interval).
    pub fn local_change(&mut self, store: &mut Store) {
        if self.phase != Phase::Ready {
            return;
        }
        let mut docs = Vec::new();
        for (key, heads) in store.manifest() {
            let known = self.peer_heads.get(&key).cloned().unwrap_or_default();
            if heads.iter().all(|h| known.contains(h)) {
                continue; // the peer has everything we have of this document
            }
            match store.changes_for(&key, &known) {
                Ok(ch) if !ch.is_empty() => {
                    self.peer_heads.insert(key.clone(), heads);
                    docs.push((key, ch));
                }
                Ok(_) => {}
                Err(e) => {
                    self.fail_store(e);
                    return;
                }
            }
        }
        self.queue_changes(docs);
    }

    /// Handles one frame from the peer. Store errors and protocol violations close the session
    /// (with a Close frame queued for the peer); the store is never left half-updated.
    pub fn handle_frame(&mut self, store: &mut Store, frame: Frame, now: Timestamp) {
        if self.phase == Phase::Closed {
            return;
        }
        match (&self.phase, frame) {
            (_, Frame::Close { code, reason }) => {
                self.phase = Phase::Closed;
                self.next_resync = None;
                self.closed = Some(Closed {
                    code: close_code(code),
                    reason: format!("closed by peer: {reason}"),
                });
            }
            (Phase::Handshake, Frame::Hello { version, slot }) => {
                if version != PROTOCOL_VERSION {
                    self.close(
                        CloseCode::VersionMismatch,
                        format!("protocol version {version} is not supported; this node speaks {PROTOCOL_VERSION}"),
                    );
                    return;
                }
                if slot >= tandem_store::MAX_NODES {
                    self.close(CloseCode::Protocol, format!("slot {slot} is out of range"));
                    return;
                }
                if slot == store.slot() {
                    self.close(
                        CloseCode::Protocol,
                        format!("peer uses slot {slot}, which is this node's own: every node needs its own slot"),
                    );
                    return;
                }
                self.peer_slot = Some(slot);
                self.phase = Phase::Ready;
                self.send_manifest(store, now);
            }
            (Phase::Handshake, other) => {
                self.close(
                    CloseCode::Protocol,
                    format!("expected Hello, got {}", name(&other)),
                );
            }
            (Phase::Ready, Frame::Hello { .. }) => {
                self.close(CloseCode::Protocol, "second Hello");
            }
            (Phase::Ready, Frame::Manifest { docs }) => self.on_manifest(store, docs, now),
            (Phase::Ready, Frame::Changes { docs }) => self.on_changes(store, docs, now),
            (Phase::Ready, Frame::Applied { hashes }) => {
                // Bounded: a peer cannot make us hold more than a frame's worth at a time.
                if self.applied_by_peer.len() < 1 << 20 {
                    self.applied_by_peer.extend(hashes);
                }
            }
            (Phase::Ready, Frame::WantBlobs { hashes }) => {
                // A peer asks for at most max_blobs_in_flight at a time; more is not answered
                // (it asks again), so one frame cannot make us load every body we have.
                let mut missing = Vec::new();
                let mut later = Vec::new();
                let mut bytes = 0usize;
                let mut seen = BTreeSet::new();
                for (i, h) in hashes.into_iter().enumerate() {
                    if !seen.insert(h) {
                        continue; // asked twice in one frame: answered once
                    }
                    if i >= self.cfg.max_blobs_in_flight.max(1)
                        || (bytes > 0 && bytes >= self.cfg.max_blob_bytes_per_answer)
                    {
                        later.push(h);
                        continue;
                    }
                    let part = self.cfg.part_bytes.max(1) as u64;
                    if let Some(total) = store.blob_size(&h).filter(|&n| n > part) {
                        // Large: checked whole here (a MiB at a time), since the peer can check
                        // it only once every part is there; then the first part.
                        match store
                            .check_blob(&h)
                            .and_then(|()| store.blob_range(&h, 0, part))
                        {
                            Ok(data) => {
                                self.stats.blobs_out += 1;
                                // The whole body was read to check it: count it all.
                                bytes = bytes.saturating_add(total as usize);
                                self.out.push_back(Frame::BlobPart {
                                    hash: h,
                                    total,
                                    offset: 0,
                                    data,
                                });
                            }
                            Err(_) => missing.push(h),
                        }
                        continue;
                    }
                    match store.message_bytes(&h) {
                        Ok(data) if data.len() + 64 <= crate::frame::MAX_FRAME => {
                            self.stats.blobs_out += 1;
                            bytes += data.len();
                            self.out.push_back(Frame::Blob { hash: h, data });
                        }
                        // Never had it, lost it, a damaged copy, or too large for a frame:
                        // say so, and the peer asks elsewhere.
                        _ => missing.push(h),
                    }
                }
                if !missing.is_empty() {
                    self.out.push_back(Frame::Missing { hashes: missing });
                }
                if !later.is_empty() {
                    self.out.push_back(Frame::Later { hashes: later });
                }
            }
            (Phase::Ready, Frame::WantPart { hash, offset }) => {
                let part = self.cfg.part_bytes.max(1) as u64;
                let answer = store
                    .blob_size(&hash)
                    .filter(|&total| offset < total)
                    .and_then(|total| {
                        store
                            .blob_range(&hash, offset, part)
                            .ok()
                            .map(|data| (total, data))
                    });
                match answer {
                    Some((total, data)) => self.out.push_back(Frame::BlobPart {
                        hash,
                        total,
                        offset,
                        data,
                    }),
                    None => self.out.push_back(Frame::Missing { hashes: vec![hash] }),
                }
            }
            (
                Phase::Ready,
                Frame::BlobPart {
                    hash,
                    total,
                    offset,
                    data,
                },
            ) => {
                // Only parts of bodies asked for: a peer cannot fill the disk with parts of
                // bodies nobody wants.
                if !self.blobs_requested.contains_key(&hash) {
                    return;
                }
                match store.put_blob_part(&hash, total, offset, &data, now) {
                    Ok(PartProgress::Complete) => {
                        self.blobs_requested.remove(&hash);
                        self.body_arrived(store, &hash, now);
                    }
                    Ok(PartProgress::Stored { next }) => {
                        // One part in flight per body: ask for the next as this one lands.
                        self.blobs_requested.insert(hash, now);
                        for h in self.held.iter_mut() {
                            if h.needs.contains(&hash) {
                                h.since = now;
                            }
                        }
                        self.out.push_back(Frame::WantPart { hash, offset: next });
                    }
                    // A duplicate, or a part from before a cut: the request in flight (or the
                    // stale-request timer) carries on from where the stored bytes end.
                    Ok(PartProgress::Ignored { .. }) => {}
                    Err(StoreError::BlobHashMismatch { expected }) => {
                        self.close(
                            CloseCode::BadData,
                            format!("body does not match its hash {expected}"),
                        );
                    }
                    Err(StoreError::InvalidPart(why)) => {
                        self.close(CloseCode::BadData, format!("body part: {why}"));
                    }
                    // Larger than this store accepts (the peer's limit is higher): it stays
                    // missing here, as after a Missing answer, and the session goes on.
                    Err(StoreError::MessageTooLarge { .. }) => {
                        self.blobs_requested.remove(&hash);
                        self.peer_lacks.insert(hash);
                    }
                    Err(e) => self.fail_store(e),
                }
            }
            (Phase::Ready, Frame::Later { hashes }) => {
                // Not requested any more; ask again at once for what is not in flight. The
                // bodies this answer did carry are still requested (on their own streams they
                // can arrive after this frame), so they are not asked for twice: each round
                // trip moves one budget's worth.
                for h in hashes {
                    self.blobs_requested.remove(&h);
                }
                self.request_blobs(store, now);
            }
            (Phase::Ready, Frame::Missing { hashes }) => {
                for h in hashes {
                    self.blobs_requested.remove(&h);
                    self.peer_lacks.insert(h);
                    // Parts it cannot continue (or that another peer left longer than the
                    // body): start over with whoever has it.
                    store.discard_partial_blob(&h);
                }
                self.request_blobs(store, now);
            }
            (Phase::Ready, Frame::Blob { hash, data }) => {
                if self.blobs_requested.remove(&hash).is_none() && store.has_blob(&hash) {
                    return; // a duplicate
                }
                match store.put_blob(&hash, &data, now) {
                    Ok(()) => self.body_arrived(store, &hash, now),
                    Err(StoreError::BlobHashMismatch { expected }) => {
                        self.close(
                            CloseCode::BadData,
                            format!("body does not match its hash {expected}"),
                        );
                    }
                    Err(e) => self.fail_store(e),
                }
            }
            (Phase::Closed, _) => {}
        }
    }

    fn send_manifest(&mut self, store: &Store, now: Timestamp) {
        // While changes wait for their bodies our manifest would not list them, and the peer
        // would send them all again: skip it until they are applied.
        if self.held.is_empty() {
            self.out.push_back(Frame::Manifest {
                docs: store.manifest(),
            });
        }
        self.next_resync = Some(Timestamp(now.0 + self.cfg.resync_interval_ms));
        self.request_blobs(store, now);
    }

    /// The peer told us what it has: send what it lacks, ask for bodies we lack.
    fn on_manifest(
        &mut self,
        store: &mut Store,
        docs: Vec<(String, Vec<ChangeHash>)>,
        now: Timestamp,
    ) {
        let theirs: HashMap<String, Vec<ChangeHash>> = docs.into_iter().collect();
        self.peer_lacks.clear(); // it may have received them since
        let mut out = Vec::new();
        for (key, mine) in store.manifest() {
            let their = theirs.get(&key).cloned().unwrap_or_default();
            if their == mine {
                self.peer_heads.insert(key, mine);
                continue;
            }
            match store.changes_for(&key, &their) {
                Ok(ch) if !ch.is_empty() => {
                    self.peer_heads.insert(key.clone(), mine);
                    out.push((key, ch));
                }
                Ok(_) => {
                    self.peer_heads.insert(key, their);
                }
                Err(e) => {
                    self.fail_store(e);
                    return;
                }
            }
        }
        self.queue_changes(out);
        self.request_blobs(store, now);
    }

    fn on_changes(&mut self, store: &mut Store, docs: Vec<(String, Vec<Vec<u8>>)>, now: Timestamp) {
        let needs: BTreeSet<BlobHash> = store.blobs_needed(&docs).into_iter().collect();
        if needs.is_empty() && self.held.is_empty() {
            self.apply(store, docs, now, true);
            return;
        }
        self.held.push_back(Held {
            docs,
            needs,
            since: now,
        });
        self.release_held(store, now, true);
        self.request_blobs(store, now);
    }

    /// Applies held batches, in order, whose bodies are all here or that made no progress for
    /// `hold_for_bodies_ms` (their bodies may come later, from anyone).
    /// `recheck`: also drop needs the store already has (bodies can arrive through another
    /// peer's session). That costs a lookup per need, so it is done on timeouts and for a new
    /// batch, not on every body (which would make a first sync quadratic).
    fn release_held(&mut self, store: &mut Store, now: Timestamp, recheck: bool) {
        while let Some(front) = self.held.front_mut() {
            if recheck {
                front.needs.retain(|h| !store.has_blob(h));
            }
            let expired = now.0 - front.since.0 >= self.cfg.hold_for_bodies_ms;
            if !front.needs.is_empty() && !expired {
                break;
            }
            if let Some(h) = self.held.pop_front() {
                // Released on time-out with bodies still missing: applied, but not reported
                // as held here (the peer must not count it as on two nodes yet).
                let complete = h.needs.is_empty();
                self.apply(store, h.docs, now, complete);
            }
            if self.phase == Phase::Closed {
                return;
            }
        }
    }

    fn apply(
        &mut self,
        store: &mut Store,
        docs: Vec<(String, Vec<Vec<u8>>)>,
        now: Timestamp,
        complete: bool,
    ) {
        let n: u64 = docs.iter().map(|(_, c)| c.len() as u64).sum();
        match store.apply_changes_batch(docs, now) {
            // The peer has what it sent: remember that, so a relay does not echo it back.
            Ok(sent) => {
                self.stats.changes_in += n;
                if complete {
                    // Durable here (the batch was persisted) with every body it needs.
                    let hashes: Vec<ChangeHash> =
                        sent.iter().flat_map(|(_, h)| h.iter().copied()).collect();
                    if !hashes.is_empty() {
                        self.out.push_back(Frame::Applied { hashes });
                    }
                }
                for (key, hashes) in sent {
                    let known = self.peer_heads.entry(key).or_default();
                    known.extend(hashes);
                    known.sort_unstable();
                    known.dedup();
                }
                self.request_blobs(store, now);
            }
            Err(e @ (StoreError::BadChanges { .. } | StoreError::InvalidDocKey(_))) => {
                self.close(CloseCode::BadData, e.to_string());
            }
            Err(e) => self.fail_store(e),
        }
    }

    /// A body is stored: batches waiting for it may go, and more bodies can be asked for.
    fn body_arrived(&mut self, store: &mut Store, hash: &BlobHash, now: Timestamp) {
        self.stats.blobs_in += 1;
        for h in self.held.iter_mut() {
            if h.needs.remove(hash) {
                h.since = now; // progress: the hold runs from the last body
            }
        }
        self.release_held(store, now, false);
        self.request_blobs(store, now);
    }

    /// Asks the peer for bodies this store is waiting for (those of held changes first, in
    /// order), a bounded number at a time.
    fn request_blobs(&mut self, store: &Store, now: Timestamp) {
        // Unanswered for a long while (lost on a cut stream): ask again.
        let stale = now.0 - 3 * self.cfg.resync_interval_ms;
        self.blobs_requested.retain(|_, at| at.0 > stale);
        // Refill only once half the requests are answered: one WantBlobs (and one body stream
        // in reply) per many bodies, not one per body.
        if self.blobs_requested.len() * 2 > self.cfg.max_blobs_in_flight {
            return;
        }
        let room = self
            .cfg
            .max_blobs_in_flight
            .saturating_sub(self.blobs_requested.len());
        if room == 0 {
            return;
        }
        let held = self.held.iter().flat_map(|h| h.needs.iter().copied());
        let mut seen = BTreeSet::new();
        let want: Vec<BlobHash> = held
            .chain(store.missing_blobs())
            .filter(|h| {
                !self.blobs_requested.contains_key(h)
                    && !self.peer_lacks.contains(h)
                    && seen.insert(*h)
            })
            .take(room)
            .collect();
        if want.is_empty() {
            return;
        }
        self.blobs_requested.extend(want.iter().map(|h| (*h, now)));
        // A body whose transfer in parts was cut resumes where its stored bytes end.
        let mut fresh = Vec::with_capacity(want.len());
        for hash in want {
            match store.partial_blob_len(&hash) {
                0 => fresh.push(hash),
                offset => self.out.push_back(Frame::WantPart { hash, offset }),
            }
        }
        if !fresh.is_empty() {
            self.out.push_back(Frame::WantBlobs { hashes: fresh });
        }
    }

    fn queue_changes(&mut self, docs: Vec<(String, Vec<Vec<u8>>)>) {
        let mut frame: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
        let mut size = 0usize;
        for (key, changes) in docs {
            self.stats.changes_out += changes.len() as u64;
            let mut cur: Vec<Vec<u8>> = Vec::new();
            for c in changes {
                if size + c.len() > self.cfg.max_changes_per_frame && (size > 0) {
                    if !cur.is_empty() {
                        frame.push((key.clone(), std::mem::take(&mut cur)));
                    }
                    self.out.push_back(Frame::Changes {
                        docs: std::mem::take(&mut frame),
                    });
                    size = 0;
                }
                size += c.len();
                cur.push(c);
            }
            if !cur.is_empty() {
                frame.push((key, cur));
            }
        }
        if !frame.is_empty() {
            self.out.push_back(Frame::Changes { docs: frame });
        }
    }

    fn fail_store(&mut self, e: StoreError) {
        let code = if e.is_temporary() {
            CloseCode::Temporary
        } else {
            CloseCode::BadData
        };
        self.close(code, format!("store error: {e}"));
    }
}

/// Changes received before their message bodies.
#[derive(Debug)]
struct Held {
    docs: Vec<(String, Vec<Vec<u8>>)>,
    /// Bodies still missing.
    needs: BTreeSet<BlobHash>,
    since: Timestamp,
}

fn close_code(c: u16) -> CloseCode {
    match c {
        0 => CloseCode::Done,
        1 => CloseCode::VersionMismatch,
        3 => CloseCode::BadData,
        4 => CloseCode::Temporary,
        _ => CloseCode::Protocol,
    }
}

fn name(f: &Frame) -> &'static str {
    match f {
        Frame::Hello { .. } => "Hello",
        Frame::Manifest { .. } => "Manifest",
        Frame::Changes { .. } => "Changes",
        Frame::WantBlobs { .. } => "WantBlobs",
        Frame::Blob { .. } => "Blob",
        Frame::Later { .. } => "Later",
        Frame::WantPart { .. } => "WantPart",
        Frame::BlobPart { .. } => "BlobPart",
        Frame::Close { .. } => "Close",
        Frame::Missing { .. } => "Missing",
        Frame::Applied { .. } => "Applied",
    }
}
