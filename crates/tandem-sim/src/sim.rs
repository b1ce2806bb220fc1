//! A seeded, deterministic simulation of N Tandem nodes running the real store and the real
//! sync [`Session`]s over a virtual network that drops, duplicates, delays and reorders frames,
//! cuts links (one way or both), and crashes and restarts nodes from what they had on disk.
//!
//! Every source of nondeterminism is the seed: the workload, the faults, the delays, the clock.
//! After every step every live node is checked against I1–I4 ([`Checker`]); at the end the
//! network heals and the nodes must converge (I5) with nothing lost (I6).

use std::collections::{BTreeMap, BTreeSet};

use tandem_store::{Store, StoreConfig, Timestamp};
use tandem_sync::{CloseCode, Frame, Session, SessionConfig};

use crate::invariants::{ACCOUNT, Checker, visible};
use crate::workload::{Action, NAMES, Workload};

/// The knobs of one simulation run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of nodes (slots 0..nodes).
    pub nodes: usize,
    /// Steps of workload and faults before the final heal.
    pub steps: usize,
    /// Per mille of frames dropped in flight.
    pub drop_per_mille: u64,
    /// Per mille of frames delivered twice.
    pub dup_per_mille: u64,
    /// Frames take 1..=max_delay_ms to arrive (so they overtake each other).
    pub max_delay_ms: u64,
    /// Per mille of steps that inject a fault (cut, heal, crash, restart).
    pub fault_per_mille: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 3,
            steps: 300,
            drop_per_mille: 20,
            dup_per_mille: 20,
            max_delay_ms: 40,
            fault_per_mille: 60,
        }
    }
}

/// splitmix64: small, fast, and the same on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

struct Node {
    dir: tempfile::TempDir,
    slot: u8,
    store: Option<Store>,
}

/// A connection between nodes `a < b`: one session at each end.
struct Conn {
    id: u64,
    a: Session,
    b: Session,
}

struct Packet {
    at: i64,
    seq: u64,
    conn: u64,
    from: usize,
    to: usize,
    frame: Frame,
}

/// The simulation.
pub struct Sim {
    cfg: SimConfig,
    rng: Rng,
    now: i64,
    nodes: Vec<Node>,
    conns: BTreeMap<(usize, usize), Conn>,
    in_flight: Vec<Packet>,
    next_id: u64,
    /// Arrival time of the last control frame per (connection, sender): the stream's order.
    stream_tail: BTreeMap<(u64, usize), i64>,
    /// Directed cuts: frames from .0 to .1 are lost.
    cuts: BTreeSet<(usize, usize)>,
    checker: Checker,
    workload: Workload,
    connections_opened: u64,
    /// The last things that happened, for failure reports.
    log: Vec<String>,
    step: usize,
}

fn store_cfg(slot: u8) -> StoreConfig {
    StoreConfig {
        slot,
        actor: Some([slot + 1; 16]),
        durable: false,
        compact_after_bytes: 256 * 1024,
        ..StoreConfig::default()
    }
}

fn session_cfg() -> SessionConfig {
    SessionConfig {
        resync_interval_ms: 500,
        max_blobs_in_flight: 8,
        // Small, so answers are cut short and the Later path runs under every fault too.
        max_blob_bytes_per_answer: 100,
        // Tiny, so every body travels in parts (and parts meet every fault).
        part_bytes: 24,
        ..SessionConfig::default()
    }
}

impl Sim {
    /// A simulation of `cfg.nodes` fresh nodes, every one with the account created.
    pub fn new(seed: u64, cfg: SimConfig) -> Result<Sim, String> {
        let mut nodes = Vec::new();
        for i in 0..cfg.nodes {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let slot = i as u8;
            let mut store = Store::open(dir.path(), store_cfg(slot)).map_err(|e| e.to_string())?;
            store
                .create_account(ACCOUNT, Timestamp(1_800_000_000_000))
                .map_err(|e| e.to_string())?;
            nodes.push(Node {
                dir,
                slot,
                store: Some(store),
            });
        }
        Ok(Sim {
            cfg,
            rng: Rng::new(seed),
            now: 1_800_000_000_000,
            nodes,
            conns: BTreeMap::new(),
            in_flight: Vec::new(),
            next_id: 0,
            stream_tail: BTreeMap::new(),
            cuts: BTreeSet::new(),
            connections_opened: 0,
            checker: Checker::default(),
            workload: Workload::default(),
            log: Vec::new(),
            step: 0,
        })
    }

    fn note(&mut self, s: String) {
        if self.log.len() >= 60 {
            self.log.remove(0);
        }
        self.log.push(format!(
            "[step {} t+{}ms] {s}",
            self.step,
            self.now - 1_800_000_000_000
        ));
    }

    fn fail(&self, what: String) -> String {
        format!("{what}\nlast events:\n  {}", self.log.join("\n  "))
    }

    /// Runs the configured steps, heals, and checks convergence.
    pub fn run(&mut self) -> Result<(), String> {
        for _ in 0..self.cfg.steps {
            self.step += 1;
            self.one_step(true)?;
        }
        self.heal()
    }

    fn one_step(&mut self, faults: bool) -> Result<(), String> {
        let r = self.rng.below(1000);
        if faults && r < self.cfg.fault_per_mille {
            self.fault();
        } else if faults && r < 600 {
            self.client_action()?;
        }
        self.now += 1 + self.rng.below(15) as i64;
        self.connect();
        self.deliver(faults)?;
        self.timeouts();
        self.flush(faults);
        for i in 0..self.nodes.len() {
            if let Some(s) = &self.nodes[i].store {
                let res = self.checker.observe(i, s);
                if let Err(e) = res {
                    return Err(self.fail(e));
                }
            }
        }
        Ok(())
    }

    fn fault(&mut self) {
        let n = self.nodes.len() as u64;
        let (a, b) = (self.rng.below(n) as usize, self.rng.below(n) as usize);
        match self.rng.below(6) {
            0 | 1 if a != b => {
                let both = self.rng.below(2) == 0;
                self.cuts.insert((a, b));
                if both {
                    self.cuts.insert((b, a));
                }
                // A cut connection times out sooner or later; model "sooner" half the time.
                if self.rng.below(2) == 0 {
                    self.conns.remove(&(a.min(b), a.max(b)));
                }
                self.note(format!(
                    "cut {a}->{b}{}",
                    if both { " both ways" } else { "" }
                ));
            }
            2 | 3 => {
                self.cuts.retain(|&(x, y)| x != a && y != a);
                self.note(format!("heal links of {a}"));
            }
            4 => {
                if self.nodes[a].store.take().is_some() {
                    self.conns.retain(|&(x, y), _| x != a && y != a);
                    self.note(format!("crash {a}"));
                }
            }
            _ => self.restart(a),
        }
    }

    fn restart(&mut self, i: usize) {
        if self.nodes[i].store.is_some() {
            return;
        }
        let node = &mut self.nodes[i];
        match Store::open(node.dir.path(), store_cfg(node.slot)) {
            Ok(s) => {
                node.store = Some(s);
                self.note(format!("restart {i}"));
            }
            Err(e) => self.note(format!("restart {i} FAILED: {e}")),
        }
    }

    fn client_action(&mut self) -> Result<(), String> {
        let n = self.nodes.len() as u64;
        let node = self.rng.below(n) as usize;
        let m = NAMES.len() as u64;
        let r = &mut self.rng;
        let action = match r.below(16) {
            0..=5 => Action::Append {
                mbox: r.below(m) as usize,
            },
            6..=9 => Action::Flag {
                mbox: r.below(m) as usize,
                pick: r.below(1000) as usize,
                flag: r.below(3) as usize,
                set: r.below(2) == 0,
            },
            10 | 11 => Action::Expunge {
                mbox: r.below(m) as usize,
                pick: r.below(1000) as usize,
            },
            12 | 13 => Action::Copy {
                from: r.below(m) as usize,
                pick: r.below(1000) as usize,
                to: r.below(m) as usize,
                mv: r.below(2) == 0,
            },
            14 => Action::Create {
                name: r.below(m) as usize,
            },
            _ => match r.below(2) {
                0 => Action::Rename {
                    from: r.below(m) as usize,
                    to: r.below(m) as usize,
                },
                _ => Action::Delete {
                    name: r.below(m) as usize,
                },
            },
        };
        let now = Timestamp(self.now);
        let Some(store) = self.nodes[node].store.as_mut() else {
            return Ok(());
        };
        if let Err(e) = self.workload.apply(store, &action, now, &mut self.checker) {
            return Err(self.fail(format!("node {node}: {action:?} failed: {e}")));
        }
        self.note(format!("node {node}: {action:?}"));
        self.push_local(node);
        Ok(())
    }

    /// Node `i` changed (a client wrote, or a peer's changes merged): push to every peer.
    fn push_local(&mut self, i: usize) {
        let Some(store) = self.nodes[i].store.as_mut() else {
            return;
        };
        let _ = store.take_events();
        for (&(a, b), c) in self.conns.iter_mut() {
            if a == i {
                c.a.local_change(store);
            } else if b == i {
                c.b.local_change(store);
            }
        }
    }

    fn connect(&mut self) {
        let n = self.nodes.len();
        for a in 0..n {
            for b in a + 1..n {
                if self.conns.contains_key(&(a, b))
                    || self.cuts.contains(&(a, b))
                    || self.cuts.contains(&(b, a))
                {
                    continue;
                }
                let (Some(sa), Some(sb)) = (&self.nodes[a].store, &self.nodes[b].store) else {
                    continue;
                };
                self.next_id += 1;
                let conn = Conn {
                    id: self.next_id,
                    a: Session::new(sa, session_cfg()),
                    b: Session::new(sb, session_cfg()),
                };
                self.conns.insert((a, b), conn);
                self.connections_opened += 1;
                self.note(format!("connect {a}<->{b} (#{})", self.next_id));
            }
        }
    }

    fn deliver(&mut self, faults: bool) -> Result<(), String> {
        self.in_flight.sort_by_key(|p| (p.at, p.seq));
        let due = self
            .in_flight
            .iter()
            .take_while(|p| p.at <= self.now)
            .count();
        let packets: Vec<Packet> = self.in_flight.drain(..due).collect();
        for p in packets {
            let key = (p.from.min(p.to), p.from.max(p.to));
            if faults && self.cuts.contains(&(p.from, p.to)) {
                // A stream cannot skip a frame: a control frame that cannot get through stalls
                // its stream until the connection times out.
                if !matches!(p.frame, Frame::Blob { .. })
                    && self.conns.get(&key).is_some_and(|c| c.id == p.conn)
                {
                    self.conns.remove(&key);
                    self.note(format!(
                        "connection {}<->{} timed out (link cut)",
                        key.0, key.1
                    ));
                }
                continue;
            }
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            if conn.id != p.conn {
                continue;
            }
            let Some(store) = self.nodes[p.to].store.as_mut() else {
                continue;
            };
            let session = if p.to == key.0 {
                &mut conn.a
            } else {
                &mut conn.b
            };
            session.handle_frame(store, p.frame, Timestamp(self.now));
            let closed = session.closed().cloned();
            let changed = !store.take_events().is_empty();
            if changed {
                // Relay: what arrived from one peer goes on to the others at once.
                for (&(a, b), c) in self.conns.iter_mut() {
                    if a == p.to {
                        c.a.local_change(store);
                    } else if b == p.to {
                        c.b.local_change(store);
                    }
                }
            }
            if let Some(c) = closed {
                if matches!(
                    c.code,
                    CloseCode::BadData | CloseCode::Protocol | CloseCode::VersionMismatch
                ) {
                    return Err(self.fail(format!(
                        "connection {}<->{} closed by node {}: {c}",
                        key.0, key.1, p.to
                    )));
                }
                self.note(format!("connection {}<->{} closed: {c}", key.0, key.1));
                self.conns.remove(&key);
            }
        }
        Ok(())
    }

    fn timeouts(&mut self) {
        let now = Timestamp(self.now);
        for (&(a, b), c) in self.conns.iter_mut() {
            if let Some(s) = self.nodes[a].store.as_mut()
                && c.a.poll_timeout().is_some_and(|t| t <= now)
            {
                c.a.handle_timeout(s, now);
            }
            if let Some(s) = self.nodes[b].store.as_mut()
                && c.b.poll_timeout().is_some_and(|t| t <= now)
            {
                c.b.handle_timeout(s, now);
            }
        }
        // Held changes released by a timeout changed the store: relay them too.
        for i in 0..self.nodes.len() {
            if self.nodes[i]
                .store
                .as_mut()
                .is_some_and(|s| !s.take_events().is_empty())
            {
                self.push_local(i);
            }
        }
    }

    fn flush(&mut self, faults: bool) {
        let mut out = Vec::new();
        for (&(a, b), c) in self.conns.iter_mut() {
            while let Some(f) = c.a.poll_frame() {
                out.push((c.id, a, b, f));
            }
            while let Some(f) = c.b.poll_frame() {
                out.push((c.id, b, a, f));
            }
        }
        for (conn, from, to, frame) in out {
            // What a QUIC connection does with a lossy network: control frames travel on one
            // ordered stream per direction (losses become delay; a bad enough loss resets the
            // connection), bodies on streams of their own (they overtake control frames and
            // each other, and a reset stream loses one). Duplicates are extra: every frame
            // but Hello must be idempotent, so the simulation sends some twice.
            let body = matches!(frame, Frame::Blob { .. });
            if faults && self.rng.chance(self.cfg.drop_per_mille) {
                if body {
                    continue;
                }
                let key = (from.min(to), from.max(to));
                if self.conns.get(&key).is_some_and(|c| c.id == conn) {
                    self.conns.remove(&key);
                    self.note(format!("connection {}<->{} reset", key.0, key.1));
                }
                continue;
            }
            let hello = matches!(frame, Frame::Hello { .. });
            let copies = if faults && !hello && self.rng.chance(self.cfg.dup_per_mille) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let mut at = self.now + 1 + self.rng.below(self.cfg.max_delay_ms) as i64;
                if !body {
                    let last = self.stream_tail.entry((conn, from)).or_insert(0);
                    at = at.max(*last);
                    *last = at;
                }
                self.next_id += 1;
                self.in_flight.push(Packet {
                    at,
                    seq: self.next_id,
                    conn,
                    from,
                    to,
                    frame: frame.clone(),
                });
            }
        }
    }

    /// Ends all faults and runs until every node has everything (or gives up after a simulated
    /// minute), then checks I5 and I6.
    pub fn heal(&mut self) -> Result<(), String> {
        self.note("heal: all links up, all nodes restarted".into());
        self.cuts.clear();
        for i in 0..self.nodes.len() {
            self.restart(i);
        }
        let deadline = self.now + 60_000;
        while self.now < deadline {
            self.step += 1;
            self.one_step(false)?;
            if self.quiescent() {
                let first = self.nodes[0]
                    .store
                    .as_ref()
                    .map(visible)
                    .unwrap_or_default();
                for (i, n) in self.nodes.iter().enumerate().skip(1) {
                    let v = n.store.as_ref().map(visible).unwrap_or_default();
                    if v != first {
                        return Err(self.fail(format!(
                            "I5: node {i} differs from node 0 after heal:\n{v:#?}\nvs\n{first:#?}"
                        )));
                    }
                }
                if let Some(s) = &self.nodes[0].store
                    && let Err(e) = self.workload.check_nothing_lost(s)
                {
                    return Err(self.fail(e));
                }
                return Ok(());
            }
        }
        let manifests: Vec<usize> = self
            .nodes
            .iter()
            .map(|n| n.store.as_ref().map_or(0, |s| s.manifest().len()))
            .collect();
        Err(self.fail(format!("no convergence within a simulated minute after heal (documents per node: {manifests:?})")))
    }

    /// One line about the run so far: what the nodes hold and what the network did.
    pub fn summary(&self) -> String {
        let msgs: Vec<usize> = self
            .nodes
            .iter()
            .map(|n| {
                n.store
                    .as_ref()
                    .map_or(0, |s| crate::invariants::bodies(s).len())
            })
            .collect();
        format!(
            "{} steps, {} simulated ms, {} connections opened, {} appends acknowledged, {} removed by clients, distinct bodies visible per node {:?}",
            self.step,
            self.now - 1_800_000_000_000,
            self.connections_opened,
            self.workload.appended.len(),
            self.workload.removed.len(),
            msgs
        )
    }

    fn quiescent(&self) -> bool {
        let Some(first) = self.nodes[0].store.as_ref().map(|s| s.manifest()) else {
            return false;
        };
        self.in_flight.is_empty()
            && self.nodes.iter().all(|n| {
                n.store
                    .as_ref()
                    .is_some_and(|s| s.manifest() == first && s.missing_blobs().is_empty())
            })
    }
}
