//! herd: a herd of application servers. Mobile clients tell a server where they
//! are (`IAMAT`) and ask what is near them (`WHATSAT`); servers flood location
//! updates to one another over gRPC streams.
//!
//! The data path, one module each:
//!
//! - [`wire`]: the client line protocol: the framing ([`wire::LineCodec`], a `Decoder`:
//!   lines and overlong-line pieces out of bytes in any split), bytes in,
//!   [`wire::Command`] out; replies byte for byte.
//! - [`gateway`]: the accept loop and per-connection task; runs the framer on each read
//!   and turns lines into [`node::Node`] calls; enforces the limits on hostile clients
//!   (connection caps, descriptor reserve, idle, slow-line and write timeouts).
//! - [`node`]: one server as its clients see it: IAMAT and WHATSAT over the replicated table.
//! - [`replica`]: the replication protocol as pure code: versions, floors, the flood
//!   decision, what a catch-up sends; with its seeded simulation tests.
//! - [`store`]: client records, "is this newer?", and each record's version.
//! - [`durable`]: the data dir: a journal of every change (length, CRC32C, payload in
//!   segment files), snapshots that compact it, fsync policies, the restart.
//! - [`peer`]: the gRPC backbone: the `Link` service, the dialer per neighbour, link states,
//!   byte-bounded queues, catch-ups and anti-entropy over the links.
//! - [`places`]: the tower stack around the places providers (the embedded offline dataset,
//!   Google Places).
//! - [`auth`]: who may use the peer port: the herd secret, checked in constant time,
//!   and the mutual-TLS identities; `herd certs`' CA and certificates.
//! - [`config`]: the herd file, validated before any port is bound.
//! - [`server`]: one server's lifecycle: listeners, tasks, shutdown.
//! - [`inspect`]: the operators' view: the `Inspect` gRPC service, health, reflection, metrics.
//! - [`metrics`]: one server's Prometheus metrics; [`proc_metrics`]: the process's own.
//! - [`client`], [`status`], [`probe`]: the operators' tools `herd client`, `herd status`
//!   and `herd topology`, and the health probe behind `herd health`.
//! - [`logging`]: tracing to stderr and to one file per server (tracing-subscriber, tracing-appender), rotated by size, reopened on SIGHUP.
//!
//! The load generator, `herd-bench`, is a crate of its own in `bench/` (a member of this
//! workspace): it uses [`proto`] and the places dataset, and the server does not carry it.

pub mod auth;
pub mod client;
pub mod config;
pub mod durable;
pub mod gateway;
pub mod inspect;
pub mod logging;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod places;
pub mod probe;
pub mod proc_metrics;
pub mod replica;
pub mod server;
pub mod status;
pub mod store;
pub mod wire;

/// Locks a std mutex, poisoned or not. Every mutex in herd guards state that a
/// panicking holder cannot leave half-written (single assignments, appends), so a
/// poisoned lock is still good to use, and one panic must not take a server down.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Lifts the soft limit on open files to the hard one: each client connection is a file
/// descriptor, and the default soft limit (often 1024) is far below what a server holding
/// many idle clients, or the load generator opening them, needs.
pub fn raise_open_file_limit() -> std::io::Result<()> {
    fn os_error(what: String) -> std::io::Error {
        let e = std::io::Error::last_os_error();
        std::io::Error::new(e.kind(), format!("{what}: {e}"))
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(os_error("cannot read the open file limit".into()));
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(os_error(format!(
                "cannot raise the open file limit to {}",
                limit.rlim_max
            )));
        }
    }
    Ok(())
}

/// The generated gRPC types of `proto/herd/v1/herd.proto`.
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod proto {
    tonic::include_proto!("herd.v1");

    /// The encoded descriptor set of the herd's protos, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/herd_descriptor.bin"));
}
