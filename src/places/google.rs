//! The Google Places provider: one HTTP request per call, to Places API (New) or to
//! the legacy Nearby Search, and Google's answer in Nearby Search's terms. Retries,
//! deadlines, limits and caching are layers around it (see [`super::stack`]).

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::future::BoxFuture;
use reqwest::{
    Url,
    header::{CONTENT_TYPE, HeaderValue},
};
use serde::Deserialize;
use serde_json::{Map, Value, json, value::RawValue};
use tower::{BoxError, Service};

use super::{MAX_BOUND, Places, PlacesRequest};
use crate::config::{ApiKey, GoogleApi, GoogleConfig};

/// The fields asked of Places API (New): what a Nearby Search result carries. Google
/// bills by the richest field asked for (rating and opening hours are "Enterprise").
pub const FIELD_MASK: &str = "places.id,places.displayName,places.location,\
places.shortFormattedAddress,places.formattedAddress,places.types,places.rating,\
places.userRatingCount,places.businessStatus,places.currentOpeningHours";

/// Google's largest radius, in metres, for both APIs.
pub const MAX_RADIUS_M: f64 = 50_000.0;

const NEW_PATH: &str = "/v1/places:searchNearby";
const LEGACY_PATH: &str = "/maps/api/place/nearbysearch/json";

/// Why one request to Google did not give places. `is_transient` is what the retry
/// policy asks; `status` is Google's word for the client's answer.
#[derive(Debug, thiserror::Error)]
pub enum GoogleError {
    /// The request did not get an answer: connect, send or read failed.
    /// The error never carries the URL (the legacy API's has the key in it).
    #[error("cannot reach Google: {}", Chain(.0))]
    Transport(reqwest::Error),
    /// Google answered, and said no.
    #[error("Google answered {status} (HTTP {http}): {message}")]
    Refused {
        http: u16,
        status: String,
        message: String,
    },
    /// The answer is not one of Google's.
    #[error("Google's answer (HTTP {http}) is not Places JSON: {reason}")]
    Garbage { http: u16, reason: String },
    /// The answer's body is longer than `places.max_response_bytes`: it was cut off
    /// there, unread. Not retried: the same request would bring the same answer.
    #[error(
        "Google's answer (HTTP {http}) is longer than places.max_response_bytes ({limit} bytes)"
    )]
    TooLarge { http: u16, limit: usize },
}

impl GoogleError {
    /// Whether the same request may well succeed if sent again.
    pub fn is_transient(&self) -> bool {
        match self {
            GoogleError::Transport(e) => {
                e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()
            }
            GoogleError::Refused { http, status, .. } => {
                retryable_http(*http)
                    || matches!(status.as_str(), "OVER_QUERY_LIMIT" | "UNKNOWN_ERROR")
            }
            GoogleError::Garbage { http, .. } => retryable_http(*http),
            GoogleError::TooLarge { .. } => false,
        }
    }

    /// Google's word for this failure, as a WHATSAT answer's `status`.
    pub fn status(&self) -> &str {
        match self {
            GoogleError::Transport(_) | GoogleError::TooLarge { .. } => "UNKNOWN_ERROR",
            GoogleError::Refused { status, .. } => status,
            GoogleError::Garbage { http, .. } => status_for_http(*http),
        }
    }

    /// What went wrong, for the answer's `error_message`: Google's own words when it gave some.
    pub fn message(&self) -> String {
        match self {
            GoogleError::Refused { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

fn retryable_http(http: u16) -> bool {
    http == 429 || (500..600).contains(&http)
}

/// Google's word for an HTTP status that came without a readable explanation.
fn status_for_http(http: u16) -> &'static str {
    match http {
        400 | 404 => "INVALID_REQUEST",
        401 | 403 => "REQUEST_DENIED",
        429 => "OVER_QUERY_LIMIT",
        _ => "UNKNOWN_ERROR",
    }
}

/// An error and its sources, one line: reqwest's own message says little without them.
struct Chain<'a>(&'a reqwest::Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = std::error::Error::source(self.0);
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

/// The Google provider as a tower service: cheap to clone, one HTTP request per call.
#[derive(Clone)]
pub struct GoogleProvider {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    api: GoogleApi,
    endpoint: Url,
    key: ApiKey,
    /// The key as a header, marked sensitive so that no HTTP layer prints it.
    key_header: HeaderValue,
    max_response_bytes: usize,
}

impl fmt::Debug for GoogleProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GoogleProvider")
            .field("api", &self.inner.api)
            .field("endpoint", &self.inner.endpoint.as_str())
            .finish_non_exhaustive()
    }
}

impl GoogleProvider {
    /// A provider for `config`, which must hold a key.
    pub fn new(config: &GoogleConfig) -> Result<GoogleProvider, BoxError> {
        let key = config
            .key
            .clone()
            .ok_or("the google provider needs an API key: set GOOGLE_PLACES_API_KEY")?;
        let mut key_header = HeaderValue::from_str(key.expose()).map_err(
            |_| "GOOGLE_PLACES_API_KEY holds characters that cannot go in an HTTP header",
        )?;
        key_header.set_sensitive(true);
        let path = match config.api {
            GoogleApi::New => NEW_PATH,
            GoogleApi::Legacy => LEGACY_PATH,
        };
        let endpoint = Url::parse(&format!("{}{path}", config.base_url()))
            .map_err(|e| format!("places URL {:?}: {e}", config.base_url()))?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config()?)
            .user_agent(concat!("herd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(GoogleProvider {
            inner: Arc::new(Inner {
                client,
                api: config.api,
                endpoint,
                key,
                key_header,
                max_response_bytes: config.max_response_bytes,
            }),
        })
    }

    async fn search(&self, req: PlacesRequest) -> Result<Places, GoogleError> {
        let inner = &*self.inner;
        let radius = radius_m(req.radius_m);
        let request = match inner.api {
            GoogleApi::New => inner
                .client
                .post(inner.endpoint.clone())
                .header("X-Goog-Api-Key", inner.key_header.clone())
                .header("X-Goog-FieldMask", FIELD_MASK)
                .header(CONTENT_TYPE, "application/json")
                .body(new_request_body(req.lat, req.lon, radius)),
            GoogleApi::Legacy => {
                let mut url = inner.endpoint.clone();
                url.query_pairs_mut()
                    .append_pair("location", &format!("{},{}", req.lat, req.lon))
                    .append_pair("radius", &radius.to_string())
                    .append_pair("key", inner.key.expose());
                inner.client.get(url)
            }
        };
        let transport = |e: reqwest::Error| GoogleError::Transport(e.without_url());
        let response = request.send().await.map_err(transport)?;
        let http = response.status().as_u16();
        let body = read_body(response, inner.max_response_bytes)
            .await
            .inspect_err(|e| {
                if matches!(e, GoogleError::TooLarge { .. }) {
                    crate::metrics::places_responses_cut_off().inc();
                }
            })?;
        match inner.api {
            GoogleApi::New => parse_new(http, &body),
            GoogleApi::Legacy => parse_legacy(http, &body),
        }
    }
}

/// The body of `response`, read chunk by chunk as it arrives, and given up on as soon
/// as it would pass `limit` bytes (an announced length past it is not read at all).
async fn read_body(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, GoogleError> {
    let http = response.status().as_u16();
    let too_large = || GoogleError::TooLarge { http, limit };
    let announced = response.content_length().unwrap_or(0);
    if announced > limit as u64 {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(announced as usize);
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| GoogleError::Transport(e.without_url()))?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl Service<PlacesRequest> for GoogleProvider {
    type Response = Places;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Places, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: PlacesRequest) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.search(req).await.map_err(BoxError::from) })
    }
}

/// rustls with the `ring` provider and Mozilla's roots compiled in: no OpenSSL, no
/// system CA bundle needed (a `FROM scratch` image works), no process-wide default.
fn tls_config() -> Result<rustls::ClientConfig, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// The radius Google gets: whole metres, within what both APIs accept.
pub fn radius_m(radius_m: f64) -> u32 {
    radius_m.round().clamp(1.0, MAX_RADIUS_M) as u32
}

/// The body of a Places API (New) Nearby Search. It always asks for the most results:
/// the answer is cached for every bound, and the bound cuts it afterwards.
pub fn new_request_body(lat: f64, lon: f64, radius_m: u32) -> String {
    json!({
        "locationRestriction": {
            "circle": {
                "center": {"latitude": lat, "longitude": lon},
                "radius": radius_m,
            }
        },
        "maxResultCount": MAX_BOUND,
    })
    .to_string()
}

#[derive(Deserialize)]
struct NewAnswer {
    #[serde(default)]
    places: Vec<NewPlace>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewPlace {
    id: Option<String>,
    display_name: Option<LocalizedText>,
    location: Option<LatLng>,
    short_formatted_address: Option<String>,
    formatted_address: Option<String>,
    types: Option<Vec<String>>,
    rating: Option<f64>,
    user_rating_count: Option<u64>,
    business_status: Option<String>,
    current_opening_hours: Option<OpeningHours>,
}

#[derive(Deserialize)]
struct LocalizedText {
    text: Option<String>,
}

#[derive(Deserialize)]
struct LatLng {
    latitude: f64,
    longitude: f64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OpeningHours {
    open_now: Option<bool>,
}

#[derive(Deserialize)]
struct NewErrorAnswer {
    error: NewError,
}

#[derive(Deserialize)]
struct NewError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<Value>,
}

/// One Places API (New) place as a Nearby Search result (fields it lacks are left out).
fn nearby_result(place: NewPlace) -> Arc<str> {
    let mut r = Map::new();
    if let Some(name) = place.display_name.and_then(|n| n.text) {
        r.insert("name".into(), name.into());
    }
    if let Some(id) = place.id {
        r.insert("place_id".into(), id.into());
    }
    if let Some(at) = place.location {
        r.insert(
            "geometry".into(),
            json!({"location": {"lat": at.latitude, "lng": at.longitude}}),
        );
    }
    if let Some(v) = place.short_formatted_address.or(place.formatted_address) {
        r.insert("vicinity".into(), v.into());
    }
    if let Some(types) = place.types {
        r.insert("types".into(), types.into());
    }
    if let Some(rating) = place.rating {
        r.insert("rating".into(), rating.into());
    }
    if let Some(n) = place.user_rating_count {
        r.insert("user_ratings_total".into(), n.into());
    }
    if let Some(s) = place.business_status {
        r.insert("business_status".into(), s.into());
    }
    if let Some(open) = place.current_opening_hours.and_then(|h| h.open_now) {
        r.insert("opening_hours".into(), json!({ "open_now": open }));
    }
    Value::Object(r).to_string().into()
}

/// Google's RPC status (and the reason in its details) in the legacy API's words.
fn status_for_rpc(error: &NewError, http: u16) -> &'static str {
    let reason_is = |want: &str| {
        error
            .details
            .iter()
            .any(|d| d.get("reason").and_then(Value::as_str) == Some(want))
    };
    if reason_is("API_KEY_INVALID") {
        return "REQUEST_DENIED";
    }
    match error.status.as_str() {
        "PERMISSION_DENIED" | "UNAUTHENTICATED" => "REQUEST_DENIED",
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" | "NOT_FOUND" => {
            "INVALID_REQUEST"
        }
        "RESOURCE_EXHAUSTED" => "OVER_QUERY_LIMIT",
        "" => status_for_http(http),
        _ => "UNKNOWN_ERROR",
    }
}

/// Reads a Places API (New) answer: `{"places": [...]}`, `{}` when nothing is there,
/// or `{"error": {...}}` with an HTTP error status.
pub fn parse_new(http: u16, body: &[u8]) -> Result<Places, GoogleError> {
    if (200..300).contains(&http) {
        let answer: NewAnswer = serde_json::from_slice(body).map_err(|e| GoogleError::Garbage {
            http,
            reason: e.to_string(),
        })?;
        return Ok(Places::found(
            answer.places.into_iter().map(nearby_result).collect(),
        ));
    }
    match serde_json::from_slice::<NewErrorAnswer>(body) {
        Ok(NewErrorAnswer { error }) => Err(GoogleError::Refused {
            http,
            status: status_for_rpc(&error, http).to_owned(),
            message: if error.message.is_empty() {
                format!("Google answered HTTP {http} {}", error.status)
            } else {
                error.message
            },
        }),
        Err(e) => Err(GoogleError::Garbage {
            http,
            reason: e.to_string(),
        }),
    }
}

#[derive(Deserialize)]
struct LegacyAnswer<'a> {
    status: String,
    /// Each result as Google wrote it, so that it passes through untouched.
    #[serde(default, borrow)]
    results: Vec<&'a RawValue>,
    error_message: Option<String>,
}

/// JSON text without the whitespace between tokens: one line, every value as it was.
fn compact(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

/// Reads a legacy Nearby Search answer: its results pass through, one compact
/// JSON object each; a status other than OK or ZERO_RESULTS is Google saying no.
pub fn parse_legacy(http: u16, body: &[u8]) -> Result<Places, GoogleError> {
    let answer = match serde_json::from_slice::<LegacyAnswer<'_>>(body) {
        Ok(answer) => answer,
        Err(_) if !(200..300).contains(&http) => {
            return Err(GoogleError::Refused {
                http,
                status: status_for_http(http).to_owned(),
                message: format!("Google answered HTTP {http}"),
            });
        }
        Err(e) => {
            return Err(GoogleError::Garbage {
                http,
                reason: e.to_string(),
            });
        }
    };
    match answer.status.as_str() {
        "OK" | "ZERO_RESULTS" if (200..300).contains(&http) => Ok(Places::found(
            answer
                .results
                .iter()
                .map(|r| Arc::from(compact(r.get())))
                .collect(),
        )),
        _ => {
            let status = match answer.status.as_str() {
                "OK" | "ZERO_RESULTS" => status_for_http(http).to_owned(),
                _ => answer.status,
            };
            Err(GoogleError::Refused {
                http,
                message: answer
                    .error_message
                    .unwrap_or_else(|| format!("Google answered {status} (HTTP {http})")),
                status,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(p: &Places) -> Value {
        serde_json::from_str(&p.results[0]).unwrap()
    }

    #[test]
    fn new_places_become_nearby_search_results() {
        let body = br#"{"places":[{
            "id":"ChIJ1","displayName":{"text":"Caf\u00e9 \"Luna\"","languageCode":"fr"},
            "location":{"latitude":34.07,"longitude":-118.44},
            "formattedAddress":"1 Long St, Los Angeles, CA","shortFormattedAddress":"1 Long St",
            "types":["cafe","food"],"rating":4.5,"userRatingCount":120,
            "businessStatus":"OPERATIONAL",
            "currentOpeningHours":{"openNow":true,"weekdayDescriptions":["Monday: 8-5"]},
            "priceLevel":"PRICE_LEVEL_MODERATE"
        },{"id":"ChIJ2","formattedAddress":"Far Rd"}]}"#;
        let p = parse_new(200, body).unwrap();
        assert_eq!(p.status, "OK");
        assert_eq!(p.results.len(), 2);
        assert_eq!(
            one(&p),
            json!({
                "name": "Café \"Luna\"", "place_id": "ChIJ1",
                "geometry": {"location": {"lat": 34.07, "lng": -118.44}},
                "vicinity": "1 Long St", "types": ["cafe", "food"], "rating": 4.5,
                "user_ratings_total": 120, "business_status": "OPERATIONAL",
                "opening_hours": {"open_now": true}
            })
        );
        assert!(!p.results[0].contains('\n'), "compact, one line");
        assert_eq!(
            serde_json::from_str::<Value>(&p.results[1]).unwrap(),
            json!({"place_id": "ChIJ2", "vicinity": "Far Rd"})
        );
    }

    #[test]
    fn an_empty_new_answer_is_zero_results() {
        let p = parse_new(200, b"{}").unwrap();
        assert_eq!((p.status.as_str(), p.results.len()), ("ZERO_RESULTS", 0));
        assert!(p.error_message.is_none());
    }

    #[test]
    fn new_errors_speak_the_legacy_words() {
        let err = |http: u16, status: &str, extra: &str| {
            let body = format!(
                r#"{{"error":{{"code":{http},"message":"msg {status}","status":"{status}"{extra}}}}}"#
            );
            parse_new(http, body.as_bytes()).unwrap_err()
        };
        let e = err(403, "PERMISSION_DENIED", "");
        assert_eq!(
            (e.status(), e.message().as_str()),
            ("REQUEST_DENIED", "msg PERMISSION_DENIED")
        );
        assert!(!e.is_transient());
        let e = err(
            400,
            "INVALID_ARGUMENT",
            r#","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]"#,
        );
        assert_eq!(e.status(), "REQUEST_DENIED");
        let e = err(400, "INVALID_ARGUMENT", "");
        assert_eq!(e.status(), "INVALID_REQUEST");
        assert!(!e.is_transient());
        let e = err(429, "RESOURCE_EXHAUSTED", "");
        assert_eq!(e.status(), "OVER_QUERY_LIMIT");
        assert!(e.is_transient());
        for (http, status) in [
            (500, "INTERNAL"),
            (503, "UNAVAILABLE"),
            (504, "DEADLINE_EXCEEDED"),
        ] {
            let e = err(http, status, "");
            assert_eq!(e.status(), "UNKNOWN_ERROR");
            assert!(e.is_transient(), "{http}");
        }
    }

    #[test]
    fn garbage_is_unknown_and_only_retried_when_the_http_status_says_so() {
        let e = parse_new(200, b"<html>hello</html>").unwrap_err();
        assert_eq!(e.status(), "UNKNOWN_ERROR");
        assert!(!e.is_transient());
        assert!(e.message().contains("not Places JSON"), "{}", e.message());
        let e = parse_new(200, br#"{"places":"many"}"#).unwrap_err();
        assert!(!e.is_transient());
        let e = parse_new(502, b"Bad Gateway").unwrap_err();
        assert!(e.is_transient());
        let e = parse_new(403, b"Forbidden").unwrap_err();
        assert_eq!(e.status(), "REQUEST_DENIED");
        assert!(!e.is_transient());
        let e = parse_legacy(200, b"not json").unwrap_err();
        assert_eq!(e.status(), "UNKNOWN_ERROR");
        assert!(!e.is_transient());
        let e = parse_legacy(503, b"<html>").unwrap_err();
        assert_eq!(e.status(), "UNKNOWN_ERROR");
        assert!(e.is_transient());
        let e = parse_legacy(429, b"slow down").unwrap_err();
        assert_eq!(e.status(), "OVER_QUERY_LIMIT");
        assert!(e.is_transient());
    }

    #[test]
    fn a_cut_off_answer_is_final_and_unknown() {
        let e = GoogleError::TooLarge {
            http: 200,
            limit: 1024,
        };
        assert_eq!(e.status(), "UNKNOWN_ERROR");
        assert!(!e.is_transient());
        assert!(
            e.message()
                .contains("places.max_response_bytes (1024 bytes)")
        );
    }

    #[test]
    fn legacy_results_pass_through_compactly() {
        let body = br#"{
           "html_attributions" : [],
           "next_page_token" : "abc",
           "results" : [
              { "name" : "A", "place_id" : "p1", "geometry" : { "location" : { "lat" : 1.5, "lng" : 2 } },
                "vicinity" : "Here", "icon" : "https://x/icon.png" },
              { "name" : "B" }
           ],
           "status" : "OK"
        }"#;
        let p = parse_legacy(200, body).unwrap();
        assert_eq!(p.status, "OK");
        assert_eq!(
            &*p.results[0],
            r#"{"name":"A","place_id":"p1","geometry":{"location":{"lat":1.5,"lng":2}},"vicinity":"Here","icon":"https://x/icon.png"}"#
        );
        assert_eq!(&*p.results[1], r#"{"name":"B"}"#);
        let odd = br#"{"status":"OK","results":[ {"n" : "a \" b\\", "x": [1.50, -118.44409999999999, 1e3] } ]}"#;
        assert_eq!(
            &*parse_legacy(200, odd).unwrap().results[0],
            r#"{"n":"a \" b\\","x":[1.50,-118.44409999999999,1e3]}"#,
            "strings and numbers exactly as Google wrote them"
        );
        let z = parse_legacy(
            200,
            br#"{"html_attributions":[],"results":[],"status":"ZERO_RESULTS"}"#,
        )
        .unwrap();
        assert_eq!(z.status, "ZERO_RESULTS");
    }

    #[test]
    fn legacy_statuses_keep_googles_words() {
        let e = |status: &str, message: &str| {
            let body = format!(
                r#"{{"error_message":"{message}","html_attributions":[],"results":[],"status":"{status}"}}"#
            );
            parse_legacy(200, body.as_bytes()).unwrap_err()
        };
        let denied = e("REQUEST_DENIED", "The provided API key is invalid.");
        assert_eq!(denied.status(), "REQUEST_DENIED");
        assert_eq!(denied.message(), "The provided API key is invalid.");
        assert!(!denied.is_transient());
        assert!(!e("INVALID_REQUEST", "bad").is_transient());
        assert!(e("OVER_QUERY_LIMIT", "quota").is_transient());
        assert!(e("UNKNOWN_ERROR", "try again").is_transient());
        let bare = parse_legacy(200, br#"{"results":[],"status":"REQUEST_DENIED"}"#).unwrap_err();
        assert!(
            bare.message().contains("REQUEST_DENIED"),
            "{}",
            bare.message()
        );
    }

    #[test]
    fn the_request_asks_for_the_most_results_in_metres() {
        let body: Value =
            serde_json::from_str(&new_request_body(34.0689, -118.4451, 10_000)).unwrap();
        assert_eq!(
            body,
            json!({"locationRestriction": {"circle": {
                "center": {"latitude": 34.0689, "longitude": -118.4451}, "radius": 10000}},
                "maxResultCount": 20})
        );
        assert_eq!(radius_m(10_000.4), 10_000);
        assert_eq!(radius_m(0.2), 1);
        assert_eq!(radius_m(60_000.0), 50_000);
    }
}
