//! herd: a herd of application servers. Mobile clients tell a server where they
//! are (`IAMAT`) and ask what is near them (`WHATSAT`); servers flood location
//! updates to one another over gRPC streams.
//!
//! The data path, one module each:
//!
//! - [`wire`]: the client line protocol: bytes in, [`wire::Command`] out; replies byte for byte.
//! - [`gateway`]: the accept loop and per-connection task; turns lines into [`node::Node`] calls.
//! - [`node`]: one server as its clients see it: IAMAT and WHATSAT over the replicated table.
//! - [`replica`]: the replication protocol as pure code: versions, floors, the flood
//!   decision, what a catch-up sends; with its seeded simulation tests.
//! - [`store`]: client records, "is this newer?", and each record's version.
//! - [`peer`]: the gRPC backbone: the `Link` service, the dialer per neighbour, link states,
//!   byte-bounded queues, catch-ups and anti-entropy over the links.
//! - [`places`]: the tower stack around the places providers (the embedded offline dataset,
//!   Google Places).
//! - [`config`]: the herd file, validated before any port is bound.
//! - [`server`]: one server's lifecycle: listeners, tasks, shutdown.
//! - [`inspect`]: the operators' view: the `Inspect` gRPC service, health, reflection, metrics.
//! - [`metrics`]: one server's Prometheus metrics.
//! - [`logging`]: tracing to stderr and to one file per server.
//! - [`bench`]: `herd bench`, the load generator (and its Redis comparison mode).

pub mod bench;
pub mod config;
pub mod gateway;
pub mod inspect;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod places;
pub mod replica;
pub mod server;
pub mod store;
pub mod wire;

/// Locks a std mutex, poisoned or not. Every mutex in herd guards state that a
/// panicking holder cannot leave half-written (single assignments, appends), so a
/// poisoned lock is still good to use, and one panic must not take a server down.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The generated gRPC types of `proto/herd/v1/herd.proto`.
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod proto {
    tonic::include_proto!("herd.v1");

    /// The encoded descriptor set of the herd's protos, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/herd_descriptor.bin"));
}
