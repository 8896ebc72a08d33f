//! The API's response types that are not store records: what the server sends and what
//! the `tern` CLI reads, one definition for both.

use serde::{Deserialize, Serialize};

use crate::store::{AttemptRecord, Event, Inventory, Membership, PlanRecord};

/// `POST /api/devices`: the registered device and its secret.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AddedDevice {
    /// Device id.
    pub id: String,
    /// Platform id.
    pub platform_id: u16,
    /// Platform name, when Tern knows it.
    pub platform: Option<String>,
    /// `wifi`, `ethernet` or `cellular`.
    pub connectivity: String,
    /// Whether the server heals it without asking (the policy in force).
    pub auto_heal: bool,
    /// Shown once; only its hash is stored.
    pub secret: String,
}

/// A device's update policy as in force (`PATCH /api/devices/{id}`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyView {
    /// `wifi`, `ethernet` or `cellular`.
    pub connectivity: String,
    /// Whether the server heals it without asking.
    pub auto_heal: bool,
}

/// One line of the device list.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceSummary {
    /// Device id.
    pub id: String,
    /// Registered platform id.
    pub platform_id: u16,
    /// Platform name, when Tern knows it.
    pub platform: Option<String>,
    /// Connected now.
    pub online: bool,
    /// `online`, `offline` or `safe_mode` (as last described).
    pub status: String,
    /// Version of the application module as last described.
    pub application_version: Option<u32>,
    /// Last message, Unix milliseconds.
    pub last_seen: Option<i64>,
    /// Last Describe, Unix milliseconds.
    pub described_at: Option<i64>,
    /// `wifi`, `ethernet` or `cellular`.
    pub connectivity: String,
    /// Whether the server heals it without asking (the policy in force).
    pub auto_heal: bool,
    /// Its place in the fleet: product, tags, development flag, pin, data budget.
    pub fleet: Membership,
    /// A disabled device cannot connect (`tern device enable` lets it again).
    #[serde(default)]
    pub disabled: bool,
}

/// `GET /api/devices/{id}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceDetail {
    /// The list line.
    #[serde(flatten)]
    pub summary: DeviceSummary,
    /// Registration time, Unix milliseconds.
    pub created_at: i64,
    /// What the device last described: the modules actually installed.
    pub inventory: Option<Inventory>,
    /// Its most recent update attempts, newest first.
    pub attempts: Vec<AttemptRecord>,
    /// Its most recent plans, newest first (a proposed heal waits here for an operator).
    pub plans: Vec<PlanRecord>,
    /// Its most recent events, oldest first.
    pub history: Vec<Event>,
}

/// An operator token as `GET /api/tokens` shows it (never the token itself).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenView {
    /// Its name, recorded in the events its calls cause.
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// `active`, `expired` or `revoked`.
    pub state: String,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
    /// When it stops working, Unix milliseconds; `null`: never.
    pub expires_at: Option<i64>,
    /// When it was revoked, Unix milliseconds.
    pub revoked_at: Option<i64>,
}

/// `POST /api/tokens` and `POST /api/tokens/{name}/rotate`: the token, shown this once.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IssuedToken {
    /// The token as listed.
    #[serde(flatten)]
    pub view: TokenView,
    /// The bearer token; only its hash is stored.
    pub token: String,
}

/// `POST /api/devices/{id}/secret`: the device's new secret, shown this once.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RotatedSecret {
    /// Device id (its MQTT user name).
    pub id: String,
    /// The new MQTT password; the old one no longer works.
    pub secret: String,
}
