//! One server's metrics, in OpenMetrics text format: clients, commands, updates,
//! links and places. Served at `GET /metrics` on the server's peer port.

use std::{sync::LazyLock, time::Duration};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
        info::Info,
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    /// `iamat`, `whatsat`, or `invalid`.
    pub kind: &'static str,
    /// `applied`, `stale`, `ok`, `unknown_client`, `rejected`.
    pub outcome: &'static str,
}

/// Why the gateway refused or closed a client connection: one of [`REFUSED`] or [`CLOSED`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Why a new client connection was accepted and closed at once: the server's
/// `gateway.max_clients`, its address's `gateway.max_clients_per_ip`, or the process's
/// open file limit less `gateway.fd_reserve`.
pub const REFUSED: [&str; 3] = ["max_clients", "max_clients_per_ip", "descriptors"];

/// Why the server closed a client connection: `gateway.idle_timeout_ms`,
/// `gateway.line_timeout_ms` (slowloris) or `gateway.write_timeout_ms` (never reads).
pub const CLOSED: [&str; 3] = ["idle", "slow_line", "write_timeout"];

/// A call on the peer port refused `UNAUTHENTICATED`: which service (one of
/// [`crate::auth::GUARDED`]) and why (a [`crate::auth::Refusal`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    pub service: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LinkLabels {
    pub neighbour: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// The results a reload of the herd file counts under.
pub const RELOAD_RESULTS: [&str; 3] = ["applied", "unchanged", "refused"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NeighbourLabels {
    pub neighbour: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlacesLabels {
    /// The answer's status word: one of [`PLACES_STATUSES`], else `OTHER`.
    pub status: &'static str,
}

/// The status words a places answer's label may carry: Google's documented ones (herd
/// also says `UNKNOWN_ERROR` for its own timeouts). Any other word a remote sends
/// counts as `OTHER`, so a remote cannot make new series; the reply keeps the word.
pub const PLACES_STATUSES: [&str; 7] = [
    "OK",
    "ZERO_RESULTS",
    "OVER_QUERY_LIMIT",
    "REQUEST_DENIED",
    "INVALID_REQUEST",
    "UNKNOWN_ERROR",
    "NOT_FOUND",
];

/// The label for status word `status`.
pub fn places_status_label(status: &str) -> &'static str {
    PLACES_STATUSES
        .into_iter()
        .find(|s| *s == status)
        .unwrap_or("OTHER")
}

/// Google answers cut off at `places.max_response_bytes`. The places stack is shared by
/// every server of a process, so this count is the process's: every server shows it.
static PLACES_RESPONSES_CUT_OFF: LazyLock<Counter> = LazyLock::new(Counter::default);

/// The process-wide count of Google answers cut off for their size.
pub fn places_responses_cut_off() -> &'static Counter {
    &PLACES_RESPONSES_CUT_OFF
}

/// Every metric of one server. Cheap to clone: each metric is shared.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connections_opened: Counter,
    pub connections_open: Gauge,
    pub commands: Family<CommandLabels, Counter>,
    pub questions: Counter,
    /// Times a client connection's held replies passed `gateway.max_held_reply_bytes`
    /// and were written before the rest of a read's lines were answered.
    pub replies_written_early: Counter,
    /// Client connections accepted and closed at once, by [`REFUSED`] reason.
    pub connections_refused: Family<ReasonLabels, Counter>,
    /// Client connections the server closed, by [`CLOSED`] reason.
    pub connections_closed: Family<ReasonLabels, Counter>,
    pub updates_received: Counter,
    pub updates_applied: Counter,
    pub updates_forwarded: Counter,
    pub updates_duplicate: Counter,
    pub link_changes: Family<LinkLabels, Counter>,
    pub queue_drops: Family<NeighbourLabels, Counter>,
    /// Times a client connection or a neighbour's stream waited for this neighbour's
    /// queue to drain (`backbone.queue_wait_ms`), and waits that ran out.
    pub queue_waits: Family<NeighbourLabels, Counter>,
    pub queue_wait_timeouts: Family<NeighbourLabels, Counter>,
    /// Seconds spent in those waits, every waiter's summed.
    pub queue_wait_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    pub catch_ups: Family<NeighbourLabels, Counter>,
    pub catch_up_records: Family<NeighbourLabels, Counter>,
    pub catch_up_bytes: Family<NeighbourLabels, Counter>,
    pub catch_ups_full: Counter,
    pub catch_ups_aborted: Counter,
    pub anti_entropy_rounds: Counter,
    pub backbone_oversize: Counter,
    pub backbone_bad_messages: Counter,
    /// Updates refused because their origin is not a server of this herd file.
    pub updates_unknown_origin: Counter,
    /// Reloads of the herd file, by result (`applied`, `unchanged`, `refused`).
    pub reloads: Family<ResultLabels, Counter>,
    /// Peer-port calls refused for want of the secret or the right certificate.
    pub auth_refused: Family<AuthLabels, Counter>,
    pub places_requests: Family<PlacesLabels, Counter>,
    pub places_latency: Histogram,
    pub places_cache_hits: Counter,
    /// Client records held, set at each scrape.
    pub records: Gauge,
    /// Their bytes as `backbone.max_record_bytes` counts them, set at each scrape.
    pub record_bytes: Gauge,
    /// Records evicted at the cap, or at a neighbour's eviction watermark.
    pub records_evicted: Counter,
    /// The series every server has, resolved once (no label hashing per command).
    common_commands: Vec<(CommandLabels, Counter)>,
    common_places: Vec<(&'static str, Counter)>,
}

/// Every command outcome there is: each series exists (at 0) from the start.
const COMMANDS: [(&str, &str); 7] = [
    ("iamat", "applied"),
    ("iamat", "stale"),
    ("whatsat", "ok"),
    ("whatsat", "unknown_client"),
    ("invalid", "rejected"),
    ("invalid", "too_long"),
    ("invalid", "client_id_too_long"),
];

impl Metrics {
    pub fn new(server: &str) -> Metrics {
        // The herd's own metrics are `herd_*`; the process's keep their standard names.
        let mut registry =
            Registry::with_labels([("server".into(), server.to_owned().into())].into_iter());
        let m = Metrics {
            registry: Registry::default(),
            connections_opened: Counter::default(),
            connections_open: Gauge::default(),
            commands: Family::default(),
            questions: Counter::default(),
            replies_written_early: Counter::default(),
            connections_refused: Family::default(),
            connections_closed: Family::default(),
            updates_received: Counter::default(),
            updates_applied: Counter::default(),
            updates_forwarded: Counter::default(),
            updates_duplicate: Counter::default(),
            link_changes: Family::default(),
            queue_drops: Family::default(),
            queue_waits: Family::default(),
            queue_wait_timeouts: Family::default(),
            queue_wait_seconds: Counter::default(),
            catch_ups: Family::default(),
            catch_up_records: Family::default(),
            catch_up_bytes: Family::default(),
            catch_ups_full: Counter::default(),
            catch_ups_aborted: Counter::default(),
            anti_entropy_rounds: Counter::default(),
            backbone_oversize: Counter::default(),
            backbone_bad_messages: Counter::default(),
            updates_unknown_origin: Counter::default(),
            reloads: Family::default(),
            auth_refused: Family::default(),
            places_requests: Family::default(),
            places_latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
            places_cache_hits: Counter::default(),
            records: Gauge::default(),
            record_bytes: Gauge::default(),
            records_evicted: Counter::default(),
            common_commands: Vec::new(),
            common_places: Vec::new(),
        };
        let r = registry.sub_registry_with_prefix("herd");
        r.register(
            "build",
            "The running binary: version and commit",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", env!("HERD_COMMIT")),
            ]),
        );
        r.register(
            "records",
            "Client records this server holds",
            m.records.clone(),
        );
        r.register(
            "record_bytes",
            "Bytes of the client records held (AT lines, and 64 a record), against backbone.max_record_bytes",
            m.record_bytes.clone(),
        );
        r.register(
            "records_evicted",
            "Client records evicted, oldest by client time, at backbone.max_record_bytes or at a neighbour's eviction watermark",
            m.records_evicted.clone(),
        );
        r.register(
            "client_connections",
            "Client connections accepted",
            m.connections_opened.clone(),
        );
        r.register(
            "client_connections_open",
            "Client connections open now",
            m.connections_open.clone(),
        );
        r.register(
            "commands",
            "Client commands by kind and outcome",
            m.commands.clone(),
        );
        r.register(
            "question_replies",
            "Lines answered with '?'",
            m.questions.clone(),
        );
        r.register(
            "client_replies_written_early",
            "Times a client connection's held replies passed gateway.max_held_reply_bytes and were written before its read was fully answered",
            m.replies_written_early.clone(),
        );
        for reason in REFUSED {
            let _ = m
                .connections_refused
                .get_or_create(&ReasonLabels { reason });
        }
        r.register(
            "client_connections_refused",
            "Client connections accepted and closed at once, by the limit that bit",
            m.connections_refused.clone(),
        );
        for reason in CLOSED {
            let _ = m.connections_closed.get_or_create(&ReasonLabels { reason });
        }
        r.register(
            "client_connections_closed",
            "Client connections the server closed, by the timeout that bit",
            m.connections_closed.clone(),
        );
        r.register(
            "updates_received",
            "Updates received from neighbours",
            m.updates_received.clone(),
        );
        r.register(
            "updates_applied",
            "Updates from neighbours that were newer and applied",
            m.updates_applied.clone(),
        );
        r.register(
            "updates_forwarded",
            "Updates queued to neighbours (own IAMATs and forwarded ones)",
            m.updates_forwarded.clone(),
        );
        r.register(
            "updates_duplicate",
            "Updates from neighbours dropped as not newer",
            m.updates_duplicate.clone(),
        );
        r.register(
            "link_state_changes",
            "Link state changes by neighbour and new state",
            m.link_changes.clone(),
        );
        r.register(
            "backbone_queue_drops",
            "Updates dropped because a neighbour's queue was at its byte budget (the link is then repaired from floors)",
            m.queue_drops.clone(),
        );
        r.register(
            "backbone_queue_waits",
            "Times a client connection or a neighbour's stream waited for a neighbour's queue past half its budget to drain (backbone.queue_wait_ms)",
            m.queue_waits.clone(),
        );
        r.register(
            "backbone_queue_wait_timeouts",
            "Waits for a neighbour's queue that ran out of backbone.queue_wait_ms (the queue is not waited for again until it drains)",
            m.queue_wait_timeouts.clone(),
        );
        r.register(
            "backbone_queue_wait_seconds",
            "Seconds client connections and neighbours' streams spent waiting for neighbours' queues to drain",
            m.queue_wait_seconds.clone(),
        );
        r.register(
            "backbone_catch_ups",
            "Catch-ups started to a neighbour (at link-up, on its anti-entropy floors, or to repair dropped updates)",
            m.catch_ups.clone(),
        );
        r.register(
            "backbone_catch_up_records",
            "Records sent to a neighbour by catch-ups",
            m.catch_up_records.clone(),
        );
        r.register(
            "backbone_catch_up_bytes",
            "Encoded bytes of the records sent to a neighbour by catch-ups",
            m.catch_up_bytes.clone(),
        );
        r.register(
            "backbone_full_table_catch_ups",
            "Catch-ups that sent the whole table because a neighbour's floors could not be trusted",
            m.catch_ups_full.clone(),
        );
        r.register(
            "backbone_catch_ups_aborted",
            "Catch-ups whose end was not sent because updates were dropped meanwhile",
            m.catch_ups_aborted.clone(),
        );
        r.register(
            "backbone_anti_entropy_rounds",
            "Floor vectors sent to neighbours on the anti-entropy timer",
            m.anti_entropy_rounds.clone(),
        );
        r.register(
            "backbone_oversize_messages",
            "Links cut because a neighbour sent a message above max_message_bytes",
            m.backbone_oversize.clone(),
        );
        r.register(
            "backbone_bad_messages",
            "Links cut because a neighbour sent a malformed or out-of-contract message (none of it applied)",
            m.backbone_bad_messages.clone(),
        );
        r.register(
            "backbone_unknown_origin_updates",
            "Updates refused (not stored nor forwarded; the link stays up) because their origin is not a server of this herd file",
            m.updates_unknown_origin.clone(),
        );
        for result in RELOAD_RESULTS {
            let _ = m.reloads.get_or_create(&ResultLabels { result });
        }
        r.register(
            "reloads",
            "Reloads of the herd file (SIGHUP or the Admin/Reload call), by result",
            m.reloads.clone(),
        );
        for service in crate::auth::GUARDED {
            for refusal in crate::auth::REFUSALS {
                let _ = m.auth_refused.get_or_create(&AuthLabels {
                    service,
                    reason: refusal.as_str(),
                });
            }
        }
        r.register(
            "peer_auth_refused",
            "Peer-port calls refused UNAUTHENTICATED (no secret, a wrong one, or a client certificate that does not name herd-from), by service",
            m.auth_refused.clone(),
        );
        r.register(
            "places_requests",
            "Places lookups by answer status",
            m.places_requests.clone(),
        );
        r.register(
            "places_latency_seconds",
            "Places lookup latency",
            m.places_latency.clone(),
        );
        r.register(
            "places_cache_hits",
            "Places lookups answered from the cache",
            m.places_cache_hits.clone(),
        );
        r.register(
            "places_responses_cut_off",
            "Google answers cut off at places.max_response_bytes (in this process, shared by its servers)",
            places_responses_cut_off().clone(),
        );
        r.register_collector(Box::new(LogLinesDropped(server.to_owned())));
        r.register_collector(Box::new(LogRotations(server.to_owned())));
        registry.register_collector(Box::new(crate::proc_metrics::ProcessCollector));
        let common_commands = COMMANDS
            .iter()
            .map(|&(kind, outcome)| {
                let labels = CommandLabels { kind, outcome };
                let counter = m.commands.get_or_create(&labels).clone();
                (labels, counter)
            })
            .collect();
        let common_places = ["OK", "ZERO_RESULTS"]
            .into_iter()
            .map(|status| {
                let labels = PlacesLabels { status };
                (status, m.places_requests.get_or_create(&labels).clone())
            })
            .collect();
        Metrics {
            registry,
            common_commands,
            common_places,
            ..m
        }
    }

    /// Adds a data dir's series (`herd_data_*`).
    pub fn register_data(&mut self, data: &crate::durable::DataMetrics) {
        data.register(self.registry.sub_registry_with_prefix("herd"));
    }

    pub fn command(&self, kind: &'static str, outcome: &'static str) {
        match self
            .common_commands
            .iter()
            .find(|(l, _)| l.kind == kind && l.outcome == outcome)
        {
            Some((_, counter)) => counter.inc(),
            None => self
                .commands
                .get_or_create(&CommandLabels { kind, outcome })
                .inc(),
        };
    }

    /// Counts a refused client connection; `reason` is one of [`REFUSED`].
    pub fn refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts a client connection the server closed; `reason` is one of [`CLOSED`].
    pub fn closed(&self, reason: &'static str) {
        self.connections_closed
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn auth_refused(&self, service: &'static str, reason: &'static str) {
        self.auth_refused
            .get_or_create(&AuthLabels { service, reason })
            .inc();
    }

    pub fn link_state(&self, neighbour: &str, state: &'static str) {
        self.link_changes
            .get_or_create(&LinkLabels {
                neighbour: neighbour.to_owned(),
                state,
            })
            .inc();
    }

    fn neighbour(neighbour: &str) -> NeighbourLabels {
        NeighbourLabels {
            neighbour: neighbour.to_owned(),
        }
    }

    /// Every series of a new neighbour exists (at 0) from the start, before it first bites.
    pub fn new_neighbour(&self, neighbour: &str) {
        self.catch_up_sent(neighbour, 0, 0);
        self.queue_drops_of(neighbour);
        self.catch_ups_of(neighbour);
        self.queue_waits_of(neighbour);
        self.queue_wait_timeouts_of(neighbour);
    }

    /// A neighbour removed from the herd file: its series go.
    pub fn forget_neighbour(&self, neighbour: &str) {
        let labels = Metrics::neighbour(neighbour);
        self.queue_drops.remove(&labels);
        self.queue_waits.remove(&labels);
        self.queue_wait_timeouts.remove(&labels);
        self.catch_ups.remove(&labels);
        self.catch_up_records.remove(&labels);
        self.catch_up_bytes.remove(&labels);
        for state in ["down", "connecting", "backoff", "up"] {
            self.link_changes.remove(&LinkLabels {
                neighbour: neighbour.to_owned(),
                state,
            });
        }
    }

    pub fn reload(&self, result: &'static str) {
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn queue_drops_of(&self, neighbour: &str) -> Counter {
        self.queue_drops
            .get_or_create(&Metrics::neighbour(neighbour))
            .clone()
    }

    pub fn queue_waits_of(&self, neighbour: &str) -> Counter {
        self.queue_waits
            .get_or_create(&Metrics::neighbour(neighbour))
            .clone()
    }

    pub fn queue_wait_timeouts_of(&self, neighbour: &str) -> Counter {
        self.queue_wait_timeouts
            .get_or_create(&Metrics::neighbour(neighbour))
            .clone()
    }

    pub fn catch_ups_of(&self, neighbour: &str) -> Counter {
        self.catch_ups
            .get_or_create(&Metrics::neighbour(neighbour))
            .clone()
    }

    pub fn queue_drop(&self, neighbour: &str) {
        self.queue_drops
            .get_or_create(&Metrics::neighbour(neighbour))
            .inc();
    }

    pub fn catch_up_started(&self, neighbour: &str, full: bool) {
        self.catch_ups
            .get_or_create(&Metrics::neighbour(neighbour))
            .inc();
        if full {
            self.catch_ups_full.inc();
        }
    }

    pub fn catch_up_sent(&self, neighbour: &str, records: u64, bytes: u64) {
        let labels = Metrics::neighbour(neighbour);
        self.catch_up_records.get_or_create(&labels).inc_by(records);
        self.catch_up_bytes.get_or_create(&labels).inc_by(bytes);
    }

    pub fn places(&self, status: &str, took: Duration) {
        match self.common_places.iter().find(|(s, _)| *s == status) {
            Some((_, counter)) => counter.inc(),
            None => self
                .places_requests
                .get_or_create(&PlacesLabels {
                    status: places_status_label(status),
                })
                .inc(),
        };
        self.places_latency.observe(took.as_secs_f64());
    }

    /// The OpenMetrics text exposition of every metric (see `inspect::CONTENT_TYPE`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// `log_lines_dropped`: the server's log lines that its log writer's queue had no
/// room for, read from the writer at each scrape.
#[derive(Debug)]
struct LogLinesDropped(String);

impl prometheus_client::collector::Collector for LogLinesDropped {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        let dropped = ConstCounter::new(crate::logging::dropped_lines(&self.0));
        dropped.encode(encoder.encode_descriptor(
            "log_lines_dropped",
            "Log lines dropped because the log file's writer fell a whole queue behind",
            None,
            dropped.metric_type(),
        )?)
    }
}

/// `log_rotations`: how many times the server's log file reached `[log]
/// max_file_bytes` and was rotated, read from the writer at each scrape.
#[derive(Debug)]
struct LogRotations(String);

impl prometheus_client::collector::Collector for LogRotations {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        let rotations = ConstCounter::new(crate::logging::rotations(&self.0));
        rotations.encode(encoder.encode_descriptor(
            "log_rotations",
            "Times the log file reached [log] max_file_bytes and was rotated",
            None,
            rotations.metric_type(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_server_label() {
        let m = Metrics::new("Goloman");
        m.command("iamat", "applied");
        m.command("iamat", "applied");
        m.questions.inc();
        m.places("OK", Duration::from_millis(2));
        let text = m.render();
        assert!(
            text.contains(
                r#"herd_commands_total{server="Goloman",kind="iamat",outcome="applied"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"herd_question_replies_total{server="Goloman"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"herd_places_latency_seconds_count{server="Goloman"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"herd_log_lines_dropped_total{server="Goloman"} 0"#),
            "{text}"
        );
    }

    #[test]
    fn only_known_status_words_become_labels() {
        let m = Metrics::new("Goloman");
        m.places("REQUEST_DENIED", Duration::ZERO);
        m.places("NOT_FOUND", Duration::ZERO);
        m.places("OVER_DAILY_LIMIT", Duration::ZERO);
        m.places("x\"} 1\nevil", Duration::ZERO);
        m.places("", Duration::ZERO);
        let text = m.render();
        for line in [
            r#"herd_places_requests_total{server="Goloman",status="REQUEST_DENIED"} 1"#,
            r#"herd_places_requests_total{server="Goloman",status="NOT_FOUND"} 1"#,
            r#"herd_places_requests_total{server="Goloman",status="OTHER"} 3"#,
            r#"herd_places_requests_total{server="Goloman",status="OK"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
        assert!(
            !text.contains("OVER_DAILY") && !text.contains("evil"),
            "{text}"
        );
        assert_eq!(places_status_label("UNKNOWN_ERROR"), "UNKNOWN_ERROR");
    }
}
