//! A simulated device: the real device crate on the flash model, with a profile, and a
//! simulated application whose behaviour comes from the image it runs.

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};
use tern_device::profile::Profile;
use tern_device::state::{self, DeviceState, ModuleRecord};
use tern_device::storage::{FlashError, OneFlash, Storage, TwoFlashes};
use tern_image::manifest::ModuleEntry;
use tern_image::model::{Dependency, Format, ModuleFunction, MAX_DEPENDENCIES};

use crate::flash::{Bench, SharedBench, SimFlash};

/// How a simulated application behaves, read from its image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Starts, confirms its test boot, keeps running.
    Healthy,
    /// Panics at boot (reset cause: panic).
    Panic,
    /// Hangs at boot (reset cause: watchdog).
    Hang,
    /// Runs and reaches the server but never confirms; on test, the watchdog resets it.
    NeverConfirms,
}

/// The marker a synthetic image carries at its start: `TERN-APP:<behaviour>;`.
pub const MARKER: &[u8] = b"TERN-APP:";

impl Behaviour {
    /// Name used in markers and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Behaviour::Healthy => "healthy",
            Behaviour::Panic => "panic",
            Behaviour::Hang => "hang",
            Behaviour::NeverConfirms => "noconfirm",
        }
    }

    /// Parses a name.
    pub fn from_name(name: &str) -> Option<Self> {
        [Behaviour::Healthy, Behaviour::Panic, Behaviour::Hang, Behaviour::NeverConfirms]
            .into_iter()
            .find(|b| b.name() == name)
    }

    /// The behaviour of an image: from its marker, or healthy for any other binary (real
    /// third-party firmware behaves as healthy).
    pub fn of_image(bytes: &[u8]) -> Self {
        let head = &bytes[..bytes.len().min(64)];
        head.windows(MARKER.len())
            .position(|w| w == MARKER)
            .and_then(|at| {
                let rest = &head[at + MARKER.len()..];
                let end = rest.iter().position(|&b| b == b';')?;
                Behaviour::from_name(std::str::from_utf8(&rest[..end]).ok()?)
            })
            .unwrap_or(Behaviour::Healthy)
    }
}

/// A module image with the manifest entry that describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// A name for reports.
    pub name: String,
    /// The module file's bytes.
    pub bytes: Vec<u8>,
    /// Its manifest entry (hash, size, start address, dependencies…).
    pub entry: ModuleEntry,
}

impl Image {
    /// An image from bytes and the facts a manifest states about it; the hash and size
    /// in `entry` are computed from `bytes`.
    pub fn new(name: &str, bytes: Vec<u8>, mut entry: ModuleEntry) -> Self {
        entry.sha256 = Sha256::digest(&bytes).into();
        entry.size = bytes.len() as u32;
        Image { name: name.to_string(), bytes, entry }
    }

    /// A synthetic module of `size` bytes for the slot of `function`/`index` in `profile`,
    /// carrying a behaviour marker and deterministic filler.
    pub fn synthetic(
        profile: &Profile,
        function: ModuleFunction,
        index: u8,
        version: u32,
        deps: &[Dependency],
        behaviour: Behaviour,
        size: usize,
    ) -> Self {
        let slot = profile.slot_for(function, index).expect("synthetic images are made for slots the profile has");
        let address = profile.slot_address(slot).expect("slot exists");
        let name = format!("{}-v{version}-{}", profile.slots[slot].name, behaviour.name());
        let mut bytes = format!("TERN-APP:{};{name};", behaviour.name()).into_bytes();
        let mut x = u64::from(version) << 16 | u64::from(function.code()) << 8 | u64::from(index);
        while bytes.len() < size {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            bytes.push((x >> 33) as u8);
        }
        bytes.truncate(size);
        Image::new(&name, bytes, entry(function, index, version, address, deps, Format::Raw))
    }
}

/// A manifest entry with these facts (hash and size are filled in by [`Image::new`]).
pub fn entry(
    function: ModuleFunction,
    index: u8,
    version: u32,
    start_address: u32,
    deps: &[Dependency],
    format: Format,
) -> ModuleEntry {
    let mut dependencies = [None; MAX_DEPENDENCIES];
    for (slot, d) in dependencies.iter_mut().zip(deps) {
        *slot = Some(*d);
    }
    ModuleEntry { function, index, version, sha256: [0; 32], size: 0, start_address, dependencies, format }
}

/// The flash devices of a profile as `embedded-storage` flashes, in the shape the device
/// crate takes them.
pub enum SimStorage {
    /// STM32F2-class: one internal flash (word writes, 16 KiB smallest sector).
    One(OneFlash<SimFlash<4, 16384>>),
    /// STM32F2-class with external SPI NOR (the P1: byte writes, 4 KiB sectors).
    StmExternal(TwoFlashes<SimFlash<4, 16384>, SimFlash<1, 4096>>),
    /// nRF52840-class: internal (word writes, 4 KiB pages) and external SPI NOR (byte
    /// writes, 4 KiB sectors).
    Two(TwoFlashes<SimFlash<4, 4096>, SimFlash<1, 4096>>),
    /// nRF52840-class with a network coprocessor's flash as device 2 (byte writes, 4 KiB
    /// sectors).
    WithNcp(TwoFlashes<SimFlash<4, 4096>, SimFlash<1, 4096>>, OneFlash<SimFlash<1, 4096>>),
}

impl Storage for SimStorage {
    fn read(&mut self, dev: u8, offset: u32, buf: &mut [u8]) -> Result<(), FlashError> {
        match self {
            SimStorage::One(s) => s.read(dev, offset, buf),
            SimStorage::StmExternal(s) => s.read(dev, offset, buf),
            SimStorage::Two(s) => s.read(dev, offset, buf),
            SimStorage::WithNcp(_, ncp) if dev == 2 => ncp.read(0, offset, buf),
            SimStorage::WithNcp(s, _) => s.read(dev, offset, buf),
        }
    }
    fn write(&mut self, dev: u8, offset: u32, data: &[u8]) -> Result<(), FlashError> {
        match self {
            SimStorage::One(s) => s.write(dev, offset, data),
            SimStorage::StmExternal(s) => s.write(dev, offset, data),
            SimStorage::Two(s) => s.write(dev, offset, data),
            SimStorage::WithNcp(_, ncp) if dev == 2 => ncp.write(0, offset, data),
            SimStorage::WithNcp(s, _) => s.write(dev, offset, data),
        }
    }
    fn erase(&mut self, dev: u8, from: u32, to: u32) -> Result<(), FlashError> {
        match self {
            SimStorage::One(s) => s.erase(dev, from, to),
            SimStorage::StmExternal(s) => s.erase(dev, from, to),
            SimStorage::Two(s) => s.erase(dev, from, to),
            SimStorage::WithNcp(_, ncp) if dev == 2 => ncp.erase(0, from, to),
            SimStorage::WithNcp(s, _) => s.erase(dev, from, to),
        }
    }
}

/// A simulated device: a profile, its flash bench and the keys it trusts.
pub struct SimDevice {
    /// The platform profile.
    pub profile: &'static Profile,
    /// Its flash.
    pub bench: SharedBench,
    /// Keys trusted for updates.
    pub keys: Vec<VerifyingKey>,
}

impl SimDevice {
    /// A device with erased flash.
    pub fn new(profile: &'static Profile, keys: Vec<VerifyingKey>) -> Self {
        SimDevice { profile, bench: Rc::new(RefCell::new(Bench::new(profile.devices))), keys }
    }

    /// A device on an existing bench (for example a copy of a provisioned one).
    pub fn with_bench(profile: &'static Profile, keys: Vec<VerifyingKey>, bench: Bench) -> Self {
        SimDevice { profile, bench: Rc::new(RefCell::new(bench)), keys }
    }

    /// Whether slot `slot` starts with exactly `bytes` (compared in place).
    pub fn slot_holds(&self, slot: usize, bytes: &[u8]) -> bool {
        let r = self.profile.slots[slot].region;
        let b = self.bench.borrow();
        let d = &b.devices[r.dev as usize];
        let start = r.offset as usize;
        bytes.len() <= r.size as usize && d.bytes.get(start..start + bytes.len()) == Some(bytes)
    }

    /// The flash as the device crate sees it.
    pub fn storage(&self) -> SimStorage {
        fn flash<const W: usize, const E: usize>(dev: &SimDevice, n: usize) -> SimFlash<W, E> {
            SimFlash::new(dev.bench.clone(), n)
        }
        // The internal flash's smallest sector tells the MCU family apart.
        let uneven = self.profile.devices[0].sectors.first().is_some_and(|r| r.size == 16 * 1024);
        match (self.profile.devices.len(), uneven) {
            (1, _) => SimStorage::One(OneFlash(flash(self, 0))),
            (_, true) => SimStorage::StmExternal(TwoFlashes { internal: flash(self, 0), external: flash(self, 1) }),
            (2, false) => SimStorage::Two(TwoFlashes { internal: flash(self, 0), external: flash(self, 1) }),
            _ => SimStorage::WithNcp(
                TwoFlashes { internal: flash(self, 0), external: flash(self, 1) },
                OneFlash(flash(self, 2)),
            ),
        }
    }

    /// Factory programming: writes `installed` into their slots, the factory image, and
    /// the first state record (everything confirmed). Images must fit their slots.
    pub fn provision(&mut self, installed: &[&Image], factory: Option<&Image>) -> Result<(), String> {
        let mut st = DeviceState::empty();
        {
            let mut b = self.bench.borrow_mut();
            for img in installed {
                let slot = self
                    .profile
                    .slot_for(img.entry.function, img.entry.index)
                    .ok_or(format!("{}: no slot", img.name))?;
                let r = self.profile.slots[slot].region;
                put(&mut b, r.dev as usize, r.offset, &img.bytes);
                st.installed[slot] = Some(ModuleRecord::from_entry(&img.entry));
            }
            if let Some(f) = factory {
                let r = self.profile.factory;
                put(&mut b, r.dev as usize, r.offset, &f.bytes);
                st.factory = Some(ModuleRecord::from_entry(&f.entry));
            }
        }
        state::provision(&mut self.storage(), self.profile, &st).map_err(|e| format!("provisioning: {e:?}"))?;
        Ok(())
    }

    /// Saves the flash contents to a file (a simulated device survives restarts).
    ///
    /// Format: `TERNSIM1`, the profile name length (u8) and name, then per device its
    /// length (u32 LE) and bytes.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let b = self.bench.borrow();
        let mut out = b"TERNSIM1".to_vec();
        out.push(self.profile.name.len() as u8);
        out.extend_from_slice(self.profile.name.as_bytes());
        for d in &b.devices {
            out.extend_from_slice(&(d.bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&d.bytes);
        }
        std::fs::write(path, out)
    }

    /// Loads a device saved by [`SimDevice::save`].
    pub fn load(path: &Path, keys: Vec<VerifyingKey>) -> Result<Self, String> {
        let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let bad = || format!("{}: not a saved simulated device", path.display());
        let rest = data.strip_prefix(b"TERNSIM1".as_slice()).ok_or_else(bad)?;
        let (&n, rest) = rest.split_first().ok_or_else(bad)?;
        let name = rest.get(..n as usize).and_then(|b| std::str::from_utf8(b).ok()).ok_or_else(bad)?;
        let profile =
            tern_device::profile::by_name(name).ok_or_else(|| format!("{}: unknown profile {name}", path.display()))?;
        let dev = SimDevice::new(profile, keys);
        let mut rest = &rest[n as usize..];
        for d in dev.bench.borrow_mut().devices.iter_mut() {
            // A device saved before its profile gained a flash device (the Argon's NCP)
            // loads with that device erased.
            if rest.is_empty() {
                break;
            }
            let len = rest.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize).ok_or_else(bad)?;
            if len != d.bytes.len() || rest.len() < 4 + len {
                return Err(bad());
            }
            d.bytes.copy_from_slice(&rest[4..4 + len]);
            // Unknown history: treat every non-erased byte as programmed.
            for (p, &byte) in d.programmed.iter_mut().zip(&d.bytes) {
                *p = byte != 0xFF;
            }
            rest = &rest[4 + len..];
        }
        if !rest.is_empty() {
            return Err(bad());
        }
        Ok(dev)
    }

    /// The first `len` bytes of slot `slot`.
    pub fn slot_bytes(&self, slot: usize, len: usize) -> Vec<u8> {
        let r = self.profile.slots[slot].region;
        let b = self.bench.borrow();
        let d = &b.devices[r.dev as usize];
        let end = (r.offset as usize + len).min(r.end() as usize);
        d.bytes[r.offset as usize..end].to_vec()
    }
}

/// Writes bytes directly (factory programming, not counted as device operations).
fn put(b: &mut Bench, dev: usize, offset: u32, data: &[u8]) {
    let d = &mut b.devices[dev];
    let start = offset as usize;
    d.bytes[start..start + data.len()].copy_from_slice(data);
    let ws = d.geometry.write_size as usize;
    let end = (start + data.len()).div_ceil(ws) * ws;
    for p in &mut d.programmed[start..end] {
        *p = true;
    }
}
