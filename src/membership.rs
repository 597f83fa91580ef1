//! Live membership: re-reading the herd file while the servers run (SIGHUP, or the
//! `Admin/Reload` call on any server's peer port) and applying what changed.
//!
//! A reload reads and validates the whole file first (as at start: the environment
//! and the command line's overrides applied), then checks that it can apply live
//! ([`HerdConfig::restart_needed`]): only the `[[server]]` entries may change, and
//! not the ports of a server this process runs. Only then is it applied, to every
//! server of the process at once, and an apply cannot fail: a file is applied whole
//! or not at all. Applying it to one server ([`LiveServer`]):
//! - the herd's server names become its members: updates whose origin is a new
//!   server are taken from now on (see `crate::peer` for what a server that was
//!   not reloaded does with them);
//! - a new neighbour enters the flood plan, gets a link slot (so its streams are
//!   accepted) and a dialer;
//! - a removed neighbour's link is closed for good, its dialer stopped and its
//!   metric series dropped; its records stay;
//! - a neighbour whose address changed is dialled again at the new one.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument as _;

use crate::{auth::PeerTls, auth::Secret, config::HerdConfig, node::Node, peer};

/// Reads the herd file again, as the process read it at start.
pub type Loader = Box<dyn Fn() -> Result<HerdConfig, String> + Send + Sync>;

/// What one server's links did on a reload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub server: Arc<str>,
    pub added: Vec<Arc<str>>,
    pub removed: Vec<Arc<str>>,
    /// Neighbours whose address changed: dialled again at the new one.
    pub redialled: Vec<Arc<str>>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.redialled.is_empty()
    }
}

/// Why a reload was refused: the running herd is untouched.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refused {
    /// The file cannot be read or is not a valid herd file.
    #[error("{0}")]
    Invalid(String),
    /// The file is valid but changes what only a restart can.
    #[error("{0}")]
    NeedsRestart(String),
    /// This process has no file to read again (servers started in a test).
    #[error("this process cannot re-read its herd file")]
    Unsupported,
}

/// A reload that was applied: what changed on each server of the process (all
/// empty when the file's membership did not change).
#[derive(Debug, Clone, Default)]
pub struct Reloaded {
    pub changes: Vec<Change>,
}

impl Reloaded {
    pub fn changed(&self) -> bool {
        self.changes.iter().any(|c| !c.is_empty())
    }
}

struct State {
    herd: Arc<HerdConfig>,
    servers: Vec<Arc<LiveServer>>,
}

/// The process's herd file as applied now, the servers it runs, and how to read
/// the file again. Reloads are one at a time.
pub struct Reloader {
    load: Option<Loader>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

impl Reloader {
    /// `herd` as read at start; `load` reads it again (None: reloads are refused).
    pub fn new(herd: Arc<HerdConfig>, load: Option<Loader>) -> Arc<Reloader> {
        Arc::new(Reloader {
            load,
            state: Mutex::new(State {
                herd,
                servers: Vec::new(),
            }),
        })
    }

    /// The herd file as applied now.
    pub fn herd(&self) -> Arc<HerdConfig> {
        crate::lock(&self.state).herd.clone()
    }

    /// A server of this process that has started: the file as applied now is
    /// applied to it (a reload may have come while it was starting), and it
    /// follows every reload from now on.
    pub fn register(&self, server: Arc<LiveServer>) {
        let mut state = crate::lock(&self.state);
        server.apply(&state.herd);
        state.servers.push(server);
    }

    /// Re-reads the herd file and applies it to every server of the process, or
    /// refuses it whole (logged on every server, with why).
    pub fn reload(&self) -> Result<Reloaded, Refused> {
        let mut state = crate::lock(&self.state);
        let outcome = self.try_reload(&mut state);
        for server in &state.servers {
            let metrics = server.node.metrics();
            server.span.in_scope(|| match &outcome {
                Ok(r) => {
                    let change = r.changes.iter().find(|c| c.server == server.name);
                    match change.filter(|c| !c.is_empty()) {
                        Some(c) => {
                            metrics.reload("applied");
                            tracing::info!(
                                added = %names(&c.added),
                                removed = %names(&c.removed),
                                redialled = %names(&c.redialled),
                                "herd file reloaded"
                            );
                        }
                        None => {
                            metrics.reload("unchanged");
                            tracing::info!("herd file reloaded; this server's neighbours are unchanged");
                        }
                    }
                }
                Err(e) => {
                    metrics.reload("refused");
                    tracing::warn!(problem = %e, "herd file reload refused; the running herd is unchanged");
                }
            });
        }
        outcome
    }

    fn try_reload(&self, state: &mut State) -> Result<Reloaded, Refused> {
        let load = self.load.as_ref().ok_or(Refused::Unsupported)?;
        let new = load().map_err(Refused::Invalid)?;
        let running: Vec<Arc<str>> = state.servers.iter().map(|s| s.name.clone()).collect();
        if let Some(why) = new.restart_needed(&state.herd, &running) {
            return Err(Refused::NeedsRestart(why));
        }
        let changes = state.servers.iter().map(|s| s.apply(&new)).collect();
        state.herd = Arc::new(new);
        Ok(Reloaded { changes })
    }
}

fn names(list: &[Arc<str>]) -> String {
    if list.is_empty() {
        return "-".to_owned();
    }
    list.iter().map(|n| &**n).collect::<Vec<_>>().join(",")
}

/// One running server, as a reload changes it: its node, and a dialer per
/// neighbour (its address, and the token that stops it).
pub struct LiveServer {
    name: Arc<str>,
    node: Arc<Node>,
    secret: Option<Secret>,
    tls: Option<PeerTls>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    span: tracing::Span,
    dialers: Mutex<BTreeMap<Arc<str>, (String, CancellationToken)>>,
}

impl LiveServer {
    /// Server `node` with the secret and TLS it dials with; its dialers run in
    /// `tasks` until `shutdown` (or until their neighbour is removed), in the
    /// current span.
    pub fn new(
        node: Arc<Node>,
        secret: Option<Secret>,
        tls: Option<PeerTls>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Arc<LiveServer> {
        Arc::new(LiveServer {
            name: node.name().clone(),
            node,
            secret,
            tls,
            shutdown,
            tasks,
            span: tracing::Span::current(),
            dialers: Mutex::new(BTreeMap::new()),
        })
    }

    /// Applies `herd` (checked: this server is in it) to this server.
    fn apply(&self, herd: &HerdConfig) -> Change {
        let Ok(me) = herd.server(&self.name) else {
            return Change::default();
        };
        let listed = herd.servers.iter().map(|s| s.name.clone()).collect();
        let backbone = self.node.backbone();
        let membership = backbone.set_membership(listed, me.neighbours.clone());
        let mut change = Change {
            server: self.name.clone(),
            added: membership.added,
            removed: membership.removed,
            redialled: Vec::new(),
        };
        let mut dialers = crate::lock(&self.dialers);
        dialers.retain(|n, (_, stop)| {
            let keep = me.neighbours.contains(n);
            if !keep {
                stop.cancel();
            }
            keep
        });
        if self.shutdown.is_cancelled() {
            return change;
        }
        for n in &me.neighbours {
            let Ok(neighbour) = herd.server(n) else {
                continue;
            };
            let uri = neighbour.peer_uri(self.tls.is_some());
            match dialers.get(n) {
                Some((at, _)) if *at == uri => continue,
                Some((_, stop)) => {
                    // The stream the old dialer dialled goes with it; one the
                    // neighbour dialled is closed too, so that both ends meet at
                    // the new address.
                    stop.cancel();
                    if let Some(slot) = backbone.links().get(n) {
                        slot.close();
                    }
                    change.redialled.push(n.clone());
                }
                None => {}
            }
            let Some(slot) = backbone.links().get(n) else {
                continue;
            };
            let stop = self.shutdown.child_token();
            self.tasks.spawn(
                peer::dial::run(
                    backbone.clone(),
                    slot,
                    uri.clone(),
                    self.secret.clone(),
                    self.tls.as_ref().map(|t| t.client(n)),
                    stop.clone(),
                )
                .instrument(self.span.clone()),
            );
            dialers.insert(n.clone(), (uri, stop));
        }
        change
    }
}
