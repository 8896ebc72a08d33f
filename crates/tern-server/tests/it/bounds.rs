//! Bounds on a real server: a device flooding messages is rate-limited without delaying
//! another device, events are kept within their retention bound, and every list pages.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Packet, Publish};
use rumqttc::mqttbytes::QoS;
use serde_json::{json, Value};
use tern_proto::{BootReason, Message, Phase, Progress};

use crate::gateway::sample_describe;
use crate::support::{encode, wait_for, Mqtt, Server};

/// Waits for the next `kind` event on an event stream's lines.
fn next_event(lines: &mpsc::Receiver<String>, kind: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).unwrap_or_else(|_| panic!("no {kind} event within {timeout:?}"));
        if let Some(data) = line.strip_prefix("data:") {
            let event: Value = serde_json::from_str(data.trim()).expect("event data is JSON");
            if event["kind"] == kind {
                return event;
            }
        }
    }
}

const FLOOD: usize = 20_000;
const KEEP_EVENTS: u64 = 50;

#[test]
fn a_flooding_device_is_limited_and_delays_no_other_and_events_stay_bounded() {
    let dir = tern_testkit::scratch("bounds-flood");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("tern.toml"),
        format!("[bounds]\nevent_max_count = {KEEP_EVENTS}\nprune_every_ms = 300\nreport_every_ms = 1000\n"),
    )
    .unwrap();
    let server = Server::start(&data);
    let api = server.api();
    let noisy_secret = server.add_device("noisy", "photon");
    let quiet_secret = server.add_device("quiet", "photon");
    let (mut quiet, code) = Mqtt::connect(&server, "quiet", &quiet_secret);
    assert_eq!(code, 0);
    let (mut noisy, code) = Mqtt::connect(&server, "noisy", &noisy_secret);
    assert_eq!(code, 0);
    let lines = api.stream_lines("/api/events?device=quiet");

    // 20,000 well-formed Progress messages, each of which would be stored as an event.
    let mut flood = BytesMut::new();
    for i in 0..FLOOD {
        let progress = Progress { attempt: 1, phase: Phase::Downloading, bytes_done: i as u64, bytes_total: 1 << 20 };
        let publish =
            Publish::new("tern/v1/d/noisy/up/progress", QoS::AtMostOnce, encode(&Message::Progress(progress)));
        Packet::Publish(publish).write(&mut flood, 1 << 20).unwrap();
    }
    let describe = encode(&Message::Describe(sample_describe(BootReason::Normal)));
    let started = Instant::now();
    let flooder = std::thread::spawn(move || {
        // In slices, so the flood lasts while the other device is measured.
        for chunk in flood.chunks(flood.len() / 200 + 1) {
            noisy.send_bytes(chunk);
            std::thread::sleep(Duration::from_millis(2));
        }
        noisy
    });
    let mut delays = Vec::new();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(40));
        let sent = Instant::now();
        quiet.send(Packet::Publish(Publish::new("tern/v1/d/quiet/up/describe", QoS::AtMostOnce, describe.clone())));
        next_event(&lines, "device.described", Duration::from_secs(10));
        delays.push(sent.elapsed());
    }
    let mut noisy = flooder.join().expect("the flood was sent");
    let flood_took = started.elapsed();
    eprintln!("flood of {FLOOD} sent in {flood_took:?}; the quiet device's Describe took {delays:?}");
    for delay in &delays {
        assert!(*delay < Duration::from_millis(100), "a Describe waited {delay:?} behind the flood: {delays:?}");
    }

    // Every flood message was either handled or dropped and counted.
    wait_for("the flood accounted for", Duration::from_secs(20), || {
        let (_, stats) = api.get("/api/stats");
        let u = &stats["uplink"];
        u["handled"].as_u64().unwrap() + u["rate_limited"].as_u64().unwrap() == (FLOOD + delays.len()) as u64
    });
    let (_, stats) = api.get("/api/stats");
    let limited = stats["uplink"]["rate_limited"].as_u64().unwrap();
    assert!(limited >= (FLOOD as u64) * 9 / 10, "most of the flood was dropped: {stats}");
    // The drops are recorded once per report window, not once per message.
    let (_, noisy_detail) = api.get("/api/devices/noisy?");
    let reports: Vec<&Value> =
        noisy_detail["history"].as_array().unwrap().iter().filter(|e| e["kind"] == "device.rate_limited").collect();
    let windows = flood_took.as_secs() + 2;
    assert!(!reports.is_empty() && reports.len() as u64 <= windows, "{} reports in {flood_took:?}", reports.len());
    // The flooding device is still connected: limited, not cut off.
    assert!(noisy.alive());

    // Retention: pruning brings the event log back within its bound, and the write-ahead
    // log is truncated.
    wait_for("events pruned to the bound", Duration::from_secs(10), || {
        api.get("/api/stats").1["store"]["events"].as_u64().unwrap() <= KEEP_EVENTS
    });
    let wal = std::fs::metadata(data.join("tern.db-wal")).map(|m| m.len()).unwrap_or(0);
    assert!(wal < 4 << 20, "the WAL holds {wal} bytes");
    let db = std::fs::metadata(data.join("tern.db")).unwrap().len();
    assert!(db < 4 << 20, "the database holds {db} bytes");
}

#[test]
fn lists_page_with_a_link_to_the_next_page_and_filter() {
    let dir = tern_testkit::scratch("bounds-pages");
    let server = Server::start(&dir.join("data"));
    let api = server.api();
    for i in 0..7 {
        let platform = if i % 2 == 0 { "photon" } else { "argon" };
        server.add_device(&format!("dev-{i}"), platform);
    }
    // Follow the Link headers through pages of three.
    let mut seen = Vec::new();
    let mut next = Some("/api/devices?limit=3".to_owned());
    let mut pages = 0;
    while let Some(path) = next.take() {
        let (status, page, link) = api.get_page(&path);
        assert_eq!(status, 200, "{path}: {page}");
        assert!(page.as_array().unwrap().len() <= 3);
        seen.extend(page.as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_owned()));
        pages += 1;
        next = link.map(|link| {
            assert!(link.ends_with("; rel=\"next\""), "{link}");
            let url = link.trim_start_matches('<').split('>').next().unwrap().to_owned();
            assert!(url.contains("limit=3"), "the next page keeps the query: {url}");
            url
        });
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, (0..7).map(|i| format!("dev-{i}")).collect::<Vec<_>>());
    // Filters, and a filter with paging.
    let (_, argons) = api.get("/api/devices?platform=argon");
    let ids: Vec<&str> = argons.as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["dev-1", "dev-3", "dev-5"]);
    let (_, page, link) = api.get_page("/api/devices?platform=12&limit=2&after=dev-1");
    let ids: Vec<&str> = page.as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["dev-3", "dev-5"]);
    assert_eq!(link, None, "the last page names no next one");
    let (_, last, link) = api.get_page("/api/devices?after=dev-6");
    assert_eq!((last, link), (json!([]), None));
    // Offset paging on the other lists.
    for i in 0..3 {
        let (status, reply) =
            api.post_json("/api/products", json!({ "id": 100 + i, "platform": "argon", "name": format!("p{i}") }));
        assert_eq!(status, 201, "{reply}");
    }
    let (_, page, link) = api.get_page("/api/products?limit=2");
    assert_eq!(page.as_array().unwrap().len(), 2);
    assert!(link.as_deref().unwrap().contains("offset=2"), "{link:?}");
    let (_, page, link) = api.get_page("/api/products?limit=2&offset=2");
    assert_eq!(page[0]["id"], 102);
    assert_eq!(link, None);
    // Bad paging is a clear 400.
    for path in [
        "/api/devices?limit=0",
        "/api/devices?limit=1001",
        "/api/devices?limit=x",
        "/api/modules?offset=-1",
        "/api/devices?platform=toaster",
        "/api/devices?offset=3",
        "/api/rollouts?limit=0",
    ] {
        let (status, reply) = api.get(path);
        assert_eq!(status, 400, "{path}: {reply}");
        assert!(reply["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{path}: {reply}");
    }
}

#[test]
fn temporary_blob_files_a_crash_left_are_removed_at_start() {
    let dir = tern_testkit::scratch("bounds-tmp-blobs");
    let data = dir.join("data");
    let server = Server::start(&data);
    let api = server.api();
    // A device registration and its event are one write: both or neither.
    server.add_device("d1", "argon");
    let (_, shown) = api.get("/api/devices/d1");
    assert_eq!(shown["history"][0]["kind"], "device.registered");
    server.kill();
    // What a SIGKILL in the middle of an upload leaves: a temporary file beside the blobs.
    let shard = data.join("blobs/sha256/ab");
    std::fs::create_dir_all(&shard).unwrap();
    let leftover = shard.join(".tmp-4242-deadbeef");
    std::fs::write(&leftover, vec![0u8; 4096]).unwrap();
    let kept = shard.join("ab".repeat(32));
    std::fs::write(&kept, b"a blob").unwrap();
    let server = Server::start(&data);
    assert!(!leftover.exists(), "the temporary file was removed");
    assert!(kept.exists(), "blobs are kept");
    assert_eq!(server.api().get("/api/devices/d1").0, 200);
}
