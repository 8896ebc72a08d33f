//! The device state record: what is installed, what is staged, the journal of an install
//! in progress and the test-boot accounting — and how it is kept on flash.
//!
//! # Persistence: a log across two banks, highest sequence wins
//!
//! The state banks (each one or more whole sectors) hold record positions of
//! [`RECORD_LEN`] bytes each. A write programs the new record, with the sequence number
//! incremented, into the next erased position after the current record in the same bank;
//! only when the bank is full is the *other* bank erased and the record written at its
//! first position. At load, the valid record (magic, layout version and CRC all correct)
//! with the highest sequence in any position wins. A power cut during the program leaves
//! the current record intact (a torn position is skipped by the next write, which finds
//! it not erased); a cut during the erase of the other bank leaves the current bank
//! intact; so every state change is atomic. A sector of a bank holding `n` records is
//! erased once per `2n` state changes, instead of once per two with one record per bank
//! (the STM32F2's 16 KiB banks hold 8 records, the Gen 3 banks 12). This record is also
//! the install journal: each completed copy
//! step is recorded by writing the next step number. It also names the server's attempt
//! the staged or last update belongs to, written in the same record as the offer, so the
//! attempt a device reports can never disagree with what its flash holds. (Records
//! written before the attempt id existed have flag bit 2 clear: no attempt.)
//!
//! # Record layout (little-endian, [`RECORD_LEN`] bytes)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic [`MAGIC`] (`0x5445524E`) |
//! | 4 | 2 | layout version [`LAYOUT_VERSION`] |
//! | 6 | 2 | reserved, 0 |
//! | 8 | 4 | sequence number |
//! | 12 | 8 | security counter (highest installed) |
//! | 20 | 1 | update phase: 0 idle, 1 preparing, 2 receiving, 3 staged |
//! | 21 | 1 | number of staged modules (≤ [`MAX_UPDATE_MODULES`]) |
//! | 22 | 1 | job: 0 none, 1 update, 2 update keeping rollback copies, 3 rollback, 4 factory restore |
//! | 23 | 1 | job step: copy steps already completed |
//! | 24 | 8 | security counter of the staged update |
//! | 32 | 1 | boot state: 0 confirmed, 1 testing, 2 application disabled |
//! | 33 | 1 | testing: origin (0 update, 1 rollback, 2 factory); disabled: reason |
//! | 34 | 1 | testing: boots so far after software, panic or watchdog resets; confirmed: consecutive fault resets |
//! | 35 | 1 | flags: bit 0 factory restore requested, bit 1 safe mode requested for the next boot, bit 2 attempt id present, bit 3 journaled erase pending |
//! | 36 | 1 | result of the last update attempt ([`UpdateResult`] code) |
//! | 37 | 1 | testing: power-on resets so far (0 in records written before it existed) |
//! | 38 | 2 | reserved, 0 |
//! | 40 | 6 × 68 | installed module per slot (module record) |
//! | 448 | 6 × 72 | rollback copy per slot: module record, then its offset in the exchange area (u32) |
//! | 880 | 68 | factory image (module record) |
//! | 948 | 4 × 76 | staged modules: slot (u8), 3 reserved, offset in the exchange area (u32), module record |
//! | 1252 | 8 | attempt id of the last accepted offer (valid when flag bit 2 is set) |
//! | 1260 | 1 | journaled erase: flash device (valid when flag bit 3 is set) |
//! | 1261 | 3 | reserved, 0 |
//! | 1264 | 4 | journaled erase: first byte |
//! | 1268 | 4 | journaled erase: end (exclusive) |
//! | 1272 | 592 | reserved, 0 |
//! | 1864 | 4 × 44 | staged modules' transfers: kind (u8: 0 raw, 1 delta patch, 2 compressed), 3 reserved, patch length (u32), patch offset in the exchange area (u32), source SHA-256 (32; zero unless a delta) |
//! | 2040 | 4 | reserved, 0 |
//! | 2044 | 4 | CRC-32 (ISO-HDLC) of bytes 0..2044 |
//!
//! Module record (68 bytes); function 0 marks an empty entry:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | function (Device OS code) |
//! | 1 | 1 | index |
//! | 2 | 1 | number of dependencies (≤ 4) |
//! | 3 | 1 | reserved, 0 |
//! | 4 | 4 | version |
//! | 8 | 4 | size in bytes |
//! | 12 | 32 | SHA-256 of the module's bytes (from the signed manifest) |
//! | 44 | 4 × 6 | dependencies: function (u8), index (u8), minimum version (u32) |

use tern_image::manifest::ModuleEntry;
use tern_image::model::{Dependency, ModuleFunction, MAX_DEPENDENCIES};

use crate::profile::{Profile, MAX_SLOTS};
use crate::storage::{self, FlashError, Loc, Storage};

/// Magic number at the start of a state record.
pub const MAGIC: u32 = 0x5445_524E;
/// Version of the record layout.
pub const LAYOUT_VERSION: u16 = 1;
/// Length of a state record in bytes.
pub const RECORD_LEN: usize = 2048;
/// The most modules one update may carry.
pub const MAX_UPDATE_MODULES: usize = 4;
const MODULE_RECORD_LEN: usize = 68;
/// Offset of the attempt id in the record.
const ATTEMPT_AT: usize = 1252;
/// Offset of the journaled erase in the record.
const PENDING_AT: usize = 1260;
/// Where the staged modules' transfers are recorded (see the layout).
const TRANSFERS_AT: usize = 1864;
const TRANSFER_LEN: usize = 44;
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// What the device knows about one module: enough to verify it and check dependencies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleRecord {
    /// Module function.
    pub function: ModuleFunction,
    /// Module index.
    pub index: u8,
    /// Module version.
    pub version: u32,
    /// Length in bytes.
    pub size: u32,
    /// SHA-256 of the module's bytes, from the signed manifest.
    pub sha256: [u8; 32],
    /// Declared dependencies.
    pub dependencies: [Option<Dependency>; MAX_DEPENDENCIES],
}

impl ModuleRecord {
    /// The record of a module listed in a verified manifest.
    pub fn from_entry(entry: &ModuleEntry) -> Self {
        ModuleRecord {
            function: entry.function,
            index: entry.index,
            version: entry.version,
            size: entry.size,
            sha256: entry.sha256,
            dependencies: entry.dependencies,
        }
    }
}

/// A copy of a replaced module kept in the exchange area for rollback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backup {
    /// The module copied.
    pub module: ModuleRecord,
    /// Its offset within the exchange area.
    pub offset: u32,
}

/// One module of an update, staged in the exchange area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StagedModule {
    /// The slot it will be installed into.
    pub slot: u8,
    /// Its offset within the exchange area (modules are packed on block boundaries).
    pub offset: u32,
    /// What it is.
    pub module: ModuleRecord,
    /// How its bytes arrive: as themselves, or as a patch rebuilt into `offset`.
    pub transfer: StagedTransfer,
}

impl StagedModule {
    /// Bytes received for it: the module's size, or its patch's length.
    pub const fn transfer_len(&self) -> u32 {
        match self.transfer {
            StagedTransfer::Raw => self.module.size,
            StagedTransfer::Patch { length, .. } => length,
        }
    }

    /// Offset within the exchange area where its received bytes go.
    pub const fn transfer_offset(&self) -> u32 {
        match self.transfer {
            StagedTransfer::Raw => self.offset,
            StagedTransfer::Patch { at, .. } => at,
        }
    }
}

/// How a staged module's bytes arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StagedTransfer {
    /// Block by block, into the module's place in the exchange area.
    Raw,
    /// As a patch (`tern-delta`), received into the exchange area at `at` and applied into
    /// the module's place once every block arrived.
    Patch {
        /// SHA-256 of the installed module it applies to; `None` for a compressed image.
        source: Option<[u8; 32]>,
        /// Patch length in bytes.
        length: u32,
        /// Offset of the patch within the exchange area (after every module's place).
        at: u32,
    },
}

/// Where an update stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdatePhase {
    /// No update.
    Idle,
    /// Offer accepted; staging and progress areas are being erased.
    Preparing,
    /// Blocks are being received.
    Receiving,
    /// Every module received and verified: pending installation at the next boot.
    Staged,
}

/// The install job in progress (the journal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// Install the staged update; `keep_rollback` when backups of the replaced modules
    /// are copied to the exchange area first.
    Update {
        /// Whether rollback copies are made.
        keep_rollback: bool,
    },
    /// Copy the rollback copies back into their slots.
    Rollback,
    /// Copy the factory image into the application slot.
    FactoryRestore,
}

/// An install job and how many of its copy steps are complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Job {
    /// What is being installed.
    pub kind: JobKind,
    /// Number of completed steps.
    pub step: u8,
}

/// Why the application is on test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A new update was installed.
    Update,
    /// The previous modules were restored.
    Rollback,
    /// The factory image was restored.
    Factory,
}

/// Why the application is no longer started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisableReason {
    /// The factory image failed its test boot too.
    FactoryFailed,
    /// The application failed and there is neither a rollback copy nor a factory image.
    NoFallback,
}

/// Test-boot accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootState {
    /// The application is confirmed good; counts consecutive panic/watchdog resets.
    Confirmed {
        /// Consecutive fault resets.
        fault_resets: u8,
    },
    /// The application is on test and must be confirmed.
    Testing {
        /// What put it there.
        origin: Origin,
        /// Boots so far without confirmation, after a reset the application could have
        /// caused (software, panic, watchdog).
        attempts: u8,
        /// Power-on resets during the test (a power cut says nothing about the
        /// application, so these count against a separate, higher limit:
        /// [`MAX_TEST_POWER_CYCLES`]).
        power_cycles: u8,
    },
    /// The application is not started (safe mode) until an update arrives.
    Disabled(DisableReason),
}

/// The result of the last update attempt, as the device reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateResult {
    /// No update attempted yet.
    None,
    /// An update is staged, waiting for the reboot that installs it.
    Staged,
    /// The update is installed and on test.
    Installed,
    /// The update was confirmed.
    Confirmed,
    /// Rolled back: the application was not confirmed within the allowed boots.
    RolledBackUnconfirmed,
    /// Rolled back: the application kept resetting (panic or watchdog).
    RolledBackFaults,
    /// Rolled back: the installed application failed verification.
    RolledBackInvalid,
    /// The factory image was restored because no rollback copy was usable.
    FactoryRestored,
    /// The factory image was restored on request.
    FactoryRestoredOnRequest,
    /// A staged module did not match its signed hash when received, or a copy source (a
    /// staged module, a rollback copy, the factory image) no longer did when the boot
    /// manager was about to install it: the job was abandoned before erasing anything.
    VerifyFailed,
    /// The update was cancelled.
    Cancelled,
    /// A patch could not be applied (damaged, made for another source, or its result did
    /// not match the signed hash); nothing was installed.
    PatchFailed,
}

impl UpdateResult {
    /// The numeric code stored on flash and reported to the server.
    pub const fn code(self) -> u8 {
        match self {
            UpdateResult::None => 0,
            UpdateResult::Staged => 1,
            UpdateResult::Installed => 2,
            UpdateResult::Confirmed => 3,
            UpdateResult::RolledBackUnconfirmed => 4,
            UpdateResult::RolledBackFaults => 5,
            UpdateResult::RolledBackInvalid => 6,
            UpdateResult::FactoryRestored => 7,
            UpdateResult::FactoryRestoredOnRequest => 8,
            UpdateResult::VerifyFailed => 9,
            UpdateResult::Cancelled => 10,
            UpdateResult::PatchFailed => 11,
        }
    }

    /// Inverse of [`UpdateResult::code`].
    pub const fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => UpdateResult::None,
            1 => UpdateResult::Staged,
            2 => UpdateResult::Installed,
            3 => UpdateResult::Confirmed,
            4 => UpdateResult::RolledBackUnconfirmed,
            5 => UpdateResult::RolledBackFaults,
            6 => UpdateResult::RolledBackInvalid,
            7 => UpdateResult::FactoryRestored,
            8 => UpdateResult::FactoryRestoredOnRequest,
            9 => UpdateResult::VerifyFailed,
            10 => UpdateResult::Cancelled,
            11 => UpdateResult::PatchFailed,
            _ => return None,
        })
    }
}

/// The whole persistent device state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceState {
    /// Sequence number of the record this state was read from or last written as.
    pub sequence: u32,
    /// Highest security counter installed; offers below it are refused.
    pub security_counter: u64,
    /// What each slot (by profile slot number) holds.
    pub installed: [Option<ModuleRecord>; MAX_SLOTS],
    /// Rollback copies per slot.
    pub rollback: [Option<Backup>; MAX_SLOTS],
    /// The factory image, if one was provisioned.
    pub factory: Option<ModuleRecord>,
    /// Update phase.
    pub phase: UpdatePhase,
    /// Security counter of the staged update.
    pub update_counter: u64,
    /// Number of staged modules.
    pub staged_count: u8,
    /// Staged modules, in install order.
    pub staged: [Option<StagedModule>; MAX_UPDATE_MODULES],
    /// The install job in progress.
    pub job: Option<Job>,
    /// Test-boot accounting.
    pub boot: BootState,
    /// A factory restore was requested and runs at the next boot.
    pub factory_requested: bool,
    /// The next boot starts safe mode (a one-shot command).
    pub safe_mode_requested: bool,
    /// Result of the last update attempt.
    pub last_result: UpdateResult,
    /// The server's attempt id of the last accepted offer (what is staged, installed or
    /// was last tried), if the offer carried one.
    pub attempt: Option<u64>,
    /// An erase that was started and must be finished before the range is used (the
    /// journal of the agent's sector repair): redone by the boot manager after a reset.
    pub pending_erase: Option<PendingErase>,
}

/// A journaled erase: `[from, to)` of flash device `dev`, whole sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingErase {
    /// Flash device number.
    pub dev: u8,
    /// First byte (a sector boundary).
    pub from: u32,
    /// One past the last byte (a sector boundary).
    pub to: u32,
}

/// Power-on resets a test boot survives before it counts as failed: high enough that
/// power cuts during a test boot (the explorer's multi-fault runs) never fail a good
/// application, finite so that an application that browns out the device is still rolled
/// back.
pub const MAX_TEST_POWER_CYCLES: u8 = 16;

/// Why a state record could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// Wrong magic (erased or foreign data).
    BadMagic,
    /// A layout version this code does not read.
    UnsupportedLayout(u16),
    /// The CRC does not match: a torn or corrupted record.
    BadCrc,
    /// A field holds a value outside its range; names the field.
    BadField(&'static str),
    /// The buffer is shorter than a record.
    Truncated,
}

impl DeviceState {
    /// A state with nothing installed, nothing staged and the application confirmed.
    pub const fn empty() -> Self {
        DeviceState {
            sequence: 0,
            security_counter: 0,
            installed: [None; MAX_SLOTS],
            rollback: [None; MAX_SLOTS],
            factory: None,
            phase: UpdatePhase::Idle,
            update_counter: 0,
            staged_count: 0,
            staged: [None; MAX_UPDATE_MODULES],
            job: None,
            boot: BootState::Confirmed { fault_resets: 0 },
            factory_requested: false,
            safe_mode_requested: false,
            last_result: UpdateResult::None,
            attempt: None,
            pending_erase: None,
        }
    }

    /// The staged modules.
    pub fn staged(&self) -> impl Iterator<Item = &StagedModule> {
        self.staged.iter().take(self.staged_count as usize).flatten()
    }

    /// Encodes the record (see the module docs for the layout).
    pub fn encode(&self, out: &mut [u8; RECORD_LEN]) {
        out.fill(0);
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4..6].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
        out[8..12].copy_from_slice(&self.sequence.to_le_bytes());
        out[12..20].copy_from_slice(&self.security_counter.to_le_bytes());
        out[20] = match self.phase {
            UpdatePhase::Idle => 0,
            UpdatePhase::Preparing => 1,
            UpdatePhase::Receiving => 2,
            UpdatePhase::Staged => 3,
        };
        out[21] = self.staged_count;
        let (job, step) = match self.job {
            None => (0, 0),
            Some(Job { kind: JobKind::Update { keep_rollback: false }, step }) => (1, step),
            Some(Job { kind: JobKind::Update { keep_rollback: true }, step }) => (2, step),
            Some(Job { kind: JobKind::Rollback, step }) => (3, step),
            Some(Job { kind: JobKind::FactoryRestore, step }) => (4, step),
        };
        out[22] = job;
        out[23] = step;
        out[24..32].copy_from_slice(&self.update_counter.to_le_bytes());
        let (kind, detail, count) = match self.boot {
            BootState::Confirmed { fault_resets } => (0, 0, fault_resets),
            BootState::Testing { origin, attempts, .. } => (
                1,
                match origin {
                    Origin::Update => 0,
                    Origin::Rollback => 1,
                    Origin::Factory => 2,
                },
                attempts,
            ),
            BootState::Disabled(reason) => (
                2,
                match reason {
                    DisableReason::FactoryFailed => 0,
                    DisableReason::NoFallback => 1,
                },
                0,
            ),
        };
        out[32] = kind;
        out[33] = detail;
        out[34] = count;
        out[37] = match self.boot {
            BootState::Testing { power_cycles, .. } => power_cycles,
            _ => 0,
        };
        if let Some(e) = self.pending_erase {
            out[PENDING_AT] = e.dev;
            out[PENDING_AT + 4..PENDING_AT + 8].copy_from_slice(&e.from.to_le_bytes());
            out[PENDING_AT + 8..PENDING_AT + 12].copy_from_slice(&e.to.to_le_bytes());
        }
        out[35] = u8::from(self.factory_requested)
            | u8::from(self.safe_mode_requested) << 1
            | u8::from(self.attempt.is_some()) << 2
            | u8::from(self.pending_erase.is_some()) << 3;
        out[ATTEMPT_AT..ATTEMPT_AT + 8].copy_from_slice(&self.attempt.unwrap_or(0).to_le_bytes());
        out[36] = self.last_result.code();
        for (i, m) in self.installed.iter().enumerate() {
            encode_module(m.as_ref(), &mut out[40 + i * 68..][..MODULE_RECORD_LEN]);
        }
        for (i, b) in self.rollback.iter().enumerate() {
            let at = 448 + i * 72;
            encode_module(b.as_ref().map(|b| &b.module), &mut out[at..][..MODULE_RECORD_LEN]);
            let offset = b.as_ref().map_or(0, |b| b.offset);
            out[at + 68..at + 72].copy_from_slice(&offset.to_le_bytes());
        }
        encode_module(self.factory.as_ref(), &mut out[880..][..MODULE_RECORD_LEN]);
        for (i, s) in self.staged.iter().enumerate() {
            let at = 948 + i * 76;
            if let Some(s) = s {
                out[at] = s.slot;
                out[at + 4..at + 8].copy_from_slice(&s.offset.to_le_bytes());
                encode_module(Some(&s.module), &mut out[at + 8..][..MODULE_RECORD_LEN]);
                if let StagedTransfer::Patch { source, length, at } = s.transfer {
                    let t = &mut out[TRANSFERS_AT + i * TRANSFER_LEN..][..TRANSFER_LEN];
                    t[0] = if source.is_some() { 1 } else { 2 };
                    t[4..8].copy_from_slice(&length.to_le_bytes());
                    t[8..12].copy_from_slice(&at.to_le_bytes());
                    t[12..44].copy_from_slice(&source.unwrap_or([0; 32]));
                }
            }
        }
        let crc = CRC.checksum(&out[..RECORD_LEN - 4]);
        out[RECORD_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes a record. Never panics: any input is either a valid state or an error.
    /// This is a fuzz entry point.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let rec: &[u8; RECORD_LEN] =
            bytes.get(..RECORD_LEN).and_then(|b| b.try_into().ok()).ok_or(RecordError::Truncated)?;
        if le32(rec, 0) != MAGIC {
            return Err(RecordError::BadMagic);
        }
        let layout = u16::from_le_bytes([rec[4], rec[5]]);
        if layout != LAYOUT_VERSION {
            return Err(RecordError::UnsupportedLayout(layout));
        }
        if CRC.checksum(&rec[..RECORD_LEN - 4]) != le32(rec, RECORD_LEN - 4) {
            return Err(RecordError::BadCrc);
        }
        let phase = match rec[20] {
            0 => UpdatePhase::Idle,
            1 => UpdatePhase::Preparing,
            2 => UpdatePhase::Receiving,
            3 => UpdatePhase::Staged,
            _ => return Err(RecordError::BadField("update phase")),
        };
        let staged_count = rec[21];
        if staged_count as usize > MAX_UPDATE_MODULES {
            return Err(RecordError::BadField("staged count"));
        }
        let step = rec[23];
        let job = match rec[22] {
            0 => None,
            1 => Some(Job { kind: JobKind::Update { keep_rollback: false }, step }),
            2 => Some(Job { kind: JobKind::Update { keep_rollback: true }, step }),
            3 => Some(Job { kind: JobKind::Rollback, step }),
            4 => Some(Job { kind: JobKind::FactoryRestore, step }),
            _ => return Err(RecordError::BadField("job")),
        };
        let boot = match (rec[32], rec[33]) {
            (0, _) => BootState::Confirmed { fault_resets: rec[34] },
            (1, origin) => BootState::Testing {
                origin: match origin {
                    0 => Origin::Update,
                    1 => Origin::Rollback,
                    2 => Origin::Factory,
                    _ => return Err(RecordError::BadField("test origin")),
                },
                attempts: rec[34],
                power_cycles: rec[37],
            },
            (2, 0) => BootState::Disabled(DisableReason::FactoryFailed),
            (2, 1) => BootState::Disabled(DisableReason::NoFallback),
            _ => return Err(RecordError::BadField("boot state")),
        };
        let last_result = UpdateResult::from_code(rec[36]).ok_or(RecordError::BadField("last result"))?;
        let mut installed = [None; MAX_SLOTS];
        for (i, m) in installed.iter_mut().enumerate() {
            *m = decode_module(&rec[40 + i * 68..][..MODULE_RECORD_LEN])?;
        }
        let mut rollback = [None; MAX_SLOTS];
        for (i, b) in rollback.iter_mut().enumerate() {
            let at = 448 + i * 72;
            *b = decode_module(&rec[at..][..MODULE_RECORD_LEN])?
                .map(|module| Backup { module, offset: le32(rec, at + 68) });
        }
        let factory = decode_module(&rec[880..][..MODULE_RECORD_LEN])?;
        let mut staged = [None; MAX_UPDATE_MODULES];
        for (i, s) in staged.iter_mut().enumerate().take(staged_count as usize) {
            let at = 948 + i * 76;
            let module = decode_module(&rec[at + 8..][..MODULE_RECORD_LEN])?.ok_or(RecordError::BadField("staged"))?;
            if rec[at] as usize >= MAX_SLOTS {
                return Err(RecordError::BadField("staged slot"));
            }
            let t = &rec[TRANSFERS_AT + i * TRANSFER_LEN..][..TRANSFER_LEN];
            let mut source = [0u8; 32];
            source.copy_from_slice(&t[12..44]);
            let (length, at_patch) = (le32(t, 4), le32(t, 8));
            let transfer = match t[0] {
                0 => StagedTransfer::Raw,
                1 => StagedTransfer::Patch { source: Some(source), length, at: at_patch },
                2 => StagedTransfer::Patch { source: None, length, at: at_patch },
                _ => return Err(RecordError::BadField("staged transfer")),
            };
            *s = Some(StagedModule { slot: rec[at], offset: le32(rec, at + 4), module, transfer });
        }
        Ok(DeviceState {
            sequence: le32(rec, 8),
            security_counter: u64::from_le_bytes(rec[12..20].try_into().map_err(|_| RecordError::Truncated)?),
            installed,
            rollback,
            factory,
            phase,
            update_counter: u64::from_le_bytes(rec[24..32].try_into().map_err(|_| RecordError::Truncated)?),
            staged_count,
            staged,
            job,
            boot,
            factory_requested: rec[35] & 1 != 0,
            safe_mode_requested: rec[35] & 2 != 0,
            last_result,
            pending_erase: (rec[35] & 8 != 0).then(|| PendingErase {
                dev: rec[PENDING_AT],
                from: le32(rec, PENDING_AT + 4),
                to: le32(rec, PENDING_AT + 8),
            }),
            attempt: (rec[35] & 4 != 0)
                .then(|| rec[ATTEMPT_AT..ATTEMPT_AT + 8].try_into().map(u64::from_le_bytes))
                .transpose()
                .map_err(|_| RecordError::Truncated)?,
        })
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn encode_module(m: Option<&ModuleRecord>, out: &mut [u8]) {
    let Some(m) = m else { return };
    out[0] = m.function.code();
    out[1] = m.index;
    let mut count = 0;
    for (i, dep) in m.dependencies.iter().flatten().enumerate() {
        let at = 44 + i * 6;
        out[at] = dep.function.code();
        out[at + 1] = dep.index;
        out[at + 2..at + 6].copy_from_slice(&dep.version.to_le_bytes());
        count += 1;
    }
    out[2] = count;
    out[4..8].copy_from_slice(&m.version.to_le_bytes());
    out[8..12].copy_from_slice(&m.size.to_le_bytes());
    out[12..44].copy_from_slice(&m.sha256);
}

fn decode_module(b: &[u8]) -> Result<Option<ModuleRecord>, RecordError> {
    if b[0] == 0 {
        return Ok(None);
    }
    let count = b[2] as usize;
    if count > MAX_DEPENDENCIES {
        return Err(RecordError::BadField("dependency count"));
    }
    let mut dependencies = [None; MAX_DEPENDENCIES];
    for (i, d) in dependencies.iter_mut().enumerate().take(count) {
        let at = 44 + i * 6;
        *d =
            Some(Dependency { function: ModuleFunction::from_code(b[at]), index: b[at + 1], version: le32(b, at + 2) });
    }
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(&b[12..44]);
    Ok(Some(ModuleRecord {
        function: ModuleFunction::from_code(b[0]),
        index: b[1],
        version: le32(b, 4),
        size: le32(b, 8),
        sha256,
        dependencies,
    }))
}

/// The state as loaded from flash, with where its record is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The state.
    pub state: DeviceState,
    /// The bank (0 or 1) holding the current record.
    pub bank: u8,
    /// The record's position within its bank (in units of [`RECORD_LEN`]).
    pub position: u32,
    /// Writes of the current save that did not read back (see [`Stored::save`]).
    retries: u32,
}

/// Record positions in a bank.
fn positions(bank: &crate::profile::Region) -> u32 {
    bank.size / RECORD_LEN as u32
}

/// Why the state could not be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// Neither bank holds a valid record: the device was never provisioned.
    NoState,
    /// The profile is inconsistent, or the record is valid but does not fit it (slots,
    /// sizes or offsets out of range): it was written for another layout.
    WrongLayout,
    /// Reading flash failed.
    Flash(FlashError),
}

/// Loads the newest valid record from the two banks.
pub fn load<S: Storage>(s: &mut S, profile: &Profile) -> Result<Stored, LoadError> {
    if profile.check().is_err() {
        return Err(LoadError::WrongLayout);
    }
    let mut best: Option<Stored> = None;
    let mut buf = [0u8; RECORD_LEN];
    for (bank, region) in profile.state_banks.iter().enumerate() {
        for position in 0..positions(region) {
            let at = region.offset + position * RECORD_LEN as u32;
            s.read(region.dev, at, &mut buf).map_err(LoadError::Flash)?;
            // A record whose sequence is not above the best so far cannot win, valid or
            // not: skip checking it.
            if best.as_ref().is_some_and(|b| le32(&buf, 8) <= b.state.sequence) {
                continue;
            }
            if let Ok(state) = DeviceState::decode(&buf) {
                if best.as_ref().is_none_or(|b| state.sequence > b.state.sequence) {
                    best = Some(Stored { state, bank: bank as u8, position, retries: 0 });
                }
            }
        }
    }
    let best = best.ok_or(LoadError::NoState)?;
    if !best.state.fits(profile) {
        return Err(LoadError::WrongLayout);
    }
    Ok(best)
}

impl DeviceState {
    /// Whether every slot number, size and offset in the state lies within `profile`, so
    /// that no address computed from it can overflow or leave its region.
    pub fn fits(&self, profile: &Profile) -> bool {
        let slots = profile.slots.len();
        let in_slot = |slot: usize, size: u32| profile.slots.get(slot).is_some_and(|s| size <= s.region.size);
        let in_exchange =
            |offset: u32, size: u32| offset.checked_add(size).is_some_and(|end| end <= profile.exchange.size);
        self.installed.iter().enumerate().all(|(i, m)| m.is_none_or(|m| in_slot(i, m.size)))
            && self
                .rollback
                .iter()
                .enumerate()
                .all(|(i, b)| b.is_none_or(|b| in_slot(i, b.module.size) && in_exchange(b.offset, b.module.size)))
            && self.factory.is_none_or(|f| {
                f.size <= profile.factory.size && profile.app_slot().is_some_and(|a| in_slot(a, f.size))
            })
            && self.staged().all(|m| {
                (m.slot as usize) < slots
                    && in_slot(m.slot as usize, m.module.size)
                    && in_exchange(m.offset, m.module.size)
            })
            && self.staged().count() == self.staged_count as usize
            && self.pending_erase.is_none_or(|e| {
                // Only the exchange area is ever erased under the journal.
                let ex = profile.exchange;
                e.dev == ex.dev && ex.offset <= e.from && e.from < e.to && e.to <= ex.end()
            })
            && {
                let ws = profile.device(profile.progress.dev).map_or(u32::MAX, |d| d.write_size);
                let blocks: u64 =
                    self.staged().map(|m| u64::from(m.module.size.div_ceil(crate::block::BLOCK_SIZE))).sum();
                blocks * u64::from(crate::agent::MARKER_UNITS) * u64::from(ws) <= u64::from(profile.progress.size)
            }
    }
}

impl Stored {
    /// Writes `self.state` with the next sequence number at the next erased position of
    /// the current bank, or, when the bank is full, at the start of the other bank after
    /// erasing it. Atomic with respect to power loss (see the module docs).
    pub fn save<S: Storage>(&mut self, s: &mut S, profile: &Profile) -> Result<(), FlashError> {
        let bank = profile.state_banks[(self.bank & 1) as usize];
        let mut next = None;
        for position in self.position.saturating_add(1)..positions(&bank) {
            let at = Loc { dev: bank.dev, offset: bank.offset + position * RECORD_LEN as u32 };
            if storage::is_erased(s, at, RECORD_LEN as u32)? {
                next = Some((self.bank & 1, position));
                break;
            }
        }
        let (target, position) = match next {
            Some(next) => next,
            None => {
                let other = 1 - (self.bank & 1);
                let region = profile.state_banks[other as usize];
                s.erase(region.dev, region.offset, region.end())?;
                (other, 0)
            }
        };
        let region = profile.state_banks[target as usize];
        self.state.sequence = self.state.sequence.wrapping_add(1);
        let mut buf = [0u8; RECORD_LEN];
        self.state.encode(&mut buf);
        let at = Loc { dev: region.dev, offset: region.offset + position * RECORD_LEN as u32 };
        // An erase that failed silently leaves the position not erased: writing there would
        // only produce a bad record. Move on instead (the position counts as used).
        if storage::is_erased(s, at, RECORD_LEN as u32)? {
            storage::program(s, profile, at, &buf)?;
        }
        self.bank = target;
        self.position = position;
        // A program that failed silently leaves a record that does not read back: the
        // state is written again at the next position (bounded by the banks' positions:
        // flash that keeps failing ends in an error).
        if !storage::equals(s, at, &buf)? {
            self.state.sequence = self.state.sequence.wrapping_sub(1);
            self.retries += 1;
            if self.retries > 2 * positions(&profile.state_banks[0]).max(positions(&profile.state_banks[1])) {
                self.retries = 0;
                return Err(FlashError::Other);
            }
            return self.save(s, profile);
        }
        self.retries = 0;
        Ok(())
    }

    /// Erases `[from, to)` of device `dev` (whole sectors) under the journal: the erase is
    /// recorded in the state before it starts and cleared after it completed, and the boot
    /// manager redoes a recorded one after a reset. An erase cut by a power loss may
    /// leave cells that read erased but are not, so it is never trusted to have finished.
    pub fn journaled_erase<S: Storage>(
        &mut self,
        s: &mut S,
        profile: &Profile,
        dev: u8,
        from: u32,
        to: u32,
    ) -> Result<(), FlashError> {
        self.state.pending_erase = Some(PendingErase { dev, from, to });
        self.save(s, profile)?;
        self.finish_erase(s, profile)
    }

    /// Finishes the journaled erase recorded in the state, if any (see
    /// [`Stored::journaled_erase`]).
    pub fn finish_erase<S: Storage>(&mut self, s: &mut S, profile: &Profile) -> Result<(), FlashError> {
        let Some(e) = self.state.pending_erase else { return Ok(()) };
        s.erase(e.dev, e.from, e.to)?;
        // An erase that reports success but leaves bits at 0 stays pending (redone).
        if !storage::is_erased(s, storage::Loc { dev: e.dev, offset: e.from }, e.to - e.from)? {
            return Err(FlashError::Other);
        }
        self.state.pending_erase = None;
        self.save(s, profile)
    }
}

/// Writes `state` as the first record of a freshly erased device (factory provisioning).
pub fn provision<S: Storage>(s: &mut S, profile: &Profile, state: &DeviceState) -> Result<Stored, FlashError> {
    for region in &profile.state_banks {
        s.erase(region.dev, region.offset, region.end())?;
    }
    // The last position of bank 1 is "current" so that the first save lands in bank 0
    // (after erasing it again: provisioning may erase twice, it runs once).
    let mut stored = Stored { state: state.clone(), bank: 1, position: u32::MAX - 1, retries: 0 };
    stored.save(s, profile)?;
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(function: ModuleFunction, version: u32) -> ModuleRecord {
        ModuleRecord {
            function,
            index: 1,
            version,
            size: 1234,
            sha256: [version as u8; 32],
            dependencies: [
                Some(Dependency { function: ModuleFunction::SystemPart, index: 2, version: 7 }),
                None,
                None,
                None,
            ],
        }
    }

    fn populated() -> DeviceState {
        let mut st = DeviceState::empty();
        st.sequence = 41;
        st.security_counter = 9;
        st.installed[0] = Some(module(ModuleFunction::Bootloader, 3));
        st.installed[3] = Some(module(ModuleFunction::UserPart, 4));
        st.rollback[3] = Some(Backup { module: module(ModuleFunction::UserPart, 3), offset: 0x2000 });
        st.factory = Some(module(ModuleFunction::UserPart, 1));
        st.phase = UpdatePhase::Receiving;
        st.update_counter = 10;
        st.staged_count = 1;
        st.staged[0] = Some(StagedModule {
            slot: 3,
            offset: 0,
            module: module(ModuleFunction::UserPart, 5),
            transfer: StagedTransfer::Patch { source: Some([0xA5; 32]), length: 3000, at: 0x2_0000 },
        });
        st.staged[1] = Some(StagedModule {
            slot: 2,
            offset: 0x1_0000,
            module: module(ModuleFunction::SystemPart, 2),
            transfer: StagedTransfer::Patch { source: None, length: 9000, at: 0x2_1000 },
        });
        st.staged_count = 2;
        st.job = Some(Job { kind: JobKind::Update { keep_rollback: true }, step: 2 });
        st.boot = BootState::Testing { origin: Origin::Rollback, attempts: 2, power_cycles: 5 };
        st.pending_erase = Some(PendingErase { dev: 1, from: 0x1_0000, to: 0x1_1000 });
        st.factory_requested = true;
        st.safe_mode_requested = true;
        st.last_result = UpdateResult::RolledBackFaults;
        st.attempt = Some(0x0102_0304_0506_0708);
        st
    }

    #[test]
    fn record_round_trips() {
        for st in [DeviceState::empty(), populated()] {
            let mut buf = [0u8; RECORD_LEN];
            st.encode(&mut buf);
            assert_eq!(DeviceState::decode(&buf), Ok(st));
        }
    }

    #[test]
    fn damaged_records_are_rejected() {
        let mut buf = [0u8; RECORD_LEN];
        populated().encode(&mut buf);
        assert_eq!(DeviceState::decode(&buf[..RECORD_LEN - 1]), Err(RecordError::Truncated));
        assert_eq!(DeviceState::decode(&[0xFF; RECORD_LEN]), Err(RecordError::BadMagic));
        for i in (0..RECORD_LEN).step_by(7) {
            let mut bad = buf;
            bad[i] ^= 0x10;
            assert!(DeviceState::decode(&bad).is_err(), "flipped byte {i} accepted");
        }
    }

    /// A record written before the attempt id existed (reserved bytes zero) reads as no
    /// attempt; attempt id 0 is kept apart from none by its flag.
    #[test]
    fn attempt_id_is_optional() {
        let mut buf = [0u8; RECORD_LEN];
        let mut st = populated();
        st.attempt = None;
        st.encode(&mut buf);
        assert_eq!(buf[35] & 4, 0);
        assert!(buf[ATTEMPT_AT..ATTEMPT_AT + 8].iter().all(|&b| b == 0), "an absent id leaves the bytes reserved");
        assert_eq!(DeviceState::decode(&buf).map(|s| s.attempt), Ok(None));
        st.attempt = Some(0);
        st.encode(&mut buf);
        assert_eq!(DeviceState::decode(&buf).map(|s| s.attempt), Ok(Some(0)));
    }

    #[test]
    fn result_codes_round_trip() {
        for code in 0..=255u8 {
            if let Some(r) = UpdateResult::from_code(code) {
                assert_eq!(r.code(), code);
            }
        }
    }
}
