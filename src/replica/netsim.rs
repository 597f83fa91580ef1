//! Large herds, simulated: the real replication code ([`Replica`], [`plan`],
//! [`LinkSync`]) of hundreds or thousands of servers over a simulated network, with
//! simulated time, so that what flooding costs at a size no machine here can run as
//! processes can be measured (`herd-bench simulate`).
//!
//! A discrete-event simulation, seeded: every message is an event at a simulated time
//! (a one-way delay drawn uniformly from a range, FIFO per direction of a link, as a
//! gRPC stream is); a lost packet delays its message, and every message behind it on the
//! same link, by a retransmission timeout (the links are TCP: loss is delay, not a gap);
//! a partition cuts links (messages in flight on them are gone) and a heal brings them
//! back with the floor exchange and catch-up of the real links. Every IAMAT is a new
//! client, so that each update's spread can be followed to every server.
//!
//! What is not modelled: a server's CPU (a message is handled the instant it arrives),
//! bandwidth, and send-queue overflow (queues are unbounded; the real links' overflow
//! path is the one `sim` tests). A catch-up is sent in one step at its sender.

use std::{
    cmp::Ordering as CmpOrdering,
    collections::BinaryHeap,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;

use super::{CaughtUp, Floor, LinkSync, Offer, Replica, SyncStep};
use crate::{
    peer::wire::{self as link_wire, UpdateRef, VersionRef},
    store::Record,
    wire,
};

/// The herd's shape.
#[derive(Clone, Debug)]
pub enum Topology {
    /// The paper's five servers and links (the built-in herd file).
    Paper,
    /// `servers` servers on a random connected graph: a random spanning tree, then
    /// random extra links until the mean number of neighbours is `degree`.
    Random { servers: usize, degree: f64 },
}

/// How an update spreads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Broadcast {
    /// herd's flooding ([`Replica::plan`]): to every neighbour not on the seen list.
    #[default]
    Flood,
    /// A model of epidemic broadcast trees (Plumtree, Leitão et al. 2007), to measure
    /// what replacing flooding would gain; the real servers do not implement it. Every
    /// link starts eager: an update goes whole to eager neighbours and as an
    /// announcement (its version) to lazy ones. A server that gets a copy it has
    /// already makes that link lazy at both ends (a prune); one that hears an
    /// announcement and does not get the update within the graft timeout asks the
    /// announcer for it (a graft), which makes that link eager again. Catch-ups are
    /// herd's own, and a neighbour being caught up gets every update whole.
    Plumtree,
}

/// One simulation.
#[derive(Clone, Debug)]
pub struct Config {
    pub topology: Topology,
    /// IAMATs in all, each at a server drawn at random, each a new client.
    pub updates: usize,
    /// IAMATs per simulated second, herd-wide, evenly spaced.
    pub rate: f64,
    /// One-way delay of a message, drawn uniformly from this range (microseconds).
    pub delay_us: (u64, u64),
    /// The chance that a message waits for a retransmission.
    pub loss: f64,
    /// How long a retransmission takes (microseconds).
    pub retransmit_us: u64,
    /// Cut a random half of the servers off from the rest while the middle third of the
    /// IAMATs is made, then heal.
    pub partition: bool,
    pub seed: u64,
    pub broadcast: Broadcast,
    /// Plumtree: how long a server waits, after an announcement of an update it does
    /// not have, for the update itself before it asks the announcer (microseconds).
    pub graft_timeout_us: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            topology: Topology::Paper,
            updates: 1000,
            rate: 1000.0,
            delay_us: (100, 1000),
            loss: 0.0,
            retransmit_us: 200_000,
            partition: false,
            seed: 1,
            broadcast: Broadcast::Flood,
            graft_timeout_us: 2000,
        }
    }
}

/// What a simulation measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub broadcast: Broadcast,
    pub seed: u64,
    pub servers: usize,
    pub links: usize,
    pub updates: usize,
    /// Updates that reached every server.
    pub reached_all: usize,
    /// Time from an IAMAT to the last server applying it, over the updates made while
    /// no partition was in place (microseconds of simulated time).
    pub reach_p50_us: u64,
    pub reach_p99_us: u64,
    pub reach_max_us: u64,
    /// Live update messages delivered (not counting catch-ups).
    pub messages: u64,
    /// Of those, the ones that stored something (at most servers - 1 per update).
    pub useful: u64,
    /// Of those, the ones the receiver held already.
    pub redundant: u64,
    /// The bytes of those messages' updates (each framed as in a `LinkMessage`).
    pub update_bytes: u64,
    /// Plumtree: announcements delivered (an update's version, to lazy neighbours).
    pub announcements: u64,
    /// Plumtree: grafts and prunes delivered.
    pub controls: u64,
    /// Plumtree: the bytes of announcements, grafts and prunes.
    pub control_bytes: u64,
    pub catch_ups: u64,
    pub catch_up_records: u64,
    pub catch_up_bytes: u64,
    /// From the heal until every update made before it was on every server.
    pub heal_to_converged_us: Option<u64>,
    /// Every server ended with the same table.
    pub converged: bool,
    /// Resident memory the simulation added, per simulated server (bytes; 0 where
    /// /proc is not readable).
    pub memory_per_server: u64,
    pub simulated_us: u64,
    pub wall_ms: u64,
}

impl Report {
    /// Live messages per update.
    pub fn messages_per_update(&self) -> f64 {
        self.messages as f64 / self.updates.max(1) as f64
    }

    /// Redundant deliveries per useful one.
    pub fn redundant_per_useful(&self) -> f64 {
        self.redundant as f64 / self.useful.max(1) as f64
    }

    /// Every live message (updates, announcements, grafts, prunes) per update.
    pub fn all_messages_per_update(&self) -> f64 {
        (self.messages + self.announcements + self.controls) as f64 / self.updates.max(1) as f64
    }

    /// Bytes sent live (updates and control) per update.
    pub fn bytes_per_update(&self) -> f64 {
        (self.update_bytes + self.control_bytes) as f64 / self.updates.max(1) as f64
    }
}

#[derive(Debug)]
enum Msg {
    /// A flooded update, encoded as the real links send it (`herd.v1.Update`), the
    /// same bytes shared by every target it is sent to.
    Update(Bytes),
    CatchUp(Vec<Bytes>),
    Floors(Vec<Floor>),
    CaughtUp(CaughtUp),
    /// Plumtree: "I have update k" (its version on the wire).
    IHave(usize),
    /// Plumtree: "send me update k, and make this link eager".
    Graft(usize),
    /// Plumtree: "make this link lazy".
    Prune,
}

#[derive(Debug)]
enum Ev {
    Inject(usize),
    Deliver {
        e: usize,
        d: usize,
        epoch: u64,
        msg: Msg,
    },
    Sync {
        e: usize,
        d: usize,
        epoch: u64,
    },
    Cut,
    Heal,
    /// Plumtree: node's wait for update k after an announcement is over.
    Timer {
        node: usize,
        k: usize,
    },
}

/// An event at a time; `n` keeps events of one time in the order they were made.
#[derive(Debug)]
struct Item {
    t: u64,
    n: u64,
    ev: Ev,
}

impl PartialEq for Item {
    fn eq(&self, o: &Item) -> bool {
        (self.t, self.n) == (o.t, o.n)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Item) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    // Reversed: BinaryHeap is a max-heap and the earliest event goes first.
    fn cmp(&self, o: &Item) -> CmpOrdering {
        (o.t, o.n).cmp(&(self.t, self.n))
    }
}

/// A link's state that every message reads (kept small: a herd of a thousand has
/// thousands of links, and each delivery looks at several).
struct Link {
    ends: (usize, usize),
    /// Where each end is in the other's neighbour list: `at[0]` is the place of
    /// `ends.0` among `ends.1`'s neighbours, `at[1]` that of `ends.1` among `ends.0`'s.
    at: [usize; 2],
    up: bool,
    epoch: u64,
    /// When the last message sent each way arrives (FIFO).
    last_due: [u64; 2],
}

/// How far each update has spread.
#[derive(Clone, Copy, Default)]
struct Spread {
    made_at: u64,
    /// Where it was made, and its seq there (the bytes of its version).
    origin: u32,
    seq: u32,
    holders: u32,
    all_at: Option<u64>,
}

struct Sim {
    cfg: Config,
    rng: fastrand::Rng,
    now: u64,
    next_n: u64,
    events: BinaryHeap<Item>,
    nodes: Vec<Replica>,
    /// Per node: (neighbour, link).
    adjacent: Vec<Vec<(usize, usize)>>,
    links: Vec<Link>,
    /// Per link, each direction's catch-up state (the sending side's).
    syncs: Vec<[LinkSync; 2]>,
    /// Links down now.
    down: usize,
    /// Plumtree: per node, per neighbour, whether the link is lazy from that end.
    lazy: Vec<Vec<bool>>,
    /// Plumtree: per node, the updates it holds (a bit each).
    has: Vec<Vec<u64>>,
    /// Plumtree: (node, update) heard announced and not held, with the neighbours
    /// that announced it still to ask.
    missing: std::collections::HashMap<(usize, usize), Vec<usize>>,
    spread: Vec<Spread>,
    /// The side of each node in the partition (true: cut off).
    side: Vec<bool>,
    partitioned: Option<(usize, usize)>,
    healed_at: Option<u64>,
    heal_k: usize,
    r: Counters,
}

#[derive(Default)]
struct Counters {
    messages: u64,
    useful: u64,
    redundant: u64,
    catch_ups: u64,
    catch_up_records: u64,
    catch_up_bytes: u64,
    update_bytes: u64,
    announcements: u64,
    controls: u64,
    control_bytes: u64,
}

/// The servers' names and neighbour lists.
fn shape(topology: &Topology, rng: &mut fastrand::Rng) -> (Vec<Arc<str>>, Vec<(usize, usize)>) {
    match topology {
        Topology::Paper => {
            let herd = crate::config::HerdConfig::load(None).expect("the built-in herd file");
            let names: Vec<Arc<str>> = herd.servers.iter().map(|s| s.name.clone()).collect();
            let mut edges = Vec::new();
            for (i, s) in herd.servers.iter().enumerate() {
                for n in &s.neighbours {
                    let j = names.iter().position(|x| **x == **n).expect("a server");
                    if i < j {
                        edges.push((i, j));
                    }
                }
            }
            (names, edges)
        }
        &Topology::Random { servers, degree } => {
            let n = servers.max(2);
            let names = (0..n).map(|i| Arc::from(format!("S{i}"))).collect();
            let mut edges = Vec::new();
            let mut have = std::collections::HashSet::new();
            for i in 1..n {
                let j = rng.usize(0..i);
                edges.push((j, i));
                have.insert((j, i));
            }
            let want = ((degree * n as f64 / 2.0).round() as usize).min(n * (n - 1) / 2);
            while edges.len() < want {
                let (a, b) = (rng.usize(0..n), rng.usize(0..n));
                let (a, b) = (a.min(b), a.max(b));
                if a != b && have.insert((a, b)) {
                    edges.push((a, b));
                }
            }
            (names, edges)
        }
    }
}

fn resident_bytes() -> u64 {
    crate::proc_metrics::Reading::now().map_or(0, |r| r.resident_bytes)
}

/// Runs one simulation to its end: every IAMAT made, everything healed, every
/// message delivered.
pub fn run(cfg: &Config) -> Report {
    let started = Instant::now();
    let rss_before = resident_bytes();
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let (names, edges) = shape(&cfg.topology, &mut rng);
    let n = names.len();
    let mut adjacent = vec![Vec::new(); n];
    for (l, &(a, b)) in edges.iter().enumerate() {
        adjacent[a].push((b, l));
        adjacent[b].push((a, l));
    }
    let nodes = (0..n)
        .map(|i| {
            let neighbours = adjacent[i].iter().map(|&(j, _)| names[j].clone()).collect();
            Replica::new(names[i].clone(), 1 + i as u64, neighbours)
        })
        .collect();
    let side = (0..n).map(|_| rng.bool()).collect();
    let links: Vec<Link> = edges
        .iter()
        .enumerate()
        .map(|(l, &(a, b))| Link {
            ends: (a, b),
            at: [place(&adjacent[b], l), place(&adjacent[a], l)],
            up: true,
            epoch: 0,
            last_due: [0; 2],
        })
        .collect();

    let mut sim = Sim {
        rng,
        now: 0,
        next_n: 0,
        events: BinaryHeap::new(),
        nodes,
        links,
        down: 0,
        lazy: if cfg.broadcast == Broadcast::Plumtree {
            adjacent.iter().map(|a| vec![false; a.len()]).collect()
        } else {
            Vec::new()
        },
        has: if cfg.broadcast == Broadcast::Plumtree {
            vec![vec![0; cfg.updates.div_ceil(64)]; n]
        } else {
            Vec::new()
        },
        missing: Default::default(),
        adjacent,
        syncs: edges.iter().map(|_| Default::default()).collect(),
        spread: vec![Spread::default(); cfg.updates],
        side,
        partitioned: cfg
            .partition
            .then(|| (cfg.updates / 3, 2 * cfg.updates / 3)),
        healed_at: None,
        heal_k: 0,
        r: Counters::default(),
        cfg: cfg.clone(),
    };
    if cfg.updates > 0 {
        sim.at(0, Ev::Inject(0));
    }
    while let Some(item) = sim.events.pop() {
        sim.now = item.t;
        sim.handle(item.ev);
    }
    let rss_after = resident_bytes();
    let report = sim.report(started.elapsed(), rss_after.saturating_sub(rss_before));
    // Freeing a thousand servers' tables record by record takes seconds: done on
    // another thread, which a program that ends right after does not wait for.
    std::thread::spawn(move || drop(sim));
    report
}

impl Sim {
    fn at(&mut self, t: u64, ev: Ev) {
        self.next_n += 1;
        self.events.push(Item {
            t,
            n: self.next_n,
            ev,
        });
    }

    fn interval_us(&self) -> u64 {
        (1e6 / self.cfg.rate.max(1e-3)) as u64
    }

    /// Sends `msg` on link `e` from its end `d`: gone if the link is down.
    fn send(&mut self, e: usize, d: usize, msg: Msg) {
        let link = &self.links[e];
        if !link.up {
            return;
        }
        let (lo, hi) = self.cfg.delay_us;
        let mut t = self.now + self.rng.u64(lo.min(hi)..=hi.max(lo));
        if self.cfg.loss > 0.0 && self.rng.f64() < self.cfg.loss {
            t += self.cfg.retransmit_us;
        }
        let t = t.max(link.last_due[d] + 1);
        let epoch = link.epoch;
        self.links[e].last_due[d] = t;
        self.at(t, Ev::Deliver { e, d, epoch, msg });
    }

    /// The sender and the receiver of direction `d` of link `e`.
    fn ends(&self, e: usize, d: usize) -> (usize, usize) {
        let (a, b) = self.links[e].ends;
        if d == 0 { (a, b) } else { (b, a) }
    }

    /// Which of `i`'s neighbours `name` is: the flood plan names them by the very
    /// strings of the replica's neighbour list (same order as `adjacent[i]`), so a
    /// pointer comparison finds it without hashing a name.
    fn neighbour(&self, i: usize, name: &str) -> usize {
        let list = self.nodes[i].neighbours();
        list.iter()
            .position(|n| std::ptr::eq(n.as_ptr(), name.as_ptr()))
            .or_else(|| list.iter().position(|n| **n == *name))
            .expect("a neighbour")
    }

    /// The link from `i` to its `k`th neighbour, and its direction from `i`.
    fn link_at(&self, i: usize, k: usize) -> (usize, usize) {
        let l = self.adjacent[i][k].1;
        (l, usize::from(self.links[l].ends.0 != i))
    }

    fn is_up(&self, i: usize, name: &str) -> bool {
        self.down == 0 || self.links[self.adjacent[i][self.neighbour(i, name)].1].up
    }

    /// The links (and directions) to `targets`, neighbours of `i`.
    fn links_to(&self, i: usize, targets: &[&str]) -> Vec<(usize, usize)> {
        targets
            .iter()
            .map(|t| self.link_at(i, self.neighbour(i, t)))
            .collect()
    }

    fn forward(&mut self, to: Vec<(usize, usize)>, payload: Bytes) {
        for (e, d) in to {
            self.send(e, d, Msg::Update(payload.clone()));
        }
    }

    fn reached(&mut self, node: usize, k: usize) {
        if let Some(bits) = self.has.get_mut(node) {
            bits[k / 64] |= 1 << (k % 64);
        }
        let s = &mut self.spread[k];
        s.holders += 1;
        if s.holders as usize == self.nodes.len() {
            s.all_at = Some(self.now);
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Inject(k) => self.inject(k),
            Ev::Deliver { e, d, epoch, msg } => {
                if epoch == self.links[e].epoch {
                    self.deliver(e, d, msg);
                }
            }
            Ev::Sync { e, d, epoch } => {
                if epoch == self.links[e].epoch {
                    self.sync(e, d);
                }
            }
            Ev::Timer { node, k } => self.timer(node, k),
            Ev::Cut => {
                for e in 0..self.links.len() {
                    let (a, b) = self.links[e].ends;
                    if self.side[a] != self.side[b] {
                        let link = &mut self.links[e];
                        link.up = false;
                        link.epoch += 1;
                        self.syncs[e] = Default::default();
                        self.down += 1;
                    }
                }
            }
            Ev::Heal => {
                self.healed_at = Some(self.now);
                for e in 0..self.links.len() {
                    if self.links[e].up {
                        continue;
                    }
                    self.down -= 1;
                    let link = &mut self.links[e];
                    link.up = true;
                    link.epoch += 1;
                    link.last_due = [self.now; 2];
                    // A new link starts eager at both ends.
                    let ((a, b), at) = (link.ends, link.at);
                    if !self.lazy.is_empty() {
                        self.lazy[a][at[1]] = false;
                        self.lazy[b][at[0]] = false;
                    }
                    // Each end sends its floors first, as a new stream does.
                    for d in 0..2 {
                        let (from, _) = self.ends(e, d);
                        let floors = self.nodes[from].floors();
                        self.send(e, d, Msg::Floors(floors));
                    }
                }
            }
        }
    }

    fn inject(&mut self, k: usize) {
        if let Some((cut, heal)) = self.partitioned {
            if k == cut {
                self.handle(Ev::Cut);
            } else if k == heal {
                self.heal_k = k;
                self.handle(Ev::Heal);
            }
        }
        let i = self.rng.usize(0..self.nodes.len());
        let line = format!(
            "IAMAT c{k} +{}.5-{}.25 {}.{:09}",
            i % 90,
            k % 180,
            1 + k / 1000,
            k % 1000
        );
        let Ok(wire::Command::IAmAt(cmd)) = wire::parse(line.as_bytes(), usize::MAX) else {
            unreachable!("a valid IAMAT: {line}");
        };
        let record = Record::from_iamat(&self.nodes[i].name().clone(), b"+0.000001000", &cmd);
        self.spread[k].made_at = self.now;
        // As `peer::Backbone::flood_own` does: stored, planned, encoded once.
        let (to, payload) = {
            let node = &self.nodes[i];
            let applied = node
                .iamat(record, &cmd.client_time, true)
                .expect("a new client is stored");
            let hood = node.hood();
            let plan = node.plan(&hood, &applied, None, &[], |name| self.is_up(i, name));
            let to = self.links_to(i, &plan.targets);
            let record = applied.record.as_ref().expect("kept");
            let version = VersionRef::of(&applied.version);
            (to, record.encode_update(plan.seen, Some(version)))
        };
        self.spread[k].origin = i as u32;
        self.spread[k].seq = version_seq(&payload);
        self.reached(i, k);
        self.push(i, k, to, payload);
        if k + 1 < self.cfg.updates {
            let t = self.now + self.interval_us();
            self.at(t, Ev::Inject(k + 1));
        }
    }

    fn deliver(&mut self, e: usize, d: usize, msg: Msg) {
        let (_, to) = self.ends(e, d);
        match msg {
            Msg::Update(u) => self.apply(e, d, &u, true),
            Msg::CatchUp(updates) => {
                for u in &updates {
                    self.apply(e, d, u, false);
                }
            }
            Msg::Floors(theirs) => {
                // Floors from `from` start a catch-up on the direction back to it.
                self.syncs[e][1 - d].floors(theirs);
                let epoch = self.links[e].epoch;
                self.at(self.now, Ev::Sync { e, d: 1 - d, epoch });
            }
            Msg::CaughtUp(floors) => {
                self.nodes[to].caught_up(&floors).expect("few sources");
            }
            Msg::IHave(k) => {
                self.r.announcements += 1;
                self.r.control_bytes += self.id_bytes(k);
                if !self.holds(to, k) {
                    let from = self.links[e].at[d];
                    let first = !self.missing.contains_key(&(to, k));
                    self.missing.entry((to, k)).or_default().push(from);
                    if first {
                        let t = self.now + self.cfg.graft_timeout_us;
                        self.at(t, Ev::Timer { node: to, k });
                    }
                }
            }
            Msg::Graft(k) => {
                self.r.controls += 1;
                self.r.control_bytes += self.id_bytes(k);
                self.lazy[to][self.links[e].at[d]] = false;
                // Sent again from the table, as a catch-up record is.
                let node = &self.nodes[to];
                if let Some((record, v)) = node.get(format!("c{k}").as_bytes()) {
                    let version = VersionRef::of(&v);
                    let payload = record.encode_update(vec![&**node.name()], Some(version));
                    self.send(e, 1 - d, Msg::Update(payload));
                }
            }
            Msg::Prune => {
                self.r.controls += 1;
                self.r.control_bytes += 2;
                self.lazy[to][self.links[e].at[d]] = true;
            }
        }
    }

    /// `to` handles an update from `from` (`live`: flooded, not a catch-up record),
    /// as `peer::handle` and `Backbone::apply_prepared` do: read in place, checked
    /// (`prepare`: None below the floor), stored when it wins, forwarded as the bytes
    /// that came with this server's names added to the seen list.
    fn apply(&mut self, e: usize, d: usize, payload: &Bytes, live: bool) {
        let (_, to) = self.ends(e, d);
        let next = {
            let node = &self.nodes[to];
            // The sender's name as the receiver's own neighbour list holds it.
            let hood = node.hood();
            let from_name = &*hood.names[self.links[e].at[d]];
            let u = UpdateRef::parse(payload).expect("a well-formed update");
            let record = node.prepare(&u).expect("a valid update");
            let applied = match record {
                None => None,
                Some(record) => match node.offer_prepared(&u, record, false) {
                    Ok(Offer::Applied(a)) => Some(a),
                    Ok(Offer::Stale) => None,
                    Err(e) => panic!("a valid update refused: {e}"),
                },
            };
            applied.map(|applied| {
                let k = client_number(u.client_id);
                if self.cfg.broadcast == Broadcast::Plumtree {
                    // Every neighbour up but the sender; the tree decides how.
                    let plan =
                        node.plan(&hood, &applied, Some(from_name), &[], |n| self.is_up(to, n));
                    return (k, self.links_to(to, &plan.targets), payload.clone());
                }
                let plan = node.plan(&hood, &applied, Some(from_name), &u.seen, |n| {
                    self.is_up(to, n)
                });
                let fwd = if plan.targets.is_empty() {
                    Bytes::new()
                } else {
                    link_wire::with_seen(payload, &plan.seen[u.seen.len()..])
                };
                (k, self.links_to(to, &plan.targets), fwd)
            })
        };
        if live {
            self.r.messages += 1;
            self.r.update_bytes += link_wire::framed_len(payload.len()) as u64;
            if next.is_some() {
                self.r.useful += 1;
            } else {
                self.r.redundant += 1;
                if self.cfg.broadcast == Broadcast::Plumtree {
                    // A copy it had: this link need not carry updates whole.
                    let from = self.links[e].at[d];
                    if !self.lazy[to][from] {
                        self.lazy[to][from] = true;
                        self.send(e, 1 - d, Msg::Prune);
                    }
                }
            }
        }
        if let Some((k, targets, fwd)) = next {
            self.reached(to, k);
            self.missing.remove(&(to, k));
            self.push(to, k, targets, fwd);
        }
    }

    /// Sends update `k` (`payload`) on from `i` to `targets`: all of them when
    /// flooding; under Plumtree, whole to eager neighbours (and any being caught up)
    /// and as an announcement to lazy ones.
    fn push(&mut self, i: usize, k: usize, targets: Vec<(usize, usize)>, payload: Bytes) {
        if self.cfg.broadcast == Broadcast::Flood {
            return self.forward(targets, payload);
        }
        for (e, d) in targets {
            let place = self.links[e].at[1 - d];
            let name = &self.nodes[i].neighbours()[place];
            if self.lazy[i][place] && !self.nodes[i].catching_up(name) {
                self.send(e, d, Msg::IHave(k));
            } else {
                self.send(e, d, Msg::Update(payload.clone()));
            }
        }
    }

    fn holds(&self, node: usize, k: usize) -> bool {
        self.has[node][k / 64] & (1 << (k % 64)) != 0
    }

    /// The bytes an announcement or a graft of update `k` takes: its version framed.
    fn id_bytes(&self, k: usize) -> u64 {
        let s = &self.spread[k];
        let origin = self.nodes[s.origin as usize].name().len();
        let inc = 1 + s.origin as u64;
        let v = 2
            + origin
            + 1
            + prost::encoding::encoded_len_varint(inc)
            + 1
            + prost::encoding::encoded_len_varint(u64::from(s.seq));
        (2 + v) as u64
    }

    /// Plumtree: `node` heard update `k` announced and has waited long enough.
    fn timer(&mut self, node: usize, k: usize) {
        if self.holds(node, k) {
            self.missing.remove(&(node, k));
            return;
        }
        let Some(list) = self.missing.get_mut(&(node, k)) else {
            return;
        };
        if list.is_empty() {
            self.missing.remove(&(node, k));
            return;
        }
        let place = list.remove(0);
        let again = !list.is_empty();
        self.lazy[node][place] = false;
        let (e, d) = self.link_at(node, place);
        self.send(e, d, Msg::Graft(k));
        if again {
            let t = self.now + self.cfg.graft_timeout_us;
            self.at(t, Ev::Timer { node, k });
        }
    }

    /// The sending side of (e, d) runs its catch-up to the end.
    fn sync(&mut self, e: usize, d: usize) {
        let (from, to) = self.ends(e, d);
        let peer = self.nodes[to].name().clone();
        loop {
            let mut marker = None;
            let step = self.syncs[e][d].step(
                &self.nodes[from],
                &peer,
                1 << 20,
                || 0,
                |m| marker = Some(m),
            );
            if let Some(m) = marker {
                self.send(e, d, Msg::CaughtUp(m));
            }
            match step {
                SyncStep::Started { .. } => self.r.catch_ups += 1,
                SyncStep::Records(r) => {
                    // Encoded as `peer::link` sends them.
                    let r: Vec<Bytes> = r
                        .iter()
                        .map(|u| Bytes::from(prost::Message::encode_to_vec(u)))
                        .collect();
                    self.r.catch_up_records += r.len() as u64;
                    self.r.catch_up_bytes += r
                        .iter()
                        .map(|u| link_wire::framed_len(u.len()) as u64)
                        .sum::<u64>();
                    self.send(e, d, Msg::CatchUp(r));
                }
                SyncStep::Ended { .. } | SyncStep::Idle => return,
            }
        }
    }

    fn report(&self, wall: Duration, rss: u64) -> Report {
        let cfg = &self.cfg;
        let window = self.partitioned;
        let mut reach: Vec<u64> = self
            .spread
            .iter()
            .enumerate()
            .filter(|(k, _)| window.is_none_or(|(cut, heal)| *k < cut || *k >= heal))
            .filter_map(|(_, s)| s.all_at.map(|t| t - s.made_at))
            .collect();
        reach.sort_unstable();
        let pct = |p: f64| {
            if reach.is_empty() {
                0
            } else {
                reach[((reach.len() - 1) as f64 * p).round() as usize]
            }
        };
        let heal_to_converged_us = self.healed_at.map(|healed| {
            self.spread[..self.heal_k]
                .iter()
                .filter_map(|s| s.all_at)
                .max()
                .unwrap_or(healed)
                .saturating_sub(healed)
        });
        let digests: Vec<(u64, u64)> = self.nodes.iter().map(|n| n.digest()).collect();
        Report {
            broadcast: cfg.broadcast,
            seed: cfg.seed,
            servers: self.nodes.len(),
            links: self.links.len(),
            updates: cfg.updates,
            reached_all: self.spread.iter().filter(|s| s.all_at.is_some()).count(),
            reach_p50_us: pct(0.50),
            reach_p99_us: pct(0.99),
            reach_max_us: reach.last().copied().unwrap_or(0),
            messages: self.r.messages,
            useful: self.r.useful,
            redundant: self.r.redundant,
            update_bytes: self.r.update_bytes,
            announcements: self.r.announcements,
            controls: self.r.controls,
            control_bytes: self.r.control_bytes,
            catch_ups: self.r.catch_ups,
            catch_up_records: self.r.catch_up_records,
            catch_up_bytes: self.r.catch_up_bytes,
            heal_to_converged_us,
            converged: digests.windows(2).all(|w| w[0] == w[1]),
            memory_per_server: rss / self.nodes.len().max(1) as u64,
            simulated_us: self.now,
            wall_ms: wall.as_millis() as u64,
        }
    }
}

/// The seq of an encoded update's version.
fn version_seq(payload: &[u8]) -> u32 {
    UpdateRef::parse(payload)
        .ok()
        .and_then(|u| u.version)
        .map_or(0, |v| v.seq as u32)
}

/// Where link `l` is in a neighbour list.
fn place(list: &[(usize, usize)], l: usize) -> usize {
    list.iter()
        .position(|&(_, x)| x == l)
        .expect("a link of the node")
}

/// The simulated client's number: every IAMAT is client `c<k>`.
fn client_number(client_id: &[u8]) -> usize {
    client_id[1..]
        .iter()
        .fold(0, |k, &b| k * 10 + usize::from(b - b'0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(topology: Topology, seed: u64) -> Config {
        Config {
            topology,
            updates: 300,
            rate: 2000.0,
            seed,
            ..Config::default()
        }
    }

    #[test]
    fn the_papers_herd_gets_every_update_everywhere_with_at_most_one_redundant_message() {
        let r = run(&small(Topology::Paper, 7));
        assert_eq!((r.servers, r.links), (5, 6), "{r:?}");
        assert_eq!(r.reached_all, 300, "{r:?}");
        assert!(r.converged, "{r:?}");
        assert_eq!(r.useful, 300 * 4, "{r:?}");
        // The seen lists cover what each sender sends: an update made at Goloman or
        // Wilkes goes out once to each server. From Hands, Holiday or Welsh, the two
        // servers that get it at the same hop both send it on to one more (Holiday, or
        // Hands), which gets it twice: at most one redundant message per update.
        assert_eq!(r.messages, r.useful + r.redundant, "{r:?}");
        assert!(r.redundant > 0 && r.redundant <= 300, "{r:?}");
        assert!(r.reach_p50_us >= 100 && r.reach_p99_us <= 4 * 1000, "{r:?}");
    }

    #[test]
    fn a_random_herd_of_a_hundred_converges_and_counts_its_redundant_messages() {
        let r = run(&small(
            Topology::Random {
                servers: 100,
                degree: 4.0,
            },
            11,
        ));
        assert_eq!(r.servers, 100);
        assert_eq!(r.links, 200);
        assert_eq!(r.reached_all, 300, "{r:?}");
        assert!(r.converged, "{r:?}");
        assert_eq!(r.useful, 300 * 99, "{r:?}");
        assert_eq!(r.messages, r.useful + r.redundant, "{r:?}");
        // Cycles make flooding send some updates to servers that have them already.
        assert!(r.redundant > 0, "{r:?}");
    }

    #[test]
    fn a_partition_heals_by_catch_up_and_the_herd_converges() {
        for seed in 1..=4 {
            let mut cfg = small(
                Topology::Random {
                    servers: 40,
                    degree: 3.0,
                },
                seed,
            );
            cfg.partition = true;
            cfg.loss = 0.01;
            let r = run(&cfg);
            assert_eq!(r.reached_all, 300, "seed {seed}: {r:?}");
            assert!(r.converged, "seed {seed}: {r:?}");
            assert!(
                r.catch_ups > 0 && r.catch_up_records > 0,
                "seed {seed}: {r:?}"
            );
            assert!(r.heal_to_converged_us.is_some(), "seed {seed}: {r:?}");
        }
    }

    #[test]
    fn plumtree_sends_fewer_whole_updates_than_flooding_and_still_converges() {
        let topology = Topology::Random {
            servers: 100,
            degree: 4.0,
        };
        let flood = run(&small(topology.clone(), 3));
        let tree = run(&Config {
            broadcast: Broadcast::Plumtree,
            ..small(topology, 3)
        });
        for r in [&flood, &tree] {
            assert_eq!(r.reached_all, 300, "{r:?}");
            assert!(r.converged, "{r:?}");
            assert_eq!(r.useful, 300 * 99, "{r:?}");
            assert_eq!(r.messages, r.useful + r.redundant, "{r:?}");
        }
        assert_eq!((flood.announcements, flood.controls), (0, 0), "{flood:?}");
        assert!(tree.announcements > 0 && tree.controls > 0, "{tree:?}");
        // Whole updates: about one per server on the tree, three when flooding.
        assert!(tree.messages * 3 < flood.messages * 2, "{tree:?} {flood:?}");
        assert!(tree.redundant * 2 < flood.redundant, "{tree:?} {flood:?}");
        assert!(
            tree.bytes_per_update() * 2.0 < flood.bytes_per_update(),
            "{tree:?} {flood:?}"
        );
    }

    #[test]
    fn plumtree_heals_a_partition_with_loss_by_grafts_and_catch_ups() {
        for seed in 1..=2 {
            let cfg = Config {
                broadcast: Broadcast::Plumtree,
                partition: true,
                loss: 0.02,
                ..small(
                    Topology::Random {
                        servers: 40,
                        degree: 3.0,
                    },
                    seed,
                )
            };
            let r = run(&cfg);
            assert_eq!(r.reached_all, 300, "seed {seed}: {r:?}");
            assert!(r.converged, "seed {seed}: {r:?}");
            assert!(r.catch_up_records > 0, "seed {seed}: {r:?}");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let cfg = Config {
            partition: true,
            loss: 0.05,
            ..small(
                Topology::Random {
                    servers: 30,
                    degree: 3.0,
                },
                5,
            )
        };
        let (a, b) = (run(&cfg), run(&cfg));
        assert_eq!(
            (
                a.reach_p99_us,
                a.messages,
                a.catch_up_records,
                a.simulated_us
            ),
            (
                b.reach_p99_us,
                b.messages,
                b.catch_up_records,
                b.simulated_us
            )
        );
    }
}
