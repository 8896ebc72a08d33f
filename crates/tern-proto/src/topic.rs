//! The MQTT topic layout: where each message is published.
//!
//! | topic | direction | messages |
//! |---|---|---|
//! | `tern/v1/d/{device}/up/{kind}` | device → server | describe, block-request, progress, result |
//! | `tern/v1/d/{device}/down/{kind}` | server → device | offer, block, command |
//!
//! `{kind}` is [`MessageKind::topic_name`]. A device may publish only on its own `up`
//! topics and subscribe only to its own `down` topics; the server's gateway enforces it.

use crate::message::{Direction, MessageKind};

/// The first levels of every Tern topic (`v1` is the topic layout's version).
pub const PREFIX: &str = "tern/v1/d/";

/// The longest device id accepted.
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// Whether `id` can name a device: 1 to 64 of `A-Z a-z 0-9 - _ .`, so that it is always
/// exactly one MQTT topic level and never a wildcard.
pub fn is_valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DEVICE_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A Tern topic, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topic<'a> {
    /// The device the topic belongs to.
    pub device: &'a str,
    /// Which way messages on it travel.
    pub direction: Direction,
    /// The kind of message carried.
    pub kind: MessageKind,
}

impl<'a> Topic<'a> {
    /// Parses `topic`; `None` unless it is exactly a Tern topic for a valid device id and a
    /// message kind travelling in the direction the topic says.
    pub fn parse(topic: &'a str) -> Option<Self> {
        let rest = topic.strip_prefix(PREFIX)?;
        let mut levels = rest.split('/');
        let device = levels.next()?;
        let direction = match levels.next()? {
            "up" => Direction::Up,
            "down" => Direction::Down,
            _ => return None,
        };
        let kind = MessageKind::from_topic_name(levels.next()?)?;
        if levels.next().is_some() || !is_valid_device_id(device) || kind.direction() != direction {
            return None;
        }
        Some(Topic { device, direction, kind })
    }

    /// The topic for messages of `kind` to or from `device`.
    pub fn new(device: &'a str, kind: MessageKind) -> Self {
        Topic { device, direction: kind.direction(), kind }
    }
}

impl core::fmt::Display for Topic<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let direction = match self.direction {
            Direction::Up => "up",
            Direction::Down => "down",
        };
        write!(f, "{PREFIX}{}/{direction}/{}", self.device, self.kind.topic_name())
    }
}
