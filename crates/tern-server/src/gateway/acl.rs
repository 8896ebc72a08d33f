//! Access rules of the built-in gateway, and MQTT topic-filter matching.
//!
//! A device, authenticated as `{device}`, may publish only to its own `up` topics for the
//! up kinds — `tern/v1/d/{device}/up/{kind}` or, compact, `t/{device}/u/{code}` — and
//! subscribe only to filters under `tern/v1/d/{device}/` or `t/{device}/`. Nothing a device
//! publishes is routed to any other client: uplinks go to the server core only.

use tern_proto::topic::{COMPACT_PREFIX, PREFIX};
use tern_proto::{Direction, MessageKind, Topic};

/// The message kind `device` may publish on `topic`, or `None` when it may not publish there.
pub fn publish_kind(device: &str, topic: &str) -> Option<MessageKind> {
    let topic = Topic::parse(topic)?;
    (topic.device == device && topic.direction == Direction::Up).then_some(topic.kind)
}

/// Whether `device` may subscribe to `filter`.
pub fn may_subscribe(device: &str, filter: &str) -> bool {
    let rest = [PREFIX, COMPACT_PREFIX].iter().find_map(|prefix| filter.strip_prefix(prefix)?.strip_prefix(device));
    let Some(rest) = rest else {
        return false;
    };
    // `rest` must continue with a level separator and at least one more level; the device
    // id itself contains no wildcard or separator (see `is_valid_device_id`).
    rest.len() > 1 && rest.starts_with('/') && is_valid_filter(filter)
}

/// MQTT 3.1.1 §4.7.1: `#` only as the whole last level, `+` only as a whole level.
pub fn is_valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| match *level {
        "#" => i == levels.len() - 1,
        "+" => true,
        other => !other.contains(['#', '+']),
    })
}

/// Whether a (valid) `filter` matches a concrete `topic`.
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match level {
            "#" => return true,
            "+" => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            literal => {
                if topic_levels.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}
