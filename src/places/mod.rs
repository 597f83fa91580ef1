//! Places for WHATSAT: the request and answer types, the tower stack around the
//! providers (assembled in [`stack`] and nowhere else), and the Nearby Search JSON.

pub mod cache;
pub mod google;
pub mod limit;
pub mod offline;
pub mod retry;

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::future::BoxFuture;
use tokio::sync::OnceCell;
use tower::{BoxError, Service, ServiceBuilder, util::BoxCloneSyncService};

use self::{
    cache::{CacheLayer, CoalesceLayer, Grid},
    google::{GoogleError, GoogleProvider},
    limit::LimitLayer,
    offline::OfflineIndex,
    retry::RetryTransient,
};
use crate::config::{PlacesConfig, ProviderKind};

/// The most results a WHATSAT may ask for.
pub const MAX_BOUND: usize = 20;

/// One places lookup.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlacesRequest {
    pub lat: f64,
    pub lon: f64,
    /// Radius in metres.
    pub radius_m: f64,
    /// The most results the client wants; providers may return more, the reply cuts.
    pub bound: usize,
}

/// A lookup's answer, in Google Nearby Search's terms.
#[derive(Clone, Debug, PartialEq)]
pub struct Places {
    /// `OK`, `ZERO_RESULTS`, or Google's word for the failure.
    pub status: String,
    /// Each result a compact JSON object in Nearby Search's result format, nearest first.
    pub results: Vec<Arc<str>>,
    pub error_message: Option<String>,
    /// Answered from the cache rather than by the provider (for metrics).
    pub cached: bool,
}

impl Places {
    /// Places found (or none): `OK` or `ZERO_RESULTS`.
    pub fn found(results: Vec<Arc<str>>) -> Places {
        let status = if results.is_empty() {
            "ZERO_RESULTS"
        } else {
            "OK"
        };
        Places {
            status: status.to_owned(),
            results,
            error_message: None,
            cached: false,
        }
    }

    /// A failed lookup: no results, a status in Google's words, and what went wrong.
    pub fn failed(status: &str, message: impl Into<String>) -> Places {
        Places {
            status: status.to_owned(),
            results: Vec::new(),
            error_message: Some(message.into()),
            cached: false,
        }
    }

    /// The answer a client gets when the lookup failed with `err` (or with one of its
    /// sources: a layer may wrap the failure it passes on).
    pub fn from_error(err: &BoxError, timeout: Duration) -> Places {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&**err);
        while let Some(e) = cause {
            if e.is::<tower::timeout::error::Elapsed>() {
                return Places::failed(
                    "UNKNOWN_ERROR",
                    format!("places lookup timed out after {} ms", timeout.as_millis()),
                );
            }
            if let Some(e) = e.downcast_ref::<ProviderError>() {
                return Places::failed(&e.status, e.message.clone());
            }
            cause = e.source();
        }
        Places::failed("UNKNOWN_ERROR", format!("places lookup failed: {err}"))
    }

    /// Writes the Nearby Search JSON with at most `bound` results: no empty line
    /// inside, no trailing newline.
    pub fn write_json(&self, bound: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\n  \"html_attributions\": [],\n  \"results\": [");
        let shown = &self.results[..self.results.len().min(bound)];
        for (i, r) in shown.iter().enumerate() {
            out.extend_from_slice(if i == 0 { b"\n    " } else { b",\n    " });
            out.extend_from_slice(r.as_bytes());
        }
        if !shown.is_empty() {
            out.extend_from_slice(b"\n  ");
        }
        out.extend_from_slice(b"],\n  \"status\": ");
        write_json_string(&self.status, out);
        if let Some(m) = &self.error_message {
            out.extend_from_slice(b",\n  \"error_message\": ");
            write_json_string(m, out);
        }
        out.extend_from_slice(b"\n}");
    }
}

fn write_json_string(s: &str, out: &mut Vec<u8>) {
    // Serializing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A failure a provider reports in Google's words.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ProviderError {
    pub status: String,
    pub message: String,
}

/// The places service every server calls: the whole tower stack, boxed.
pub type PlacesService = BoxCloneSyncService<PlacesRequest, Places, BoxError>;

/// Assembles the tower stack around the configured provider. The only place where
/// layers are chosen: the gateway and node see a `Service` and nothing else.
///
/// Google's stack, outermost first: failures become answers; the overall deadline;
/// the cache (a hit is answered here, before the map of lookups in flight); identical
/// lookups in flight coalesced; Google's failures put in the client's words; retries
/// of transient failures with backoff; the concurrency limit; the per-attempt
/// deadline; the HTTP request. The request reaches Google at the client's own
/// location: only the cache key groups nearby locations (see [`cache`]). The bound is
/// not applied here: the reply cuts the (cached) answer to it. The offline provider
/// gets the client's request as it is (its searches cost nothing).
pub fn stack(config: &PlacesConfig, offline: OfflineProvider) -> Result<PlacesService, BoxError> {
    let timeout = config.timeout;
    // Outermost: every failure becomes the failure answer PROTOCOL.md promises, and is logged.
    let answer = move |result: Result<Places, BoxError>| {
        Ok::<_, BoxError>(result.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "places lookup failed");
            Places::from_error(&e, timeout)
        }))
    };
    match config.provider {
        ProviderKind::Offline => Ok(BoxCloneSyncService::new(
            ServiceBuilder::new()
                .map_result(answer)
                .timeout(timeout)
                .service(offline),
        )),
        ProviderKind::Google => {
            let g = &config.google;
            let provider = GoogleProvider::new(g)?;
            let policy =
                RetryTransient::from_config(g).map_err(|e| format!("places backoff: {e}"))?;
            let (grid, attempt_timeout) = (Grid::new(g.cache_grid_fraction), g.attempt_timeout);
            Ok(BoxCloneSyncService::new(
                ServiceBuilder::new()
                    .map_result(answer)
                    // The client's deadline covers everything below, waiting included.
                    .timeout(timeout)
                    // Cost control keys on the grid cell; the bound cuts the answer later.
                    .layer(CacheLayer::new(g.cache_entries, g.cache_ttl, grid))
                    .layer(CoalesceLayer::new(grid))
                    // Below here failures are Google's or an attempt's; above, the client's words.
                    .map_err(move |e| describe(e, attempt_timeout))
                    .retry(policy)
                    .layer(LimitLayer::new(g.max_concurrency))
                    .timeout(attempt_timeout)
                    .service(provider),
            ))
        }
    }
}

/// A failure that came out of the retry layer, as the failure the client is told about.
fn describe(err: BoxError, attempt_timeout: Duration) -> BoxError {
    if err.is::<tower::timeout::error::Elapsed>() {
        return Box::new(ProviderError {
            status: "UNKNOWN_ERROR".into(),
            message: format!(
                "Google did not answer within {} ms",
                attempt_timeout.as_millis()
            ),
        });
    }
    match err.downcast::<GoogleError>() {
        Ok(e) => Box::new(ProviderError {
            status: e.status().to_owned(),
            message: e.message(),
        }),
        Err(other) => other,
    }
}

/// The embedded offline provider as a tower service. The index is built once, in
/// the background, and shared by every server of the process.
#[derive(Clone, Debug, Default)]
pub struct OfflineProvider {
    index: Arc<OnceCell<Arc<OfflineIndex>>>,
}

impl OfflineProvider {
    pub fn new() -> OfflineProvider {
        OfflineProvider::default()
    }

    /// Starts building the index now, so the first WHATSAT does not wait for it.
    pub fn preload(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.index().await {
                tracing::error!(error = %e, "offline places dataset failed to load");
            }
        });
    }

    async fn index(&self) -> Result<Arc<OfflineIndex>, BoxError> {
        self.index
            .get_or_try_init(|| async {
                let started = std::time::Instant::now();
                let index = tokio::task::spawn_blocking(OfflineIndex::load).await??;
                tracing::info!(
                    places = index.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "offline places index built"
                );
                Ok::<_, BoxError>(Arc::new(index))
            })
            .await
            .cloned()
    }
}

impl Service<PlacesRequest> for OfflineProvider {
    type Response = Places;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Places, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: PlacesRequest) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let index = match this.index.get() {
                Some(index) => index.clone(),
                None => this.index().await?,
            };
            // At least one, so `status` can say whether any place is in the radius
            // even when the client's bound is 0.
            let limit = req.bound.clamp(1, MAX_BOUND);
            Ok(Places::found(index.search(
                req.lat,
                req.lon,
                req.radius_m,
                limit,
            )))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(p: &Places, bound: usize) -> String {
        let mut out = Vec::new();
        p.write_json(bound, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn nearby_json_is_valid_with_no_empty_lines() {
        let p = Places::found(vec![
            Arc::from(r#"{"name":"a"}"#),
            Arc::from(r#"{"name":"b"}"#),
        ]);
        for bound in [0, 1, 2, 5] {
            let t = text(&p, bound);
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["status"], "OK");
            assert_eq!(v["results"].as_array().unwrap().len(), bound.min(2));
            assert_eq!(v["html_attributions"], serde_json::json!([]));
            assert!(!t.contains("\n\n") && !t.ends_with('\n'), "{t:?}");
        }
        assert_eq!(
            text(&p, 1),
            "{\n  \"html_attributions\": [],\n  \"results\": [\n    {\"name\":\"a\"}\n  ],\n  \"status\": \"OK\"\n}"
        );
    }

    #[test]
    fn failures_carry_status_and_message() {
        let t = text(&Places::failed("REQUEST_DENIED", "bad \"key\"\n"), 5);
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v["status"], "REQUEST_DENIED");
        assert_eq!(v["error_message"], "bad \"key\"\n");
        assert_eq!(v["results"], serde_json::json!([]));
        assert!(!t.contains("\n\n"));
        let z = text(&Places::found(vec![]), 5);
        assert!(z.contains("\"ZERO_RESULTS\"") && !z.contains("error_message"));
    }

    #[test]
    fn timeouts_become_unknown_error() {
        let e: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        let p = Places::from_error(&e, Duration::from_millis(250));
        assert_eq!(p.status, "UNKNOWN_ERROR");
        assert!(p.error_message.unwrap().contains("250 ms"));
        let e: BoxError = Box::new(ProviderError {
            status: "OVER_QUERY_LIMIT".into(),
            message: "quota".into(),
        });
        assert_eq!(
            Places::from_error(&e, Duration::ZERO).status,
            "OVER_QUERY_LIMIT"
        );
    }
}
