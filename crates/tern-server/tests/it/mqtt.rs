//! MQTT 3.1.1 behaviour of the gateway on raw sockets: protocol checks, keep-alive,
//! QoS 2, session takeover, ping, clean disconnect. Packets are built and read with the
//! rumqttc codec (CONNECTs of other protocol versions laid out by hand); a real client is
//! used for the protocol-version check.

use std::time::{Duration, Instant};

use rumqttc::mqttbytes::v4::{Connect, Packet, Publish};
use rumqttc::mqttbytes::QoS;

use crate::support::{connect_packet, wait_for, Mqtt, Server};

#[test]
fn protocol_violations_close_the_connection() {
    let dir = tern_testkit::scratch("mqtt-violations");
    let server = Server::start(&dir.join("data"));
    let secret = server.add_device("dev-v", "photon");

    // MQTT 3.1 ("MQIsdp", level 3) and MQTT 5 CONNECTs: no session, CONNACK 1, a close.
    let mut raw = Mqtt::open(&server);
    raw.send_bytes(&connect_packet("MQIsdp", 3, "abcd"));
    match raw.next(Duration::from_secs(5)) {
        Ok(Some(Packet::ConnAck(ack))) => assert_eq!(ack.code as u8, 1, "unacceptable protocol version"),
        other => panic!("expected CONNACK 1 for MQTT 3.1, got {other:?}"),
    }
    raw.expect_closed(Duration::from_secs(5));
    let mut raw = Mqtt::open(&server);
    raw.send_bytes(&connect_packet("MQTT", 3, "x"));
    match raw.next(Duration::from_secs(5)) {
        Ok(Some(Packet::ConnAck(ack))) => assert_eq!(ack.code as u8, 1, "unacceptable protocol version"),
        other => panic!("expected CONNACK 1, got {other:?}"),
    }
    raw.expect_closed(Duration::from_secs(5));

    // (what, packets after a good CONNECT)
    let qos2 = {
        let mut publish = Publish::new("tern/v1/d/dev-v/up/progress", QoS::ExactlyOnce, vec![0u8]);
        publish.pkid = 1;
        Packet::Publish(publish)
    };
    let cases: Vec<(&str, Option<Packet>, &[u8])> = vec![
        ("QoS 2 publish", Some(qos2), &[]),
        ("a second CONNECT", Some(Packet::Connect(Connect::new("again"))), &[]),
        ("bytes that are no MQTT packet", None, &[0xf0, 0x00]),
        ("a remaining length over four bytes", None, &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]),
    ];
    for (what, packet, bytes) in cases {
        let mut raw = Mqtt::open(&server);
        assert_eq!(raw.login("dev-v", &secret, 60), 0, "{what}");
        match packet {
            Some(packet) => raw.send(packet),
            None => raw.send_bytes(bytes),
        }
        raw.expect_closed(Duration::from_secs(5));
    }
    // The first packet must be CONNECT.
    let mut raw = Mqtt::open(&server);
    raw.send(Packet::PingReq);
    raw.expect_closed(Duration::from_secs(5));
    assert_eq!(server.api().get("/api/health").0, 200);
}

#[test]
fn keep_alive_ping_takeover_and_clean_disconnect() {
    let dir = tern_testkit::scratch("mqtt-keepalive");
    let server = Server::start(&dir.join("data"));
    let secret = server.add_device("dev-k", "photon");

    // Keep-alive 1 s: pings keep the connection open past 1.5 s; silence closes it.
    let mut raw = Mqtt::open(&server);
    assert_eq!(raw.login("dev-k", &secret, 1), 0);
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(600));
        raw.send(Packet::PingReq);
        assert_eq!(raw.next(Duration::from_secs(2)), Ok(Some(Packet::PingResp)));
    }
    let silent = Instant::now();
    raw.expect_closed(Duration::from_secs(5));
    let waited = silent.elapsed();
    assert!(waited >= Duration::from_millis(1400), "closed after {waited:?}, before 1.5 × keep-alive");

    // A second connection of the same device replaces the first.
    let mut first = Mqtt::open(&server);
    assert_eq!(first.login("dev-k", &secret, 60), 0);
    let mut second = Mqtt::open(&server);
    assert_eq!(second.login("dev-k", &secret, 60), 0);
    first.expect_closed(Duration::from_secs(5));
    second.send(Packet::PingReq);
    assert_eq!(second.next(Duration::from_secs(2)), Ok(Some(Packet::PingResp)));

    // DISCONNECT is a clean goodbye, recorded as such.
    second.send(Packet::Disconnect);
    second.expect_closed(Duration::from_secs(5));
    let api = server.api();
    wait_for("the disconnects recorded", Duration::from_secs(5), || {
        let (_, shown) = api.get("/api/devices/dev-k");
        let cleans: Vec<bool> = shown["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "device.disconnected")
            .map(|e| e["data"]["clean"] == true)
            .collect();
        cleans == [false, false, true]
    });

    assert_eq!(api.get("/api/devices/dev-k").1["online"], false);
}

#[test]
fn an_mqtt5_client_is_refused() {
    let Some(subscriber) = tern_testkit::peer("/usr/bin/mosquitto_sub") else { return };
    let dir = tern_testkit::scratch("mqtt-v5");
    let server = Server::start(&dir.join("data"));
    let secret = server.add_device("dev-5", "photon");
    let out = server.mosquitto(
        &subscriber,
        &["-V", "mqttv5", "-u", "dev-5", "-P", &secret, "-t", "tern/v1/d/dev-5/down/#", "-C", "1", "-W", "5"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.to_lowercase().contains("protocol"), "{stderr}");
    // The same client speaking 3.1.1 is accepted.
    let out = server.mosquitto(
        &subscriber,
        &["-V", "mqttv311", "-u", "dev-5", "-P", &secret, "-t", "tern/v1/d/dev-5/down/#", "-W", "1"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Timed out") && !stderr.contains("refused"), "{stderr}");
}

/// A downlink sent after CONNECT but before the device's SUBSCRIBE (an offer re-sent on
/// connect, a command) is not dropped: it waits and goes out right after the SUBACK.
#[test]
fn downlink_before_subscribe_waits_for_it() {
    use rumqttc::mqttbytes::v4::Subscribe;
    let dir = tern_testkit::scratch("mqtt-before-subscribe");
    let server = Server::start(&dir.join("data"));
    let secret = server.add_device("dev-s", "photon");
    let mut raw = Mqtt::open(&server);
    assert_eq!(raw.login("dev-s", &secret, 60), 0);
    let api = server.api();
    wait_for("the device online", Duration::from_secs(5), || api.get("/api/devices/dev-s").1["online"] == true);
    let (status, reply) = api.post_json("/api/devices/dev-s/commands", serde_json::json!({ "action": "reboot" }));
    assert_eq!(status, 202, "{reply}");
    // Nothing arrives while the device has no subscription.
    assert_eq!(raw.next(Duration::from_millis(500)), Err(()));
    raw.send(Packet::Subscribe(Subscribe::new("tern/v1/d/dev-s/down/#", QoS::AtLeastOnce)));
    assert!(matches!(raw.next(Duration::from_secs(5)), Ok(Some(Packet::SubAck(_)))));
    match raw.next(Duration::from_secs(5)) {
        Ok(Some(Packet::Publish(p))) => assert_eq!(p.topic, "tern/v1/d/dev-s/down/command"),
        other => panic!("expected the waiting command, got {other:?}"),
    }
}

/// The compact topics (`t/{device}/{u|d}/{code}`): a device that subscribes to its compact
/// downlink gets its messages there (and there only, when it subscribed to both forms);
/// what it publishes on its compact `u` topics is taken as on the long ones; another
/// device's compact topics are as closed to it as the long ones.
#[test]
fn compact_topics_carry_both_ways_and_stay_private() {
    use rumqttc::mqttbytes::v4::{SubAck, Subscribe, SubscribeReasonCode};
    use tern_proto::{BootReason, Describe, List, Message};
    let dir = tern_testkit::scratch("mqtt-compact");
    let server = Server::start(&dir.join("data"));
    let secret = server.add_device("dev-c", "photon");
    server.add_device("dev-x", "photon");
    let mut raw = Mqtt::open(&server);
    assert_eq!(raw.login("dev-c", &secret, 60), 0);
    let codes = |raw: &mut Mqtt, filter: &str| match raw.next(Duration::from_secs(5)) {
        Ok(Some(Packet::SubAck(SubAck { return_codes, .. }))) => return_codes,
        other => panic!("{filter}: expected SUBACK, got {other:?}"),
    };
    for (filter, granted) in [("t/dev-x/d/#", false), ("t/+/d/#", false), ("t/#", false), ("t/dev-c/d/#", true)] {
        raw.send(Packet::Subscribe(Subscribe::new(filter, QoS::AtLeastOnce)));
        let ok = codes(&mut raw, filter) == [SubscribeReasonCode::Success(QoS::AtLeastOnce)];
        assert_eq!(ok, granted, "{filter}");
    }
    raw.send(Packet::Subscribe(Subscribe::new("tern/v1/d/dev-c/down/#", QoS::AtLeastOnce)));
    codes(&mut raw, "long");
    let api = server.api();
    let (status, reply) = api.post_json("/api/devices/dev-c/commands", serde_json::json!({ "action": "reboot" }));
    assert_eq!(status, 202, "{reply}");
    match raw.next(Duration::from_secs(5)) {
        Ok(Some(Packet::Publish(p))) => assert_eq!(p.topic, "t/dev-c/d/7", "the compact form wins"),
        other => panic!("expected the command, got {other:?}"),
    }
    assert_eq!(raw.next(Duration::from_millis(300)), Err(()), "sent once, not once per form");
    // A Describe on the compact `u` topic becomes the inventory.
    let describe = Message::Describe(Describe {
        platform: 6,
        boot_reason: BootReason::Normal,
        safe_mode: None,
        unmet: None,
        confirmed: true,
        modules: List::new(),
        last_result: None,
        capacity: None,
        security_counter: None,
    });
    let mut payload = vec![0u8; describe.encoded_len()];
    describe.encode(&mut payload).unwrap();
    raw.send(Packet::Publish(Publish::new("t/dev-c/u/1", QoS::AtMostOnce, payload.clone())));
    wait_for("the inventory", Duration::from_secs(5), || {
        api.get("/api/devices/dev-c").1["inventory"]["platform_id"] == 6
    });
    // Publishing on another device's compact topic closes the connection.
    raw.send(Packet::Publish(Publish::new("t/dev-x/u/1", QoS::AtMostOnce, payload)));
    raw.expect_closed(Duration::from_secs(5));
    assert_eq!(api.get("/api/devices/dev-x").1["inventory"], serde_json::Value::Null);
}
