//! One device connection: CONNECT and authentication, then the packet loop.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

use tern_proto::{MessageKind, Topic, TopicForm};

use super::{acl, sessions, Inner, Outbound, Session};
use crate::auth::{hash_secret, hashes_equal};
use crate::link::LinkEvent;
use crate::tls::{certificate_names, Reloading};
use crate::transport::Counted;

/// A device's byte stream: plain TCP or TLS over TCP, counted beneath either.
trait DeviceIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> DeviceIo for T {}
type Reader = ReadHalf<Box<dyn DeviceIo>>;
type Writer = WriteHalf<Box<dyn DeviceIo>>;

/// How long one write to a device may take before the connection is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection ended.
enum End {
    /// The device sent DISCONNECT.
    Clean,
    /// The socket closed, timed out or failed.
    Gone,
    /// The device broke the protocol or the access rules.
    Violation,
    /// The same device connected again.
    Replaced,
}

/// Reads one packet, reading more from the socket as needed. `Ok(None)` at end of stream.
async fn read_packet(reader: &mut Reader, buf: &mut BytesMut, max_packet: usize) -> Result<Option<Packet>, CodecError> {
    loop {
        match Packet::read(buf, max_packet) {
            Ok(packet) => return Ok(Some(packet)),
            Err(CodecError::InsufficientBytes(_)) => {}
            Err(err) => return Err(err),
        }
        if reader.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Writes one packet; returns the bytes written.
async fn write_packet(writer: &mut Writer, packet: Packet, max_packet: usize) -> std::io::Result<usize> {
    let mut out = BytesMut::new();
    packet.write(&mut out, max_packet.max(1 << 20)).map_err(std::io::Error::other)?;
    timeout(WRITE_TIMEOUT, writer.write_all(&out)).await.map_err(|_| std::io::ErrorKind::TimedOut)??;
    Ok(out.len())
}

/// The protocol level a CONNECT at the start of `buf` asks for (MQTT 3.1.1 §3.1.2.2: fixed
/// header, remaining length, protocol name `00 04 "MQTT"`, level; MQTT 3.1 names the
/// protocol `00 06 "MQIsdp"`), if it is that far.
fn connect_level(buf: &[u8]) -> Option<u8> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    // The remaining length takes 1 to 4 bytes, each but the last with its top bit set.
    let mut i = 1;
    while buf.get(i)? & 0x80 != 0 {
        i += 1;
        if i > 4 {
            return None;
        }
    }
    let variable = buf.get(i + 1..)?;
    const NAMES: [&[u8]; 2] = [&[0, 4, b'M', b'Q', b'T', b'T'], &[0, 6, b'M', b'Q', b'I', b's', b'd', b'p']];
    let name = NAMES.iter().find(|name| variable.starts_with(name))?;
    variable.get(name.len()).copied()
}

/// Takes a new socket through TLS (when `tls` is given), then serves it.
pub(super) async fn accept(
    inner: Arc<Inner>,
    stream: Counted<TcpStream>,
    peer: SocketAddr,
    tls: Option<Arc<Reloading>>,
) {
    let Some(tls) = tls else {
        return serve(inner, Box::new(stream), peer, Vec::new()).await;
    };
    let stream = match timeout(inner.config.connect_timeout, tls.mqtt().accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            tracing::info!(%peer, "mqtt: TLS handshake failed: {err}");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "mqtt: TLS handshake timed out");
            return;
        }
    };
    // rustls has checked the chain against the client CA; what it names is trusted.
    let names = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| certificate_names(leaf))
        .unwrap_or_default();
    serve(inner, Box::new(stream), peer, names).await
}

/// Serves one connection until it ends; `names` are what a verified client certificate
/// names (empty without one).
async fn serve(inner: Arc<Inner>, stream: Box<dyn DeviceIo>, peer: SocketAddr, names: Vec<String>) {
    let counters = &inner.counters;
    counters.connections_total.fetch_add(1, Ordering::Relaxed);
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut buf = BytesMut::with_capacity(4096);
    let max = inner.config.max_packet;

    // Peek at the protocol level first: the codec cannot parse an MQTT 5 CONNECT, and such
    // a client deserves return code 1 rather than a silent close.
    let peek = async {
        // Every CONNECT is at least 14 bytes; anything else is dealt with by the full parse.
        while buf.len() < 12 && buf.first().is_none_or(|b| b >> 4 == 1) {
            if reader.read_buf(&mut buf).await? == 0 {
                break;
            }
        }
        Ok::<(), std::io::Error>(())
    };
    if timeout(inner.config.connect_timeout, peek).await.is_err() {
        return;
    }
    if let Some(level) = connect_level(&buf).filter(|&level| level != 4) {
        tracing::info!(%peer, level, "mqtt: refused protocol level");
        let code = ConnectReturnCode::RefusedProtocolVersion;
        let _ = write_packet(&mut writer, Packet::ConnAck(ConnAck::new(code, false)), max).await;
        return;
    }
    let connect = match timeout(inner.config.connect_timeout, read_packet(&mut reader, &mut buf, max)).await {
        Ok(Ok(Some(Packet::Connect(connect)))) => connect,
        Ok(Err(CodecError::InvalidProtocolLevel(level))) => {
            tracing::info!(%peer, level, "mqtt: refused protocol level");
            let _ = write_packet(
                &mut writer,
                Packet::ConnAck(ConnAck::new(ConnectReturnCode::RefusedProtocolVersion, false)),
                max,
            )
            .await;
            return;
        }
        Ok(Ok(None)) | Err(_) => return,
        Ok(Ok(Some(_))) | Ok(Err(_)) => {
            counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, "mqtt: first packet is not a valid CONNECT");
            return;
        }
    };

    if connect.protocol != rumqttc::mqttbytes::Protocol::V4 {
        // The codec also reads MQTT 5 CONNECTs; this gateway speaks 3.1.1 only (§3.1.2.2).
        tracing::info!(%peer, "mqtt: refused protocol {:?}", connect.protocol);
        let code = ConnectReturnCode::RefusedProtocolVersion;
        let _ = write_packet(&mut writer, Packet::ConnAck(ConnAck::new(code, false)), max).await;
        return;
    }
    let certified = match certified_device(&inner, &names, &connect).await {
        Some(device) => Some(device),
        None => authenticate(&inner, &connect.login).await,
    };
    let device = match certified {
        Some(device) => device,
        None => {
            counters.auth_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "mqtt: bad credentials");
            let code = ConnectReturnCode::BadUserNamePassword;
            let _ = write_packet(&mut writer, Packet::ConnAck(ConnAck::new(code, false)), max).await;
            return;
        }
    };
    if connect.client_id.is_empty() && !connect.clean_session {
        // MQTT 3.1.1 §3.1.3.1: an empty client id requires a clean session.
        let code = ConnectReturnCode::BadClientId;
        let _ = write_packet(&mut writer, Packet::ConnAck(ConnAck::new(code, false)), max).await;
        return;
    }
    if write_packet(&mut writer, Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)), max).await.is_err() {
        return;
    }

    let connection = inner.next_connection.fetch_add(1, Ordering::Relaxed);
    let (outbox, mut inbox) = mpsc::channel(inner.config.outbox);
    let previous = sessions(&inner).insert(device.clone(), Session { connection, outbox });
    if let Some(previous) = previous {
        let _ = previous.outbox.try_send(Outbound::Replaced);
    } else {
        counters.connected.fetch_add(1, Ordering::Relaxed);
    }
    tracing::info!(%peer, device, "mqtt: device connected");
    let _ = inner.events.send(LinkEvent::Connected { device: device.clone() }).await;

    let keep_alive = (connect.keep_alive > 0).then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
    let end = run(&inner, &device, keep_alive, &mut reader, &mut writer, &mut buf, &mut inbox).await;

    match end {
        End::Violation => {
            counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
        }
        End::Clean | End::Gone | End::Replaced => {}
    }
    {
        let mut sessions = sessions(&inner);
        if sessions.get(&device).is_some_and(|s| s.connection == connection) {
            sessions.remove(&device);
            counters.connected.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let clean = matches!(end, End::Clean);
    tracing::info!(%peer, device, clean, "mqtt: device disconnected");
    // Queue the event before closing, so it is ordered before anything the device does
    // after seeing the close (such as connecting again).
    let _ = inner.events.send(LinkEvent::Disconnected { device, clean }).await;
    let _ = writer.shutdown().await;
}

/// The device a verified client certificate lets in: CONNECT's username (or, without one,
/// its client id) when the certificate names it and the device exists.
async fn certified_device(
    inner: &Inner,
    names: &[String],
    connect: &rumqttc::mqttbytes::v4::Connect,
) -> Option<String> {
    if names.is_empty() {
        return None;
    }
    let id = connect.login.as_ref().map_or(connect.client_id.as_str(), |login| login.username.as_str());
    if !tern_proto::is_valid_device_id(id) || !names.iter().any(|name| name == id) {
        return None;
    }
    inner.store.device_secret_hash(id).await.ok()?.map(|_| id.to_owned())
}

/// Checks username = device id, password = that device's secret.
async fn authenticate(inner: &Inner, login: &Option<rumqttc::mqttbytes::v4::Login>) -> Option<String> {
    let login = login.as_ref()?;
    if !tern_proto::is_valid_device_id(&login.username) {
        return None;
    }
    let stored = inner.store.device_secret_hash(&login.username).await.ok()??;
    hashes_equal(&stored, &hash_secret(&login.password)).then(|| login.username.clone())
}

/// The packet loop of an authenticated connection.
async fn run(
    inner: &Inner,
    device: &str,
    keep_alive: Option<Duration>,
    reader: &mut Reader,
    writer: &mut Writer,
    buf: &mut BytesMut,
    inbox: &mut mpsc::Receiver<Outbound>,
) -> End {
    let counters = &inner.counters;
    let max = inner.config.max_packet;
    let mut subscriptions: Vec<(String, QoS)> = Vec::new();
    // Downlinks that no subscription matched yet: a device subscribes right after
    // CONNACK, and the server core may already have something for it (an offer sent on
    // connect). They wait here, oldest first, and go out when a SUBSCRIBE matches them.
    let mut waiting: VecDeque<(MessageKind, Bytes)> = VecDeque::new();
    let mut next_packet_id: u16 = 0;
    let far_future = Duration::from_secs(86_400 * 365);
    let mut deadline = Instant::now() + keep_alive.unwrap_or(far_future);

    loop {
        // Handle every complete packet already buffered before reading more.
        loop {
            let packet = match Packet::read(buf, max) {
                Ok(packet) => packet,
                Err(CodecError::InsufficientBytes(_)) => break,
                Err(err) => {
                    tracing::info!(device, "mqtt: malformed packet: {err}");
                    return End::Violation;
                }
            };
            deadline = Instant::now() + keep_alive.unwrap_or(far_future);
            let mut subscribed = false;
            let reply = match packet {
                Packet::Publish(publish) => {
                    let Some(kind) = acl::publish_kind(device, &publish.topic) else {
                        counters.acl_denied.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            device,
                            topic = publish.topic,
                            "mqtt: publish outside the device's topics refused"
                        );
                        return End::Violation;
                    };
                    let ack = match publish.qos {
                        QoS::AtMostOnce => None,
                        QoS::AtLeastOnce => Some(Packet::PubAck(PubAck::new(publish.pkid))),
                        QoS::ExactlyOnce => {
                            tracing::info!(device, "mqtt: QoS 2 is not supported");
                            return End::Violation;
                        }
                    };
                    counters.messages_in.fetch_add(1, Ordering::Relaxed);
                    counters.messages_in_by_kind.add(kind);
                    let event = LinkEvent::Message { device: device.to_owned(), kind, payload: publish.payload };
                    if inner.events.send(event).await.is_err() {
                        return End::Gone;
                    }
                    ack
                }
                Packet::Subscribe(subscribe) => {
                    let codes = subscribe
                        .filters
                        .into_iter()
                        .map(|filter| {
                            if !acl::may_subscribe(device, &filter.path) {
                                counters.acl_denied.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(device, filter = filter.path, "mqtt: subscription refused");
                                return SubscribeReasonCode::Failure;
                            }
                            let qos = if filter.qos == QoS::AtMostOnce { QoS::AtMostOnce } else { QoS::AtLeastOnce };
                            subscriptions.retain(|(existing, _)| *existing != filter.path);
                            subscriptions.push((filter.path, qos));
                            counters.subscriptions.fetch_add(1, Ordering::Relaxed);
                            SubscribeReasonCode::Success(qos)
                        })
                        .collect();
                    subscribed = true;
                    Some(Packet::SubAck(SubAck::new(subscribe.pkid, codes)))
                }
                Packet::Unsubscribe(unsubscribe) => {
                    subscriptions.retain(|(filter, _)| !unsubscribe.topics.contains(filter));
                    Some(Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid)))
                }
                Packet::PingReq => Some(Packet::PingResp),
                // Acknowledges one of our QoS 1 downlinks; nothing is kept to retransmit.
                Packet::PubAck(_) => None,
                Packet::Disconnect => return End::Clean,
                other => {
                    tracing::info!(device, "mqtt: unexpected packet {other:?}");
                    return End::Violation;
                }
            };
            if let Some(reply) = reply {
                if write_packet(writer, reply, max).await.is_err() {
                    return End::Gone;
                }
            }
            if subscribed && !waiting.is_empty() {
                // After the SUBACK: what waited for this subscription, in order.
                let mut still = VecDeque::with_capacity(waiting.len());
                for (kind, payload) in waiting.drain(..) {
                    match route(&subscriptions, device, kind) {
                        Some((topic, qos)) => {
                            if !deliver(writer, kind, topic, payload, qos, &mut next_packet_id, inner).await {
                                return End::Gone;
                            }
                        }
                        None => still.push_back((kind, payload)),
                    }
                }
                waiting = still;
            }
        }

        tokio::select! {
            read = reader.read_buf(buf) => match read {
                Ok(0) | Err(_) => return End::Gone,
                // Bytes are counted on the socket, beneath TLS (transport::Counted).
                Ok(_) => {}
            },
            outbound = inbox.recv() => match outbound {
                Some(Outbound::Publish { kind, payload }) => {
                    let Some((topic, qos)) = route(&subscriptions, device, kind) else {
                        if waiting.len() >= inner.config.outbox {
                            // Bounded like the outbox; the protocol above repeats what matters.
                            tracing::warn!(device, "mqtt: downlink dropped, too many waiting for a subscription");
                            waiting.pop_front();
                        }
                        tracing::debug!(device, kind = kind.topic_name(), "mqtt: downlink waits for a matching subscription");
                        waiting.push_back((kind, payload));
                        continue;
                    };
                    if !deliver(writer, kind, topic, payload, qos, &mut next_packet_id, inner).await {
                        return End::Gone;
                    }
                }
                Some(Outbound::Replaced) | None => return End::Replaced,
            },
            () = tokio::time::sleep_until(deadline) => {
                tracing::info!(device, "mqtt: keep-alive expired");
                return End::Gone;
            }
        }
    }
}

/// The topic and QoS a downlink of `kind` goes out on: the compact topic when a
/// subscription matches it, else the long one; `None` when no subscription matches either.
/// Blocks go at QoS 0 whatever the subscription grants: the device asks again for what it
/// lacks, and an acknowledgement per block would cost the device 4 bytes (26 in TLS) for
/// nothing — the gateway keeps no session to re-send from.
fn route(subscriptions: &[(String, QoS)], device: &str, kind: MessageKind) -> Option<(String, QoS)> {
    [TopicForm::Compact, TopicForm::Long].into_iter().find_map(|form| {
        let topic = Topic::with_form(device, kind, form).to_string();
        let qos = granted_qos(subscriptions, &topic)?;
        Some((topic, if kind == MessageKind::Block { QoS::AtMostOnce } else { qos }))
    })
}

/// The QoS a downlink on `topic` goes out at: the highest of the matching subscriptions.
fn granted_qos(subscriptions: &[(String, QoS)], topic: &str) -> Option<QoS> {
    subscriptions
        .iter()
        .filter(|(filter, _)| acl::matches(filter, topic))
        .map(|(_, qos)| *qos)
        .max_by_key(|qos| *qos as u8)
}

/// Writes one downlink PUBLISH; `false` when the connection is gone.
async fn deliver(
    writer: &mut Writer,
    kind: MessageKind,
    topic: String,
    payload: Bytes,
    qos: QoS,
    next_packet_id: &mut u16,
    inner: &Inner,
) -> bool {
    let mut publish = Publish::new(topic, qos, payload.to_vec());
    if qos == QoS::AtLeastOnce {
        *next_packet_id = next_packet_id.checked_add(1).unwrap_or(1);
        publish.pkid = *next_packet_id;
    }
    if write_packet(writer, Packet::Publish(publish), inner.config.max_packet).await.is_err() {
        return false;
    }
    inner.counters.messages_out.fetch_add(1, Ordering::Relaxed);
    inner.counters.messages_out_by_kind.add(kind);
    true
}
