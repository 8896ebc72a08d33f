//! The MQTT topic layout: where each message is published.
//!
//! Every message travels on a topic of its device, its direction and its kind, in one of
//! two forms:
//!
//! | form | topic | example (Block to `argon-7`) |
//! |---|---|---|
//! | long | `tern/v1/d/{device}/{up\|down}/{kind}` | `tern/v1/d/argon-7/down/block` |
//! | compact | `t/{device}/{u\|d}/{code}` | `t/argon-7/d/4` |
//!
//! `{kind}` is [`MessageKind::topic_name`], `{code}` the kind's wire code
//! ([`MessageKind::code`]) in decimal. The compact form saves about 20 bytes on every
//! message; a device uses it when it says so in its Describe
//! ([`crate::LinkCapacity::compact_topics`]) and subscribes to its compact `d` topics; a
//! gateway accepts both forms from every device and sends each device its downlinks in the
//! form it subscribed to, so devices that know only the long form keep working. A device
//! may publish only on its own `up` topics and subscribe only to its own `down` topics; the
//! server's gateway enforces it.

use crate::message::{Direction, MessageKind};

/// The first levels of every long Tern topic (`v1` is the topic layout's version).
pub const PREFIX: &str = "tern/v1/d/";

/// The first level of every compact Tern topic (the same layout version as [`PREFIX`]).
pub const COMPACT_PREFIX: &str = "t/";

/// The longest device id accepted.
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// Whether `id` can name a device: 1 to 64 of `A-Z a-z 0-9 - _ .`, so that it is always
/// exactly one MQTT topic level and never a wildcard.
pub fn is_valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DEVICE_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Which of the two topic forms (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicForm {
    /// `tern/v1/d/{device}/{up|down}/{kind}`.
    Long,
    /// `t/{device}/{u|d}/{code}`.
    Compact,
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
    /// The form it is written in.
    pub form: TopicForm,
}

impl<'a> Topic<'a> {
    /// Parses `topic`, in either form; `None` unless it is exactly a Tern topic for a valid
    /// device id and a message kind travelling in the direction the topic says.
    pub fn parse(topic: &'a str) -> Option<Self> {
        let (rest, form) = match topic.strip_prefix(PREFIX) {
            Some(rest) => (rest, TopicForm::Long),
            None => (topic.strip_prefix(COMPACT_PREFIX)?, TopicForm::Compact),
        };
        let mut levels = rest.split('/');
        let device = levels.next()?;
        let direction = match (form, levels.next()?) {
            (TopicForm::Long, "up") | (TopicForm::Compact, "u") => Direction::Up,
            (TopicForm::Long, "down") | (TopicForm::Compact, "d") => Direction::Down,
            _ => return None,
        };
        let last = levels.next()?;
        let kind = match form {
            TopicForm::Long => MessageKind::from_topic_name(last)?,
            // One decimal digit, as written: no sign, no leading zero, nothing else.
            TopicForm::Compact if last.len() == 1 => {
                MessageKind::from_code(u64::from(last.as_bytes()[0].wrapping_sub(b'0')))?
            }
            TopicForm::Compact => return None,
        };
        if levels.next().is_some() || !is_valid_device_id(device) || kind.direction() != direction {
            return None;
        }
        Some(Topic { device, direction, kind, form })
    }

    /// The long-form topic for messages of `kind` to or from `device`.
    pub fn new(device: &'a str, kind: MessageKind) -> Self {
        Topic::with_form(device, kind, TopicForm::Long)
    }

    /// The topic for messages of `kind` to or from `device`, in `form`.
    pub fn with_form(device: &'a str, kind: MessageKind, form: TopicForm) -> Self {
        Topic { device, direction: kind.direction(), kind, form }
    }

    /// The filter a device subscribes to for its downlinks in `form`.
    pub fn downlink_filter(device: &str, form: TopicForm) -> DownlinkFilter<'_> {
        DownlinkFilter { device, form }
    }

    /// The length in bytes of the topic as written.
    pub fn len(&self) -> usize {
        let (prefix, direction, last) = match (self.form, self.direction) {
            (TopicForm::Long, Direction::Up) => (PREFIX.len(), 2, self.kind.topic_name().len()),
            (TopicForm::Long, Direction::Down) => (PREFIX.len(), 4, self.kind.topic_name().len()),
            (TopicForm::Compact, _) => (COMPACT_PREFIX.len(), 1, 1),
        };
        prefix + self.device.len() + 1 + direction + 1 + last
    }

    /// Never: a topic has at least its prefix (here for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl core::fmt::Display for Topic<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match (self.form, self.direction) {
            (TopicForm::Long, Direction::Up) => write!(f, "{PREFIX}{}/up/{}", self.device, self.kind.topic_name()),
            (TopicForm::Long, Direction::Down) => {
                write!(f, "{PREFIX}{}/down/{}", self.device, self.kind.topic_name())
            }
            (TopicForm::Compact, Direction::Up) => write!(f, "{COMPACT_PREFIX}{}/u/{}", self.device, self.kind.code()),
            (TopicForm::Compact, Direction::Down) => {
                write!(f, "{COMPACT_PREFIX}{}/d/{}", self.device, self.kind.code())
            }
        }
    }
}

/// The subscription filter for a device's downlinks (`tern/v1/d/{device}/down/#` or
/// `t/{device}/d/#`), written by `Display`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DownlinkFilter<'a> {
    device: &'a str,
    form: TopicForm,
}

impl core::fmt::Display for DownlinkFilter<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.form {
            TopicForm::Long => write!(f, "{PREFIX}{}/down/#", self.device),
            TopicForm::Compact => write!(f, "{COMPACT_PREFIX}{}/d/#", self.device),
        }
    }
}
