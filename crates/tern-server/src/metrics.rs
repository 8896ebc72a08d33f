//! Prometheus metrics at `GET /metrics`, in the Prometheus text format 0.0.4.
//!
//! Two kinds of numbers, told apart in each metric's help text:
//! - **live counters**: kept as they happen by the part of the server that sees them (the
//!   gateway's messages and bytes, the uplink's malformed and rate-limited messages, the
//!   HTTP latency histogram kept here); a scrape reads them;
//! - **computed at scrape**: read from the store and the disk when scraped (attempts by
//!   state and reason, stored events, database and blob sizes), and so shown as gauges.
//!
//! Every label value comes from a fixed set, never from text a device or client chose: a
//! message kind is the protocol's (`other` for one this table does not know), an attempt
//! reason is one the protocol or the server names (`other` for anything else found in the
//! store), an HTTP route is the router's template (`unmatched` when none matched), a method
//! one of the methods the API serves (`other` else). So no input can grow the number of
//! series.
//!
//! The encoding is the `prometheus-client` crate's ([`prometheus_text`]); the live
//! counters stay plain atomics where they are counted, so `/api/stats` and `/metrics` read
//! the same numbers.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::api::{ApiError, AppState};
use crate::store::AttemptTally;

/// Upper bounds (seconds) of the HTTP latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The labels of one HTTP latency series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    route: String,
    status: &'static str,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// The metrics kept here rather than where they happen: HTTP request latencies.
pub struct Metrics {
    http: HistogramFamily<HttpLabels>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Metrics {
        fn histogram() -> Histogram {
            Histogram::new(LATENCY_BUCKETS)
        }
        Metrics { http: Family::new_with_constructor(histogram) }
    }

    /// Records one HTTP request.
    fn observe_http(&self, method: &Method, route: Option<&str>, status: StatusCode, seconds: f64) {
        let labels = HttpLabels {
            method: method_label(method),
            route: route.unwrap_or("unmatched").to_owned(),
            status: status_class(status),
        };
        self.http.get_or_create(&labels).observe(seconds);
    }
}

/// The method as a label: one the API serves, or `other`.
fn method_label(method: &Method) -> &'static str {
    [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::OPTIONS]
        .into_iter()
        .zip(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
        .find(|(known, _)| known == method)
        .map_or("other", |(_, name)| name)
}

/// The status class as a label: `2xx`, `4xx` and so on.
fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// Middleware timing every HTTP request from its arrival at the router to its response
/// head (a streamed body, such as the event stream's, is not waited for).
pub async fn track_http(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().map(|path| path.as_str().to_owned());
    let response = next.run(request).await;
    metrics.observe_http(&method, route.as_deref(), response.status(), started.elapsed().as_secs_f64());
    response
}

/// The attempt reasons shown as themselves: the protocol's and the server's own. Any other
/// text in the store is shown as `other`.
fn known_reasons() -> &'static [&'static str] {
    static KNOWN: OnceLock<Vec<&'static str>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let mut names: Vec<&'static str> = (0..=u16::from(u8::MAX))
            .map(|code| tern_proto::Reason::from_code(code).name())
            .chain([crate::updates::REASON_NO_PROGRESS, crate::updates::REASON_DEADLINE])
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    })
}

/// The reason label of a stored reason.
fn reason_label(reason: Option<&str>) -> &'static str {
    match reason {
        None => "none",
        Some(text) => known_reasons().iter().find(|known| **known == text).copied().unwrap_or("other"),
    }
}

/// Attempt counts by (state, reason label); reasons outside the known set are added up
/// under `other`.
fn attempts_by_label(tallies: &[AttemptTally]) -> BTreeMap<(&'static str, &'static str), u64> {
    let mut out = BTreeMap::new();
    for tally in tallies {
        let key = (tally.state.name(), reason_label(tally.reason.as_deref()));
        *out.entry(key).or_insert(0u64) += tally.count;
    }
    out
}

fn counter(value: u64) -> Counter {
    let counter = Counter::default();
    counter.inc_by(value);
    counter
}

fn gauge(value: u64) -> Gauge {
    let gauge = Gauge::default();
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
    gauge
}

/// Counters by message kind, one series per kind (zeros included).
fn by_kind(counts: &[(&'static str, u64)]) -> Family<[(&'static str, &'static str); 1], Counter> {
    let family = Family::<[(&'static str, &'static str); 1], Counter>::default();
    for (kind, count) in counts {
        family.get_or_create(&[("kind", *kind)]).inc_by(*count);
    }
    family
}

/// `GET /metrics`: every metric, read now.
pub async fn scrape(State(state): State<AppState>) -> Result<Response, ApiError> {
    let tallies = state.store.attempt_tallies().await?;
    let events = state.store.event_count().await?;
    let database = state.store.disk_bytes().await?;
    let blobs = state.blobs.stored_bytes().await?;
    let link = state.link.stats();
    let uplink = &state.uplink;
    let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);

    let mut registry = Registry::with_prefix("tern");
    registry.register("devices_connected", "Devices connected to the gateway now", gauge(link.connected));
    registry.register(
        "mqtt_connections",
        "MQTT connections accepted since start, authenticated or not (live counter)",
        counter(link.connections_total),
    );
    registry.register(
        "mqtt_auth_failures",
        "MQTT connections refused for bad credentials since start (live counter)",
        counter(link.auth_failures),
    );
    registry.register(
        "mqtt_protocol_errors",
        "MQTT connections closed for protocol errors since start (live counter)",
        counter(link.protocol_errors),
    );
    registry.register(
        "mqtt_messages_received",
        "Messages devices published, by kind (live counter)",
        by_kind(&link.messages_in_by_kind),
    );
    registry.register(
        "mqtt_messages_sent",
        "Messages delivered to devices, by kind (live counter)",
        by_kind(&link.messages_out_by_kind),
    );
    registry.register(
        "mqtt_received_bytes",
        "Bytes read from device sockets, TLS records and MQTT framing included (live counter)",
        counter(link.bytes_in),
    );
    registry.register(
        "mqtt_sent_bytes",
        "Bytes written to device sockets, TLS records and MQTT framing included (live counter)",
        counter(link.bytes_out),
    );
    registry.register(
        "device_messages_handled",
        "Device messages decoded and handled (live counter)",
        counter(load(&uplink.handled)),
    );
    registry.register(
        "device_messages_malformed",
        "Device messages that did not decode or did not match their topic, by the topic's kind (live counter)",
        by_kind(&uplink.malformed_by_kind.snapshot()),
    );
    registry.register(
        "device_messages_rate_limited",
        "Device messages dropped because their device exceeded its rate or filled its queue, by kind (live counter)",
        by_kind(&uplink.rate_limited_by_kind.snapshot()),
    );
    let attempts = Family::<[(&'static str, &'static str); 2], Gauge>::default();
    for ((state_name, reason), count) in attempts_by_label(&tallies) {
        attempts
            .get_or_create(&[("state", state_name), ("reason", reason)])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    registry.register(
        "update_attempts",
        "Update attempts in the store by state and reason (none: no reason), counted at scrape",
        attempts,
    );
    registry.register("events_stored", "Events in the store, counted at scrape", gauge(events));
    registry.register(
        "database_size_bytes",
        "Bytes the database takes on disk (with its write-ahead log), measured at scrape",
        gauge(database),
    );
    registry.register(
        "blob_store_size_bytes",
        "Bytes of every stored blob (module files, statements, patches), measured at scrape",
        gauge(blobs),
    );
    registry.register(
        "http_request_duration_seconds",
        "HTTP requests by method, route template and status class: seconds to the response head (live histogram)",
        state.metrics.http.clone(),
    );

    let mut text = String::new();
    if prometheus_text::encode(&mut text, &registry).is_err() {
        tracing::error!("encoding the metrics failed");
        return Ok((StatusCode::INTERNAL_SERVER_ERROR, "encoding the metrics failed\n").into_response());
    }
    Ok(([(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)], text).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AttemptStatus;

    #[test]
    fn labels_come_from_fixed_sets() {
        let cases: [(Option<&str>, &str); 6] = [
            (None, "none"),
            (Some("verify_error"), "verify_error"),
            (Some("no_progress"), "no_progress"),
            (Some("deadline"), "deadline"),
            (Some("unknown"), "unknown"),
            (Some("a reason a device made up \u{1F600}"), "other"),
        ];
        for (reason, label) in cases {
            assert_eq!(reason_label(reason), label, "{reason:?}");
        }
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
        assert_eq!(status_class(StatusCode::CREATED), "2xx");
        assert_eq!(status_class(StatusCode::UNPROCESSABLE_ENTITY), "4xx");
        assert_eq!(status_class(StatusCode::SERVICE_UNAVAILABLE), "5xx");
    }

    #[test]
    fn unknown_reasons_are_added_up_as_other() {
        let tally =
            |state, reason: Option<&str>, count| AttemptTally { state, reason: reason.map(str::to_owned), count };
        let tallies = [
            tally(AttemptStatus::Failed, Some("x1"), 2),
            tally(AttemptStatus::Failed, Some("x2"), 3),
            tally(AttemptStatus::Failed, Some("flash_error"), 1),
            tally(AttemptStatus::Downloading, None, 4),
        ];
        let by = attempts_by_label(&tallies);
        assert_eq!(by.get(&("failed", "other")), Some(&5));
        assert_eq!(by.get(&("failed", "flash_error")), Some(&1));
        assert_eq!(by.get(&("downloading", "none")), Some(&4));
        assert_eq!(by.len(), 3);
    }
}
