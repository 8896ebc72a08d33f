//! The update agent: accepts a signed offer, receives its modules in blocks into the
//! exchange area, resumes after resets, verifies, and marks the update pending.
//!
//! # Block progress markers
//!
//! Each block of each staged module owns [`MARKER_UNITS`] write units (one write-size word
//! each) in the profile's progress area, erased when the offer is accepted. Units are
//! programmed in order; the number of programmed (non-erased) leading units is odd when
//! the block is received. A block's data is always programmed *before* its marker, so a
//! marker that is programmed — even torn — proves the data is complete.
//!
//! | state | unit 0 | unit 1 | unit 2 | units 3–7 |
//! |---|---|---|---|---|
//! | missing | erased | erased | erased | erased |
//! | received | `00…` | erased | erased | erased |
//! | discarded (sector repaired) | `00…` | `00…` | erased | erased |
//! | received again | `00…` | `00…` | `00…` | erased |
//!
//! Eight units let a block survive three repairs; should a fourth be needed, the agent
//! restarts the transfer from scratch (erasing markers and staging) rather than fail.
//!
//! If a block arrives for an unmarked position whose data area is neither erased nor
//! already equal to the block (a write torn by a power cut), the sector holding it is
//! repaired: the received blocks in that sector are marked discarded, the sector is
//! erased, and those blocks are requested again. The transfer therefore loses at most one
//! erase sector of progress per interruption, never the whole transfer.

use core::cell::RefCell;

use ed25519_dalek::VerifyingKey;
use tern_delta::{Applier, ApplyError, NewImage, OldImage, Status};
use tern_image::manifest::{self, Kind, ModuleEntry, SignedDocument};
use tern_image::model::{Dependency, ModuleFunction};
use tern_proto::{Capacity, Transfer};

use crate::block::{Block, BLOCK_SIZE};
use crate::profile::{Profile, MAX_SLOTS};
use crate::state::{
    self, BootState, DeviceState, LoadError, ModuleRecord, StagedModule, StagedTransfer, Stored, UpdatePhase,
    UpdateResult, MAX_UPDATE_MODULES,
};
use crate::storage::{self, FlashError, Loc, Storage};

/// Write units per block in the progress area.
pub const MARKER_UNITS: u32 = 8;

/// Why an offer was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfferError {
    /// The signed document is malformed, unsigned by a trusted key, or badly signed.
    Manifest(manifest::Error),
    /// The update targets another platform.
    WrongPlatform {
        /// This device's platform.
        device: u16,
        /// The update's platform.
        offer: u16,
    },
    /// The security counter would go backwards.
    Downgrade {
        /// This device's counter.
        device: u64,
        /// The update's counter.
        offer: u64,
    },
    /// No slot on this platform holds a module of this function and index.
    NoSlot(ModuleFunction, u8),
    /// A module's start address is not its slot's address.
    WrongAddress(ModuleFunction, u8),
    /// A module is empty, larger than its slot, or the update does not fit the exchange
    /// area.
    TooLarge,
    /// More modules than [`MAX_UPDATE_MODULES`], or two for the same slot.
    TooManyModules,
    /// The signed documents do not form one update: no document, a release manifest
    /// together with other documents, or module statements for different platforms or
    /// products.
    MixedDocuments,
    /// The offer selects a module (by SHA-256) that no signed document lists.
    UnsignedModule,
    /// A dependency can never be satisfied on this device by this update.
    UnsatisfiableDependency(Dependency),
    /// A module offered as a delta patch whose source is not the module installed in its
    /// slot (the server's view of the device is stale): the server falls back to the
    /// whole module.
    DeltaSource(ModuleFunction, u8),
    /// An install is staged or in progress; reboot first.
    Busy,
    /// Flash failed.
    Flash(FlashError),
}

impl From<FlashError> for OfferError {
    fn from(e: FlashError) -> Self {
        OfferError::Flash(e)
    }
}

/// Why a block was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockError {
    /// No transfer is in progress.
    NotReceiving,
    /// The module number is not one of the offer's.
    UnknownModule,
    /// The offset is not a multiple of [`BLOCK_SIZE`] or beyond the module.
    BadOffset,
    /// The length is not [`BLOCK_SIZE`] (or the module's remainder for its last block).
    BadLength,
    /// The block's markers were used up by repeated repairs: the agent restarted the
    /// transfer (every block is missing again).
    MarkersExhausted,
    /// Every block arrived but a module's SHA-256 does not match the signed manifest; the
    /// update was dropped.
    VerifyFailed(u8),
    /// Every block arrived but a module's patch could not be applied (damaged, made for
    /// another source, or its result does not hash to the signed SHA-256); the update was
    /// dropped and nothing was installed.
    PatchFailed(u8),
    /// Flash failed.
    Flash(FlashError),
}

impl From<FlashError> for BlockError {
    fn from(e: FlashError) -> Self {
        BlockError::Flash(e)
    }
}

/// How an offer names what it is for, beyond its signed documents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OfferScope<'a> {
    /// The attempt the offer belongs to, recorded in the state record together with the
    /// accepted offer (so the attempt the device reports always matches its flash).
    pub attempt: Option<u64>,
    /// Which of the signed documents' modules to stage, by SHA-256, in install order.
    /// Empty: every module the documents list, in their order.
    pub modules: &'a [[u8; 32]],
    /// How each selected module arrives, in the order of `modules`; missing entries (all,
    /// when empty) are raw.
    pub transfers: &'a [Transfer],
}

/// What an accepted offer looks like to the sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfferAccepted {
    /// Number of modules to transfer.
    pub modules: u8,
    /// Total bytes to receive (module sizes, or patch lengths).
    pub bytes: u32,
    /// The same offer was already in progress: received blocks are kept.
    pub resumed: bool,
}

/// What happened to a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockOutcome {
    /// Stored; more blocks are missing.
    Stored,
    /// Already received; ignored.
    Duplicate,
    /// The last missing block: every module verified, the update is pending installation
    /// at the next boot.
    Complete,
}

/// A block the agent still needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRequest {
    /// Module number in the offer.
    pub module: u8,
    /// Byte offset within the module's transfer (its bytes, or its patch).
    pub offset: u32,
    /// Length in bytes.
    pub len: u32,
}

/// The update agent. Holds the device state in RAM and writes every change through.
pub struct Agent<'k> {
    profile: &'static Profile,
    keys: &'k [VerifyingKey],
    stored: Stored,
    received: u32,
}

fn blocks_of(size: u32) -> u32 {
    size.div_ceil(BLOCK_SIZE)
}

/// What one offer can stage on `profile` (see [`Agent::capacity`]).
pub fn capacity(profile: &Profile) -> Capacity {
    let ws = profile.device(profile.progress.dev).map_or(u32::MAX, |d| d.write_size);
    let marker_blocks = profile.progress.size / MARKER_UNITS.saturating_mul(ws).max(1);
    let exchange_blocks = profile.exchange.size / BLOCK_SIZE;
    Capacity {
        staging_bytes: marker_blocks.min(exchange_blocks).saturating_mul(BLOCK_SIZE),
        max_modules: MAX_UPDATE_MODULES as u8,
        block_size: BLOCK_SIZE,
        patches: true,
        // The link is the port's: the conversation adds what it takes.
        link: None,
    }
}

/// Picks the staged entries out of every `signed` one: those `selection` names by hash,
/// in its order; all of them when the selection is empty. Returns how many were written
/// to `out`.
fn select(
    signed: &[Option<ModuleEntry>],
    selection: &[[u8; 32]],
    out: &mut [Option<ModuleEntry>; MAX_UPDATE_MODULES],
) -> Result<usize, OfferError> {
    if selection.is_empty() {
        for (i, entry) in signed.iter().enumerate() {
            *out.get_mut(i).ok_or(OfferError::TooManyModules)? = *entry;
        }
        return Ok(signed.len());
    }
    for (i, hash) in selection.iter().enumerate() {
        let entry = signed.iter().flatten().find(|e| &e.sha256 == hash).ok_or(OfferError::UnsignedModule)?;
        *out.get_mut(i).ok_or(OfferError::TooManyModules)? = Some(*entry);
    }
    Ok(selection.len())
}

impl<'k> Agent<'k> {
    /// Loads the state and finishes an offer acceptance that a reset interrupted.
    pub fn load<S: Storage>(s: &mut S, profile: &'static Profile, keys: &'k [VerifyingKey]) -> Result<Self, LoadError> {
        let stored = state::load(s, profile)?;
        let mut agent = Agent { profile, keys, stored, received: 0 };
        if agent.stored.state.phase == UpdatePhase::Preparing {
            agent.prepare(s).map_err(LoadError::Flash)?;
        }
        agent.received = agent.count_received(s).map_err(LoadError::Flash)?;
        // Every block arrived but a reset came before the verification was recorded.
        if agent.stored.state.phase == UpdatePhase::Receiving && agent.received == agent.total_blocks() {
            match agent.finish(s) {
                Ok(_) | Err(BlockError::VerifyFailed(_) | BlockError::PatchFailed(_)) => {}
                Err(BlockError::Flash(e)) => return Err(LoadError::Flash(e)),
                Err(_) => return Err(LoadError::Flash(FlashError::Other)),
            }
        }
        Ok(agent)
    }

    /// The current device state (what is installed, staged, on test).
    pub fn state(&self) -> &DeviceState {
        &self.stored.state
    }

    /// The platform profile the agent runs on.
    pub fn profile(&self) -> &'static Profile {
        self.profile
    }

    fn total_blocks(&self) -> u32 {
        self.stored.state.staged().map(|m| blocks_of(m.transfer_len())).sum()
    }

    /// Global block number of block `offset / BLOCK_SIZE` of module `module`'s transfer.
    fn block_number(&self, module: u8, offset: u32) -> u32 {
        self.stored.state.staged().take(module as usize).map(|m| blocks_of(m.transfer_len())).sum::<u32>()
            + offset / BLOCK_SIZE
    }

    fn marker_loc(&self, block: u32, unit: u32) -> Loc {
        let p = self.profile.progress;
        let ws = self.profile.devices[p.dev as usize].write_size;
        Loc { dev: p.dev, offset: p.offset + (block * MARKER_UNITS + unit) * ws }
    }

    /// Number of programmed leading units of a block's marker.
    fn marker_count<S: Storage>(&self, s: &mut S, block: u32) -> Result<u32, FlashError> {
        let ws = self.profile.devices[self.profile.progress.dev as usize].write_size;
        for unit in 0..MARKER_UNITS {
            if storage::is_erased(s, self.marker_loc(block, unit), ws)? {
                return Ok(unit);
            }
        }
        Ok(MARKER_UNITS)
    }

    fn mark<S: Storage>(&self, s: &mut S, block: u32, unit: u32) -> Result<(), BlockError> {
        if unit >= MARKER_UNITS {
            return Err(BlockError::MarkersExhausted);
        }
        let ws = self.profile.devices[self.profile.progress.dev as usize].write_size as usize;
        let zeros = [0u8; 16];
        s.write(self.marker_loc(block, unit).dev, self.marker_loc(block, unit).offset, &zeros[..ws])?;
        Ok(())
    }

    fn count_received<S: Storage>(&self, s: &mut S) -> Result<u32, FlashError> {
        if self.stored.state.phase != UpdatePhase::Receiving {
            return Ok(0);
        }
        let mut n = 0;
        for b in 0..self.total_blocks() {
            if self.marker_count(s, b)? % 2 == 1 {
                n += 1;
            }
        }
        Ok(n)
    }

    /// What one offer can stage on this profile: the module bytes (each rounded up to
    /// [`BLOCK_SIZE`]) that fit both the exchange area and the progress markers, and the
    /// most modules. [`Agent::handle_offer_documents`] refuses exactly what exceeds it.
    pub fn capacity(&self) -> Capacity {
        capacity(self.profile)
    }

    /// Step 1 of an update: an offer of one signed document (a release manifest or a
    /// module statement). See [`Agent::handle_offer_documents`].
    pub fn handle_offer<S: Storage>(&mut self, s: &mut S, signed: &[u8]) -> Result<OfferAccepted, OfferError> {
        self.handle_offer_documents(s, [signed])
    }

    /// Step 1 of an update: an offer of signed documents — one release manifest, or one
    /// module statement per module (a server composes those from its catalog without
    /// holding any key) — staging every module they list, in their order. See
    /// [`Agent::handle_offer_scoped`].
    pub fn handle_offer_documents<'d, S: Storage>(
        &mut self,
        s: &mut S,
        documents: impl IntoIterator<Item = &'d [u8]>,
    ) -> Result<OfferAccepted, OfferError> {
        self.handle_offer_scoped(s, documents, OfferScope::default())
    }

    /// Step 1 of an update: an offer of signed documents, staging the modules
    /// `scope.modules` selects (all when it is empty or lists every module in order), in
    /// the selection's order: a server sends only what the device does not already run,
    /// and splits a release that does not fit into several offers.
    ///
    /// Checks, in order: every document signed by a trusted key and all of one kind,
    /// platform and product, every selected module listed by a signed document,
    /// platform, security counter (the highest of the documents), that every staged
    /// module has a slot at its start address and fits, that dependencies can be
    /// satisfied after the stage, and that the stage fits [`Agent::capacity`]. Then
    /// records the offer (with `scope.attempt`) and erases the staging and progress
    /// areas. An offer identical to the one in progress resumes it. This is a fuzz entry
    /// point (any bytes as documents).
    pub fn handle_offer_scoped<'d, S: Storage>(
        &mut self,
        s: &mut S,
        documents: impl IntoIterator<Item = &'d [u8]>,
        scope: OfferScope<'_>,
    ) -> Result<OfferAccepted, OfferError> {
        let st = &self.stored.state;
        if st.job.is_some() || st.phase == UpdatePhase::Staged {
            return Err(OfferError::Busy);
        }
        // Every module the documents sign, before the selection.
        let mut signed = [None; manifest::MAX_MODULES];
        let mut signed_count = 0usize;
        let mut first: Option<(Kind, u16, u32)> = None;
        let mut security_counter = 0u64;
        for document in documents {
            let manifest =
                SignedDocument::parse(document).and_then(|d| d.verify(self.keys)).map_err(OfferError::Manifest)?;
            let identity = (manifest.kind, manifest.platform_id, manifest.product_id);
            match first {
                None => first = Some(identity),
                Some(seen) if seen != identity || manifest.kind == Kind::Release => {
                    return Err(OfferError::MixedDocuments)
                }
                Some(_) => {}
            }
            security_counter = security_counter.max(manifest.security_counter);
            for entry in manifest.modules() {
                *signed.get_mut(signed_count).ok_or(OfferError::TooManyModules)? = Some(*entry);
                signed_count += 1;
            }
        }
        let Some((_, platform_id, _)) = first else { return Err(OfferError::MixedDocuments) };
        let signed = &signed[..signed_count];
        let mut entries = [None; MAX_UPDATE_MODULES];
        let count = select(signed, scope.modules, &mut entries)?;
        if platform_id != self.profile.platform_id {
            return Err(OfferError::WrongPlatform { device: self.profile.platform_id, offer: platform_id });
        }
        if security_counter < st.security_counter {
            return Err(OfferError::Downgrade { device: st.security_counter, offer: security_counter });
        }
        if count == 0 {
            return Err(OfferError::TooManyModules);
        }
        let mut staged = [None; MAX_UPDATE_MODULES];
        let capacity = self.capacity();
        let mut next = 0u32;
        let mut total_bytes = 0u32;
        let mut reserve = |len: u32| -> Result<u32, OfferError> {
            let at = next;
            let end = next.checked_add(len.div_ceil(BLOCK_SIZE) * BLOCK_SIZE).ok_or(OfferError::TooLarge)?;
            if end > capacity.staging_bytes {
                return Err(OfferError::TooLarge);
            }
            next = end;
            Ok(at)
        };
        // Every module's place first, then the patches (received there, applied into the
        // places once all have arrived).
        for (i, entry) in entries.iter().flatten().enumerate() {
            let slot = self.check_entry(entry)?;
            if staged.iter().flatten().any(|m: &StagedModule| m.slot as usize == slot) {
                return Err(OfferError::TooManyModules);
            }
            let offset = reserve(entry.size)?;
            let module = ModuleRecord::from_entry(entry);
            staged[i] = Some(StagedModule { slot: slot as u8, offset, module, transfer: StagedTransfer::Raw });
        }
        for (i, m) in staged.iter_mut().enumerate() {
            let Some(m) = m else { continue };
            m.transfer = match scope.transfers.get(i).copied().unwrap_or(Transfer::Raw) {
                Transfer::Raw => StagedTransfer::Raw,
                Transfer::Patch { length: 0, .. } => return Err(OfferError::TooLarge),
                Transfer::Patch { source, length } => {
                    if let Some(source) = source {
                        let installed = self.stored.state.installed[m.slot as usize];
                        if installed.is_none_or(|r| r.sha256 != source) {
                            return Err(OfferError::DeltaSource(m.module.function, m.module.index));
                        }
                    }
                    StagedTransfer::Patch { source, length, at: reserve(length)? }
                }
            };
            total_bytes = total_bytes.saturating_add(m.transfer_len());
        }
        self.check_dependencies(&staged)?;
        let count = count as u8;
        let same = st.phase == UpdatePhase::Receiving && st.staged_count == count && st.staged == staged;
        if same {
            if st.attempt != scope.attempt {
                // The same modules under another attempt id (a server that restarted the
                // attempt): keep the blocks, record the attempt now being worked on.
                self.stored.state.attempt = scope.attempt;
                self.stored.save(s, self.profile)?;
            }
            return Ok(OfferAccepted { modules: count, bytes: total_bytes, resumed: true });
        }
        let st = &mut self.stored.state;
        // Reaching the server with a new offer is the agent's confirmation of a test boot.
        if matches!(st.boot, BootState::Testing { .. }) {
            st.boot = BootState::Confirmed { fault_resets: 0 };
        }
        st.phase = UpdatePhase::Preparing;
        st.staged = staged;
        st.staged_count = count;
        st.update_counter = security_counter;
        st.attempt = scope.attempt;
        // The staging area about to be erased may hold the rollback copies.
        st.rollback = [None; MAX_SLOTS];
        st.last_result = UpdateResult::None;
        self.stored.save(s, self.profile)?;
        self.prepare(s)?;
        Ok(OfferAccepted { modules: count, bytes: total_bytes, resumed: false })
    }

    fn check_entry(&self, entry: &ModuleEntry) -> Result<usize, OfferError> {
        let slot = self
            .profile
            .slot_for(entry.function, entry.index)
            .ok_or(OfferError::NoSlot(entry.function, entry.index))?;
        if self.profile.slot_address(slot) != Some(entry.start_address) {
            return Err(OfferError::WrongAddress(entry.function, entry.index));
        }
        if entry.size == 0 || entry.size > self.profile.slots[slot].region.size {
            return Err(OfferError::TooLarge);
        }
        Ok(slot)
    }

    /// The set after the update must satisfy every dependency of the system modules (so
    /// the device can always boot at least safe mode); the application's dependencies
    /// must name modules this platform can hold and not contradict the update itself.
    /// An application whose dependencies are merely unmet is accepted: the device boots
    /// safe mode and the server heals it.
    fn check_dependencies(&self, staged: &[Option<StagedModule>; MAX_UPDATE_MODULES]) -> Result<(), OfferError> {
        let mut after = self.stored.state.installed;
        for m in staged.iter().flatten() {
            after[m.slot as usize] = Some(m.module);
        }
        for (slot, module) in after.iter().enumerate() {
            let Some(module) = module else { continue };
            let is_app = Some(slot) == self.profile.app_slot();
            for dep in module.dependencies.iter().flatten() {
                if dep.function == ModuleFunction::None {
                    continue;
                }
                let Some(dep_slot) = self.profile.slot_for(dep.function, dep.index) else {
                    return Err(OfferError::UnsatisfiableDependency(*dep));
                };
                let ok = after[dep_slot].is_some_and(|m| m.version >= dep.version);
                let in_update = staged.iter().flatten().any(|m| m.slot as usize == dep_slot);
                if !ok && (!is_app || in_update) {
                    return Err(OfferError::UnsatisfiableDependency(*dep));
                }
            }
        }
        Ok(())
    }

    /// Erases the progress markers and the staging sectors, then starts receiving.
    fn prepare<S: Storage>(&mut self, s: &mut S) -> Result<(), FlashError> {
        let p = self.profile.progress;
        let ws = self.profile.devices[p.dev as usize].write_size;
        let marker_bytes = self.total_blocks() * MARKER_UNITS * ws;
        storage::erase_covering(s, self.profile, Loc { dev: p.dev, offset: p.offset }, marker_bytes)?;
        let ex = self.profile.exchange;
        let extent = self
            .stored
            .state
            .staged()
            .map(|m| (m.offset + m.module.size).max(m.transfer_offset() + m.transfer_len()))
            .max()
            .unwrap_or(0);
        storage::erase_covering(s, self.profile, Loc { dev: ex.dev, offset: ex.offset }, extent)?;
        self.stored.state.phase = UpdatePhase::Receiving;
        self.stored.save(s, self.profile)?;
        self.received = 0;
        Ok(())
    }

    /// Step 2: the blocks still missing, in order, up to `out.len()`; returns how many
    /// were written. Empty when no transfer is in progress or it is complete.
    pub fn missing_blocks<S: Storage>(&self, s: &mut S, out: &mut [BlockRequest]) -> Result<usize, FlashError> {
        if self.stored.state.phase != UpdatePhase::Receiving {
            return Ok(0);
        }
        let mut n = 0;
        let mut block = 0;
        for (i, m) in self.stored.state.staged().enumerate() {
            let size = m.transfer_len();
            for k in 0..blocks_of(size) {
                if n == out.len() {
                    return Ok(n);
                }
                if self.marker_count(s, block)? % 2 == 0 {
                    let offset = k * BLOCK_SIZE;
                    out[n] = BlockRequest { module: i as u8, offset, len: (size - offset).min(BLOCK_SIZE) };
                    n += 1;
                }
                block += 1;
            }
        }
        Ok(n)
    }

    /// Step 2, for a window of blocks: the first run of consecutive missing blocks of one
    /// module at or after global block number `from` (blocks of every module's transfer
    /// counted in offer order), at most `max_len` bytes long (at least one block), leaving
    /// out blocks `skip(module, offset)` names (those already asked for). Returns the run
    /// and the block number to continue from; `None` when no such block is missing.
    pub fn missing_run<S: Storage>(
        &self,
        s: &mut S,
        from: u32,
        max_len: u32,
        skip: impl Fn(u8, u32) -> bool,
    ) -> Result<Option<(BlockRequest, u32)>, FlashError> {
        if self.stored.state.phase != UpdatePhase::Receiving {
            return Ok(None);
        }
        let mut block = 0u32;
        for (i, m) in self.stored.state.staged().enumerate() {
            let size = m.transfer_len();
            let n = blocks_of(size);
            let mut run: Option<BlockRequest> = None;
            let mut k = from.saturating_sub(block);
            while k < n {
                let offset = k * BLOCK_SIZE;
                let len = (size - offset).min(BLOCK_SIZE);
                let missing = self.marker_count(s, block + k)? % 2 == 0 && !skip(i as u8, offset);
                match (&mut run, missing) {
                    (None, true) => run = Some(BlockRequest { module: i as u8, offset, len }),
                    (Some(r), true) if r.len + len <= max_len => r.len += len,
                    (Some(_), _) => break,
                    (None, false) => {}
                }
                k += 1;
            }
            if let Some(run) = run {
                return Ok(Some((run, block + k)));
            }
            block += n;
        }
        Ok(None)
    }

    /// Bytes received so far and bytes in total (of the transfers: module sizes, or
    /// patch lengths).
    pub fn progress(&self) -> (u64, u64) {
        let total: u64 = self.stored.state.staged().map(|m| u64::from(m.transfer_len())).sum();
        ((u64::from(self.received) * u64::from(BLOCK_SIZE)).min(total), total)
    }

    /// Step 3: one block. Any order, duplicates ignored. When the last block arrives,
    /// every module's SHA-256 is checked against the signed manifest and the update
    /// becomes pending (installed by the boot manager at the next boot).
    pub fn handle_block<S: Storage>(&mut self, s: &mut S, block: Block<'_>) -> Result<BlockOutcome, BlockError> {
        if self.stored.state.phase != UpdatePhase::Receiving {
            return Err(BlockError::NotReceiving);
        }
        let m = *self.stored.state.staged().nth(block.module as usize).ok_or(BlockError::UnknownModule)?;
        let size = m.transfer_len();
        if block.offset % BLOCK_SIZE != 0 || block.offset >= size {
            return Err(BlockError::BadOffset);
        }
        if block.data.len() as u32 != (size - block.offset).min(BLOCK_SIZE) {
            return Err(BlockError::BadLength);
        }
        match self.store_block(s, &m, block) {
            Err(BlockError::MarkersExhausted) => {
                self.stored.state.phase = UpdatePhase::Preparing;
                self.stored.save(s, self.profile)?;
                self.prepare(s)?;
                Err(BlockError::MarkersExhausted)
            }
            other => other,
        }
    }

    fn store_block<S: Storage>(
        &mut self,
        s: &mut S,
        m: &StagedModule,
        block: Block<'_>,
    ) -> Result<BlockOutcome, BlockError> {
        let number = self.block_number(block.module, block.offset);
        let count = self.marker_count(s, number)?;
        if count % 2 == 1 {
            return Ok(BlockOutcome::Duplicate);
        }
        let ex = self.profile.exchange;
        let at = Loc { dev: ex.dev, offset: ex.offset + m.transfer_offset() + block.offset };
        let ws = self.profile.devices[ex.dev as usize].write_size;
        let padded = (block.data.len() as u32).div_ceil(ws) * ws;
        let mut unit = count;
        if storage::is_erased(s, at, padded)? {
            storage::program(s, self.profile, at, block.data)?;
        } else {
            // Written but not marked: its program was interrupted. Even if it reads right,
            // a cut at the very end can leave cells that drift later: rewrite it.
            unit = self.repair_sector(s, at, number)?;
            storage::program(s, self.profile, at, block.data)?;
        }
        self.mark(s, number, unit)?;
        self.received += 1;
        if self.received < self.total_blocks() {
            return Ok(BlockOutcome::Stored);
        }
        self.finish(s)
    }

    /// Discards the received blocks in the sector holding `at` (of any staged module:
    /// modules are packed on block boundaries), erases it, and returns the marker unit to
    /// program for block `number` afterwards.
    fn repair_sector<S: Storage>(&mut self, s: &mut S, at: Loc, number: u32) -> Result<u32, BlockError> {
        self.discard_sector(s, at)?;
        Ok(self.marker_count(s, number)?)
    }

    /// Marks the received blocks in the sector holding `at` discarded and erases it
    /// (journaled: an interrupted erase is redone by the boot manager).
    fn discard_sector<S: Storage>(&mut self, s: &mut S, at: Loc) -> Result<(), BlockError> {
        let ex = self.profile.exchange;
        let dev = &self.profile.devices[ex.dev as usize];
        let (start, size) = dev.sector_at(at.offset).ok_or(BlockError::Flash(FlashError::OutOfBounds))?;
        let staged: [Option<StagedModule>; MAX_UPDATE_MODULES] = self.stored.state.staged;
        for (i, m) in staged.iter().take(self.stored.state.staged_count as usize).enumerate() {
            let Some(m) = m else { continue };
            for k in 0..blocks_of(m.transfer_len()) {
                let block_start = ex.offset + m.transfer_offset() + k * BLOCK_SIZE;
                if block_start + BLOCK_SIZE <= start || block_start >= start + size {
                    continue;
                }
                let b = self.block_number(i as u8, k * BLOCK_SIZE);
                let c = self.marker_count(s, b)?;
                if c % 2 == 1 {
                    self.mark(s, b, c)?;
                    self.received = self.received.saturating_sub(1);
                }
            }
        }
        self.stored.journaled_erase(s, self.profile, ex.dev, start, start + size)?;
        Ok(())
    }

    /// Every block arrived: applies the patches into their modules' places, checks every
    /// module's SHA-256 and marks the update staged (or drops it, saying why).
    fn finish<S: Storage>(&mut self, s: &mut S) -> Result<BlockOutcome, BlockError> {
        let ex = self.profile.exchange;
        let mut bad = None;
        // A place found torn by an earlier, interrupted application is erased (with any
        // received block sharing its sector) and the patches applied again; bounded, as a
        // flash that keeps failing must end in an error, not a loop.
        let mut repairs = 0;
        let staged = self.stored.state.staged;
        let count = usize::from(self.stored.state.staged_count);
        'apply: loop {
            for (i, m) in staged.iter().take(count).flatten().enumerate() {
                let StagedTransfer::Patch { source, length, at } = m.transfer else { continue };
                match apply_patch(s, self.profile, m, source.is_some(), length, at)? {
                    Applied::Done => {}
                    Applied::Failed => {
                        bad = Some((i as u8, UpdateResult::PatchFailed));
                        break 'apply;
                    }
                    Applied::Torn(loc) if repairs < MAX_APPLY_REPAIRS => {
                        repairs += 1;
                        self.discard_sector(s, loc)?;
                        if self.received < self.total_blocks() {
                            // The erase took received blocks with it: they are asked again.
                            return Ok(BlockOutcome::Stored);
                        }
                        continue 'apply;
                    }
                    Applied::Torn(_) => return Err(BlockError::Flash(FlashError::Other)),
                }
            }
            break;
        }
        if bad.is_none() {
            for (i, m) in self.stored.state.staged().enumerate() {
                let digest = storage::hash(s, Loc { dev: ex.dev, offset: ex.offset + m.offset }, m.module.size)?;
                if digest != m.module.sha256 {
                    bad = Some((i as u8, UpdateResult::VerifyFailed));
                    break;
                }
            }
        }
        let st = &mut self.stored.state;
        match bad {
            None => {
                st.phase = UpdatePhase::Staged;
                st.last_result = UpdateResult::Staged;
            }
            Some((_, result)) => {
                st.phase = UpdatePhase::Idle;
                st.staged_count = 0;
                st.staged = [None; MAX_UPDATE_MODULES];
                st.last_result = result;
            }
        }
        self.stored.save(s, self.profile)?;
        match bad {
            None => Ok(BlockOutcome::Complete),
            Some((i, UpdateResult::PatchFailed)) => Err(BlockError::PatchFailed(i)),
            Some((i, _)) => Err(BlockError::VerifyFailed(i)),
        }
    }

    /// Final step: the application (or the agent, once it reached the server) confirms
    /// the running image. Returns whether a test boot was confirmed.
    pub fn confirm<S: Storage>(&mut self, s: &mut S) -> Result<bool, FlashError> {
        let st = &mut self.stored.state;
        match st.boot {
            BootState::Testing { origin, .. } => {
                st.boot = BootState::Confirmed { fault_resets: 0 };
                if origin == state::Origin::Update {
                    st.last_result = UpdateResult::Confirmed;
                }
                self.stored.save(s, self.profile)?;
                Ok(true)
            }
            BootState::Confirmed { fault_resets } if fault_resets > 0 => {
                st.boot = BootState::Confirmed { fault_resets: 0 };
                self.stored.save(s, self.profile)?;
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// Requests a factory restore at the next boot (from the application, the server or a
    /// local command). Returns `false` when the device has no factory image.
    pub fn request_factory_restore<S: Storage>(&mut self, s: &mut S) -> Result<bool, FlashError> {
        if self.stored.state.factory.is_none() {
            return Ok(false);
        }
        self.stored.state.factory_requested = true;
        self.stored.save(s, self.profile)?;
        Ok(true)
    }

    /// Requests safe mode for the next boot only (a server or local command).
    pub fn request_safe_mode<S: Storage>(&mut self, s: &mut S) -> Result<(), FlashError> {
        self.stored.state.safe_mode_requested = true;
        self.stored.save(s, self.profile)
    }

    /// Drops a transfer or a staged update. Returns `false` when there was none (or an
    /// install already started, which cannot be cancelled).
    pub fn cancel<S: Storage>(&mut self, s: &mut S) -> Result<bool, FlashError> {
        let st = &mut self.stored.state;
        if st.phase == UpdatePhase::Idle || st.job.is_some() {
            return Ok(false);
        }
        st.phase = UpdatePhase::Idle;
        st.staged_count = 0;
        st.staged = [None; MAX_UPDATE_MODULES];
        st.last_result = UpdateResult::Cancelled;
        self.stored.save(s, self.profile)?;
        Ok(true)
    }
}

/// How often one [`Agent::finish`] repairs a torn place before it gives up.
const MAX_APPLY_REPAIRS: u32 = 3;

/// Bytes of a patch read from staging per [`Applier::feed`].
const PATCH_CHUNK: usize = 256;

/// What applying one patch came to.
enum Applied {
    /// The module is in its place, and the patch checked its SHA-256.
    Done,
    /// The patch is damaged, or made for another source: the update cannot use it.
    Failed,
    /// The place holds bytes from an interrupted earlier application at this location:
    /// its sector must be erased first.
    Torn(Loc),
}

/// The installed module a delta patch applies to, read from its slot.
struct Source<'c, S> {
    s: &'c RefCell<&'c mut S>,
    at: Loc,
    len: u32,
}

impl<S: Storage> OldImage for Source<'_, S> {
    type Error = FlashError;
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), FlashError> {
        if u64::from(offset) + buf.len() as u64 > u64::from(self.len) {
            return Err(FlashError::OutOfBounds);
        }
        self.s.borrow_mut().read(self.at.dev, self.at.offset + offset, buf)
    }
}

/// Nothing: what a compressed image is a patch from.
struct Nothing;

impl OldImage for Nothing {
    type Error = FlashError;
    fn read(&mut self, _: u32, _: &mut [u8]) -> Result<(), FlashError> {
        Err(FlashError::OutOfBounds)
    }
}

/// The module's place in the exchange area, written in order. A write whose bytes are
/// already there (from an application a reset interrupted) is skipped, one into erased
/// flash is programmed, and anything else — a torn earlier write — is reported.
struct Place<'c, S> {
    s: &'c RefCell<&'c mut S>,
    profile: &'static Profile,
    at: Loc,
    len: u32,
    torn: Option<Loc>,
    flash: Option<FlashError>,
    /// The patch tried to write past the module's size.
    overflow: bool,
}

impl<S: Storage> NewImage for Place<'_, S> {
    type Error = ();
    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), ()> {
        if u64::from(offset) + data.len() as u64 > u64::from(self.len) {
            self.overflow = true;
            return Err(());
        }
        let at = Loc { dev: self.at.dev, offset: self.at.offset + offset };
        let mut s = self.s.borrow_mut();
        let ws = self.profile.devices[at.dev as usize].write_size;
        let padded = (data.len() as u32).div_ceil(ws) * ws;
        let result = match storage::equals(*s, at, data) {
            Ok(true) => Ok(()),
            Ok(false) => match storage::is_erased(*s, at, padded) {
                Ok(true) => storage::program(*s, self.profile, at, data),
                Ok(false) => {
                    self.torn = Some(at);
                    return Err(());
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        result.map_err(|e| self.flash = Some(e))
    }

    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), ()> {
        if u64::from(offset) + buf.len() as u64 > u64::from(self.len) {
            self.overflow = true;
            return Err(());
        }
        let result = self.s.borrow_mut().read(self.at.dev, self.at.offset + offset, buf);
        result.map_err(|e| self.flash = Some(e))
    }
}

/// Applies module `m`'s patch (`length` bytes at `at` in the exchange area) into its place.
fn apply_patch<S: Storage>(
    s: &mut S,
    profile: &'static Profile,
    m: &StagedModule,
    delta: bool,
    length: u32,
    at: u32,
) -> Result<Applied, BlockError> {
    let ex = profile.exchange;
    let slot = profile.slots.get(m.slot as usize).ok_or(BlockError::Flash(FlashError::OutOfBounds))?.region;
    let cell = RefCell::new(s);
    let mut place = Place {
        s: &cell,
        profile,
        at: Loc { dev: ex.dev, offset: ex.offset + m.offset },
        len: m.module.size,
        torn: None,
        flash: None,
        overflow: false,
    };
    let mut applier = Applier::new();
    let mut buf = [0u8; PATCH_CHUNK];
    let mut done = 0u32;
    let mut status = Status::NeedMore;
    while done < length {
        let n = (length - done).min(PATCH_CHUNK as u32) as usize;
        cell.borrow_mut().read(ex.dev, ex.offset + at + done, &mut buf[..n])?;
        done += n as u32;
        let fed = if delta {
            let mut source = Source { s: &cell, at: Loc { dev: slot.dev, offset: slot.offset }, len: slot.size };
            applier.feed(&buf[..n], &mut source, &mut place)
        } else {
            applier.feed(&buf[..n], &mut Nothing, &mut place)
        };
        // The patch must rebuild exactly the signed module: checked on its header, before
        // the payload writes anything.
        if let Some(h) = applier.header() {
            if h.new_len != m.module.size || h.new_sha256 != m.module.sha256 {
                return Ok(Applied::Failed);
            }
        }
        match fed {
            Ok(s) => status = s,
            Err(ApplyError::WriteNew | ApplyError::ReadNew) => {
                return match (place.torn, place.flash, place.overflow) {
                    (_, _, true) => Ok(Applied::Failed),
                    (Some(loc), _, _) => Ok(Applied::Torn(loc)),
                    (None, Some(e), _) => Err(BlockError::Flash(e)),
                    (None, None, _) => Err(BlockError::Flash(FlashError::Other)),
                };
            }
            // The source could not be read: the patch cannot be used on this device.
            Err(_) => return Ok(Applied::Failed),
        }
    }
    let complete = status == Status::Done && applier.finish().is_ok();
    Ok(if complete { Applied::Done } else { Applied::Failed })
}
