//! The protocol's messages, as typed values.
//!
//! Byte-level layout (CBOR keys and types) is in [`crate::codec`] and `docs/protocol.md`.

use tern_image::{Dependency, Integrity, ModuleFunction};

use crate::list::List;

/// The most modules one Describe or UpdateOffer carries.
///
/// The largest real set is a Particle Gen 3 device: bootloader, radio stack (SoftDevice),
/// system part, application, NCP firmware and a few assets.
pub const MAX_MODULES: usize = 12;

/// Identifies one update attempt; chosen by the server, echoed by the device.
pub type AttemptId = u64;

/// A SHA-256 digest.
pub type Sha256 = [u8; 32];

/// Which way a message travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the device to the server (`…/up/…` topics).
    Up,
    /// From the server to the device (`…/down/…` topics).
    Down,
}

/// The type of a message, as numbered on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// 1: the device's inventory and boot state.
    Describe,
    /// 2: an update the server offers.
    UpdateOffer,
    /// 3: the device asks for a range of a module's bytes.
    BlockRequest,
    /// 4: a range of a module's bytes.
    Block,
    /// 5: how far an update has come on the device.
    Progress,
    /// 6: how an update attempt ended on the device.
    Result,
    /// 7: an instruction from the server.
    Command,
}

impl MessageKind {
    /// Every kind, in wire-code order.
    pub const ALL: [MessageKind; 7] = [
        MessageKind::Describe,
        MessageKind::UpdateOffer,
        MessageKind::BlockRequest,
        MessageKind::Block,
        MessageKind::Progress,
        MessageKind::Result,
        MessageKind::Command,
    ];

    /// The code in the envelope.
    pub const fn code(self) -> u8 {
        match self {
            MessageKind::Describe => 1,
            MessageKind::UpdateOffer => 2,
            MessageKind::BlockRequest => 3,
            MessageKind::Block => 4,
            MessageKind::Progress => 5,
            MessageKind::Result => 6,
            MessageKind::Command => 7,
        }
    }

    /// The kind with wire code `code`.
    pub const fn from_code(code: u64) -> Option<Self> {
        Some(match code {
            1 => MessageKind::Describe,
            2 => MessageKind::UpdateOffer,
            3 => MessageKind::BlockRequest,
            4 => MessageKind::Block,
            5 => MessageKind::Progress,
            6 => MessageKind::Result,
            7 => MessageKind::Command,
            _ => return None,
        })
    }

    /// Which way messages of this kind travel.
    pub const fn direction(self) -> Direction {
        match self {
            MessageKind::Describe | MessageKind::BlockRequest | MessageKind::Progress | MessageKind::Result => {
                Direction::Up
            }
            MessageKind::UpdateOffer | MessageKind::Block | MessageKind::Command => Direction::Down,
        }
    }

    /// The last topic level messages of this kind are published on.
    pub const fn topic_name(self) -> &'static str {
        match self {
            MessageKind::Describe => "describe",
            MessageKind::UpdateOffer => "offer",
            MessageKind::BlockRequest => "block-request",
            MessageKind::Block => "block",
            MessageKind::Progress => "progress",
            MessageKind::Result => "result",
            MessageKind::Command => "command",
        }
    }

    /// The kind whose topic name is `name`.
    pub fn from_topic_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.topic_name() == name)
    }
}

/// One protocol message.
// An offer (twelve modules with their transfers) is much larger than a block request;
// without an allocator there is nothing to box it in, and a message lives on the stack
// only while it is encoded or handled.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// Device → server: inventory and boot state.
    Describe(Describe),
    /// Server → device: an update to download.
    UpdateOffer(UpdateOffer<'a>),
    /// Device → server: send me these bytes.
    BlockRequest(BlockRequest),
    /// Server → device: the bytes asked for.
    Block(Block<'a>),
    /// Device → server: how far the update has come.
    Progress(Progress),
    /// Device → server: how the update ended.
    Result(UpdateResult),
    /// Server → device: do this.
    Command(Command),
}

impl Message<'_> {
    /// This message's kind.
    pub const fn kind(&self) -> MessageKind {
        match self {
            Message::Describe(_) => MessageKind::Describe,
            Message::UpdateOffer(_) => MessageKind::UpdateOffer,
            Message::BlockRequest(_) => MessageKind::BlockRequest,
            Message::Block(_) => MessageKind::Block,
            Message::Progress(_) => MessageKind::Progress,
            Message::Result(_) => MessageKind::Result,
            Message::Command(_) => MessageKind::Command,
        }
    }
}

/// Why the device is running what it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootReason {
    /// 0: an ordinary boot of confirmed firmware.
    Normal,
    /// 1: the first boots of newly installed firmware, not yet confirmed.
    TestBoot,
    /// 2: the boot manager rolled back to the previous firmware.
    Rollback,
    /// 3: only the system runs; see [`SafeModeCause`].
    SafeMode,
    /// 4: the boot manager restored the factory image.
    FactoryRestore,
    /// Any other code, from a newer device; kept so it round-trips.
    Other(u8),
}

impl BootReason {
    /// The wire code.
    pub const fn code(self) -> u8 {
        match self {
            BootReason::Normal => 0,
            BootReason::TestBoot => 1,
            BootReason::Rollback => 2,
            BootReason::SafeMode => 3,
            BootReason::FactoryRestore => 4,
            BootReason::Other(code) => code,
        }
    }

    /// The reason with wire code `code`.
    pub const fn from_code(code: u8) -> Self {
        match code {
            0 => BootReason::Normal,
            1 => BootReason::TestBoot,
            2 => BootReason::Rollback,
            3 => BootReason::SafeMode,
            4 => BootReason::FactoryRestore,
            other => BootReason::Other(other),
        }
    }

    /// A stable lowercase name for JSON and logs.
    pub const fn name(self) -> &'static str {
        match self {
            BootReason::Normal => "normal",
            BootReason::TestBoot => "test_boot",
            BootReason::Rollback => "rollback",
            BootReason::SafeMode => "safe_mode",
            BootReason::FactoryRestore => "factory_restore",
            BootReason::Other(_) => "unknown",
        }
    }
}

/// Why the device is in safe mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SafeModeCause {
    /// 0: a module's declared dependencies are not installed (see [`Describe::unmet`]).
    UnmetDependency,
    /// 1: the application failed its integrity check.
    InvalidApplication,
    /// 2: no application is installed.
    NoApplication,
    /// 3: the server or a local command asked for safe mode.
    Requested,
    /// Any other code, from a newer device.
    Other(u8),
}

impl SafeModeCause {
    /// The wire code.
    pub const fn code(self) -> u8 {
        match self {
            SafeModeCause::UnmetDependency => 0,
            SafeModeCause::InvalidApplication => 1,
            SafeModeCause::NoApplication => 2,
            SafeModeCause::Requested => 3,
            SafeModeCause::Other(code) => code,
        }
    }

    /// The cause with wire code `code`.
    pub const fn from_code(code: u8) -> Self {
        match code {
            0 => SafeModeCause::UnmetDependency,
            1 => SafeModeCause::InvalidApplication,
            2 => SafeModeCause::NoApplication,
            3 => SafeModeCause::Requested,
            other => SafeModeCause::Other(other),
        }
    }

    /// A stable lowercase name for JSON and logs.
    pub const fn name(self) -> &'static str {
        match self {
            SafeModeCause::UnmetDependency => "unmet_dependency",
            SafeModeCause::InvalidApplication => "invalid_application",
            SafeModeCause::NoApplication => "no_application",
            SafeModeCause::Requested => "requested",
            SafeModeCause::Other(_) => "unknown",
        }
    }
}

/// One module installed on the device, as its boot manager last checked it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstalledModule {
    /// What the module is for.
    pub function: ModuleFunction,
    /// Index among modules of the same function.
    pub index: u8,
    /// Its version number.
    pub version: u32,
    /// SHA-256 of the module as installed.
    pub sha256: Sha256,
    /// Its size in bytes.
    pub size: u32,
    /// The result of its integrity check at the last boot.
    pub integrity: Integrity,
    /// Whether every dependency it declares is satisfied by the other installed modules.
    pub dependencies_met: bool,
}

/// Device → server: everything the server needs to know about what the device runs.
///
/// Sent on every connect and after every boot; the server's view of a device's modules is
/// only ever what the device last described.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Describe {
    /// The hardware platform id.
    pub platform: u16,
    /// Why the device runs what it runs.
    pub boot_reason: BootReason,
    /// Why it is in safe mode; present exactly when `boot_reason` is safe mode.
    pub safe_mode: Option<SafeModeCause>,
    /// The first unmet dependency found, when safe mode is due to one.
    pub unmet: Option<Dependency>,
    /// Whether the running modules are confirmed (marked good), as opposed to on test.
    pub confirmed: bool,
    /// The installed modules.
    pub modules: List<InstalledModule, MAX_MODULES>,
    /// How the last update attempt ended, if the device remembers one.
    pub last_result: Option<UpdateResult>,
    /// What one offer can hold on this device (absent from older devices: the server then
    /// assumes an offer of any size fits and lets the device refuse it).
    pub capacity: Option<Capacity>,
    /// The device's security counter: offers whose signed counter is lower are refused.
    pub security_counter: Option<u64>,
}

/// How much one update offer can carry on a device: what the server plans stages with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// The most module bytes one offer may stage, each module rounded up to whole
    /// `block_size` units (the exchange area, or less when its progress markers run out).
    pub staging_bytes: u32,
    /// The most modules one offer may list.
    pub max_modules: u8,
    /// The unit module sizes are rounded up to in `staging_bytes` (the agent's block).
    pub block_size: u32,
    /// Whether the device applies patches ([`Transfer::Patch`]: Tern delta patches and
    /// compressed images, `docs/delta.md`). Absent from older devices: raw transfers only.
    pub patches: bool,
    /// What one message on the device's link may carry, and the topic form it uses.
    /// Absent from older devices: blocks of `block_size`, long topics.
    pub link: Option<LinkCapacity>,
}

/// What the device's link takes: announced in [`Capacity::link`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkCapacity {
    /// The most data bytes one [`Block`] message may carry (the device's receive buffer,
    /// less the message's own framing); a multiple of the agent's block size.
    pub max_block: u32,
    /// Whether the device publishes and subscribes on the compact topics
    /// (`t/{device}/{u|d}/{code}`, see [`crate::topic`]) instead of the long ones.
    pub compact_topics: bool,
}

impl Capacity {
    /// Staging bytes a module of `size` bytes takes.
    pub const fn staged_size(&self, size: u32) -> u64 {
        let unit = if self.block_size == 0 { 1 } else { self.block_size as u64 };
        (size as u64).div_ceil(unit) * unit
    }
}

/// How a module's bytes travel to the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transfer {
    /// The module's own bytes: block requests address the module.
    Raw,
    /// A Tern patch (`docs/delta.md`) that rebuilds the module on the device: block
    /// requests address the patch's `length` bytes. With a `source`, the patch is a delta
    /// from the module with that SHA-256, which the device must run in the module's slot;
    /// without one, it is the module compressed (a patch from nothing). The rebuilt module
    /// must hash to [`OfferedModule::sha256`] like any other: a patch changes nothing
    /// about trust.
    Patch {
        /// SHA-256 of the installed module the patch applies to; `None` for a compressed
        /// image.
        source: Option<Sha256>,
        /// Length of the patch in bytes.
        length: u32,
    },
}

impl Transfer {
    /// A stable lowercase name for JSON and logs: `raw`, `delta` or `compressed`.
    pub const fn name(&self) -> &'static str {
        match self {
            Transfer::Raw => "raw",
            Transfer::Patch { source: Some(_), .. } => "delta",
            Transfer::Patch { source: None, .. } => "compressed",
        }
    }
}

/// One module of an update offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfferedModule {
    /// What the module is for.
    pub function: ModuleFunction,
    /// Index among modules of the same function.
    pub index: u8,
    /// Its version number.
    pub version: u32,
    /// Size of the module in bytes.
    pub size: u32,
    /// SHA-256 of the module's bytes.
    pub sha256: Sha256,
    /// How its bytes travel (raw, or as a patch).
    pub transfer: Transfer,
}

impl OfferedModule {
    /// The bytes block requests address: the module's size, or its patch's length.
    pub const fn transfer_len(&self) -> u32 {
        match self.transfer {
            Transfer::Raw => self.size,
            Transfer::Patch { length, .. } => length,
        }
    }
}

/// Server → device: an update to download and install, in the order listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdateOffer<'a> {
    /// The attempt this offer belongs to.
    pub attempt: AttemptId,
    /// The signed documents (COSE_Sign1, see `tern_image::manifest`): one release
    /// manifest, or one module statement per module in the order of `modules`. The device
    /// trusts only what these prove.
    pub signed: List<&'a [u8], MAX_MODULES>,
    /// The modules, in install order; block requests name them by position here.
    pub modules: List<OfferedModule, MAX_MODULES>,
    /// The server's estimate of bytes on the air for the whole transfer.
    pub air_bytes: u64,
    /// The most block requests the device may have in flight.
    pub window: u8,
    /// The largest block the server sends in one message.
    pub max_block: u32,
    /// The most bytes one [`BlockRequest`] may ask for; the server answers it with as many
    /// [`Block`]s of at most `max_block` bytes as it takes, in order. Absent (older
    /// servers): one block per request.
    pub max_request: Option<u32>,
}

/// Device → server: please send `length` bytes of module `module` from `offset` (of the
/// module's transfer: its own bytes, or its patch's). A request for more than the offer's
/// `max_block` (at most its `max_request`) is a window: it is answered with consecutive
/// blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRequest {
    /// The attempt whose offer lists the module.
    pub attempt: AttemptId,
    /// Position of the module in the offer.
    pub module: u8,
    /// Offset into the module.
    pub offset: u32,
    /// Bytes wanted (at most the offer's `max_request`, or `max_block` without one).
    pub length: u32,
}

/// Server → device: bytes of one module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block<'a> {
    /// The attempt whose offer lists the module.
    pub attempt: AttemptId,
    /// Position of the module in the offer.
    pub module: u8,
    /// Offset of `data` in the module.
    pub offset: u32,
    /// The bytes.
    pub data: &'a [u8],
}

/// What the device is doing with an update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// 0: receiving blocks.
    Downloading,
    /// 1: checking hashes and signatures of the received modules.
    Verifying,
    /// 2: verified and marked pending; waits for a reboot.
    Staged,
    /// 3: about to reboot into the boot manager, which installs.
    Rebooting,
    /// Any other code, from a newer device.
    Other(u8),
}

impl Phase {
    /// The wire code.
    pub const fn code(self) -> u8 {
        match self {
            Phase::Downloading => 0,
            Phase::Verifying => 1,
            Phase::Staged => 2,
            Phase::Rebooting => 3,
            Phase::Other(code) => code,
        }
    }

    /// The phase with wire code `code`.
    pub const fn from_code(code: u8) -> Self {
        match code {
            0 => Phase::Downloading,
            1 => Phase::Verifying,
            2 => Phase::Staged,
            3 => Phase::Rebooting,
            other => Phase::Other(other),
        }
    }

    /// A stable lowercase name for JSON and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Phase::Downloading => "downloading",
            Phase::Verifying => "verifying",
            Phase::Staged => "staged",
            Phase::Rebooting => "rebooting",
            Phase::Other(_) => "unknown",
        }
    }
}

/// Device → server: how far an attempt has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The attempt.
    pub attempt: AttemptId,
    /// What the device is doing.
    pub phase: Phase,
    /// Bytes of the offer's modules held verified-by-offset in staging.
    pub bytes_done: u64,
    /// Total bytes of the offer's modules.
    pub bytes_total: u64,
}

/// How an attempt ended on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 0: installed, rebooted into and confirmed.
    Confirmed,
    /// 1: refused or failed before anything ran; see the reason.
    Failed,
    /// 2: installed, then rolled back; see the reason.
    RolledBack,
    /// 3: stopped by a cancel command.
    Cancelled,
    /// Any other code, from a newer device.
    Other(u8),
}

impl Outcome {
    /// The wire code.
    pub const fn code(self) -> u8 {
        match self {
            Outcome::Confirmed => 0,
            Outcome::Failed => 1,
            Outcome::RolledBack => 2,
            Outcome::Cancelled => 3,
            Outcome::Other(code) => code,
        }
    }

    /// The outcome with wire code `code`.
    pub const fn from_code(code: u8) -> Self {
        match code {
            0 => Outcome::Confirmed,
            1 => Outcome::Failed,
            2 => Outcome::RolledBack,
            3 => Outcome::Cancelled,
            other => Outcome::Other(other),
        }
    }

    /// A stable lowercase name for JSON and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Confirmed => "confirmed",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolled_back",
            Outcome::Cancelled => "cancelled",
            Outcome::Other(_) => "unknown",
        }
    }
}

/// Why an attempt failed or was rolled back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// 0: no reason (the attempt was confirmed).
    None,
    /// 1: no trusted key signed the update, or a signature did not verify.
    RejectedSignature,
    /// 2: the update targets another platform.
    WrongPlatform,
    /// 3: a module's dependencies could never be satisfied by the update plus what is installed.
    UnmetDependency,
    /// 4: a received module's hash did not match the signed one.
    VerifyError,
    /// 5: erasing or programming flash failed.
    FlashError,
    /// 6: the new application did not survive its test boots (panics, reset loops).
    AppFailedTestBoot,
    /// 7: the new application hung and the watchdog reset the device.
    AppHung,
    /// 8: the new application never confirmed itself within the allowed boots.
    AppNotConfirmed,
    /// 9: the update's security counter is lower than the device's.
    SecurityCounterRollback,
    /// 10: a module does not fit its slot or the staging area.
    TooLarge,
    /// 11: the offer could not be decoded or is inconsistent.
    MalformedOffer,
    /// 12: another update is already in progress.
    Busy,
    /// 13: a cancel command stopped the attempt.
    CancelledByServer,
    /// 14: a patch's source module is not what the device runs in that slot.
    DeltaSource,
    /// 15: a patch could not be applied (damaged, or its result did not match).
    DeltaFailed,
    /// Any other code, from a newer device.
    Other(u16),
}

impl Reason {
    /// The wire code.
    pub const fn code(self) -> u16 {
        match self {
            Reason::None => 0,
            Reason::RejectedSignature => 1,
            Reason::WrongPlatform => 2,
            Reason::UnmetDependency => 3,
            Reason::VerifyError => 4,
            Reason::FlashError => 5,
            Reason::AppFailedTestBoot => 6,
            Reason::AppHung => 7,
            Reason::AppNotConfirmed => 8,
            Reason::SecurityCounterRollback => 9,
            Reason::TooLarge => 10,
            Reason::MalformedOffer => 11,
            Reason::Busy => 12,
            Reason::CancelledByServer => 13,
            Reason::DeltaSource => 14,
            Reason::DeltaFailed => 15,
            Reason::Other(code) => code,
        }
    }

    /// The reason with wire code `code`.
    pub const fn from_code(code: u16) -> Self {
        match code {
            0 => Reason::None,
            1 => Reason::RejectedSignature,
            2 => Reason::WrongPlatform,
            3 => Reason::UnmetDependency,
            4 => Reason::VerifyError,
            5 => Reason::FlashError,
            6 => Reason::AppFailedTestBoot,
            7 => Reason::AppHung,
            8 => Reason::AppNotConfirmed,
            9 => Reason::SecurityCounterRollback,
            10 => Reason::TooLarge,
            11 => Reason::MalformedOffer,
            12 => Reason::Busy,
            13 => Reason::CancelledByServer,
            14 => Reason::DeltaSource,
            15 => Reason::DeltaFailed,
            other => Reason::Other(other),
        }
    }

    /// A stable lowercase name for JSON, logs and the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::None => "none",
            Reason::RejectedSignature => "rejected_signature",
            Reason::WrongPlatform => "wrong_platform",
            Reason::UnmetDependency => "unmet_dependency",
            Reason::VerifyError => "verify_error",
            Reason::FlashError => "flash_error",
            Reason::AppFailedTestBoot => "app_failed_test_boot",
            Reason::AppHung => "app_hung",
            Reason::AppNotConfirmed => "app_not_confirmed",
            Reason::SecurityCounterRollback => "security_counter_rollback",
            Reason::TooLarge => "too_large",
            Reason::MalformedOffer => "malformed_offer",
            Reason::Busy => "busy",
            Reason::CancelledByServer => "cancelled_by_server",
            Reason::DeltaSource => "delta_source",
            Reason::DeltaFailed => "delta_failed",
            Reason::Other(_) => "unknown",
        }
    }
}

/// Device → server: how an attempt ended (also repeated inside [`Describe`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdateResult {
    /// The attempt.
    pub attempt: AttemptId,
    /// How it ended.
    pub outcome: Outcome,
    /// Why, when it did not end confirmed.
    pub reason: Reason,
    /// Position in the offer of the module the reason is about, when there is one.
    pub module: Option<u8>,
}

/// What a [`Command`] asks the device to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// 0: reboot now.
    Reboot,
    /// 1: reboot into safe mode.
    EnterSafeMode,
    /// 2: restore the factory image.
    FactoryRestore,
    /// 3: abandon the attempt named in the command.
    CancelUpdate,
    /// Any other code, from a newer server.
    Other(u8),
}

impl Action {
    /// The wire code.
    pub const fn code(self) -> u8 {
        match self {
            Action::Reboot => 0,
            Action::EnterSafeMode => 1,
            Action::FactoryRestore => 2,
            Action::CancelUpdate => 3,
            Action::Other(code) => code,
        }
    }

    /// The action with wire code `code`.
    pub const fn from_code(code: u8) -> Self {
        match code {
            0 => Action::Reboot,
            1 => Action::EnterSafeMode,
            2 => Action::FactoryRestore,
            3 => Action::CancelUpdate,
            other => Action::Other(other),
        }
    }

    /// A stable lowercase name for JSON, logs and the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            Action::Reboot => "reboot",
            Action::EnterSafeMode => "safe_mode",
            Action::FactoryRestore => "factory_restore",
            Action::CancelUpdate => "cancel",
            Action::Other(_) => "unknown",
        }
    }

    /// The action named `name` (inverse of [`Action::name`] for known actions).
    pub fn from_name(name: &str) -> Option<Self> {
        [Action::Reboot, Action::EnterSafeMode, Action::FactoryRestore, Action::CancelUpdate]
            .into_iter()
            .find(|action| action.name() == name)
    }
}

/// Server → device: an instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    /// Chosen by the server so that a repeated delivery of the same command is recognised.
    pub id: u32,
    /// What to do.
    pub action: Action,
    /// The attempt a cancel is about.
    pub attempt: Option<AttemptId>,
}
