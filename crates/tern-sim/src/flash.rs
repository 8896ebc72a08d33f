//! A strict NOR flash model with fault injection.
//!
//! Every device of a simulated board lives in one [`Bench`], shared by the
//! [`SimFlash`] handles that implement `embedded-storage`'s `NorFlash`. The bench numbers
//! every program and erase operation across all devices (the *operation index*) so that a
//! fault can be injected at any one of them.
//!
//! Strictness: an erase must cover whole physical sectors (uneven sizes included); a write
//! must be aligned to the write size; programming only clears bits (the stored value is
//! `old & new`); writing a byte twice without an erase in between is a violation even if
//! the bits would allow it; reads of erased bytes return `0xFF`. A violation is recorded
//! and the operation fails.
//!
//! Faults ([`FaultKind`] documents each): power losses before or during an operation
//! (cut, torn write as a prefix or scattered over the page, torn erase), operations that
//! fail with the power on (an error returned, or silently), cells left marginal by a cut
//! at the very end of an operation that read right now and drift after a later reboot,
//! retention bit flips in stored data, and sectors that wear out. After a power loss
//! every operation fails until [`Bench::power_on`]; the later-reboot effects (drift,
//! retention) are applied by [`Bench::power_on`] itself.

use std::cell::RefCell;
use std::rc::Rc;

use embedded_storage::nor_flash::{ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash};
use tern_device::profile::FlashGeometry;

/// A fault to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Power lost before the operation: nothing happens.
    Cut,
    /// Power lost during a program operation: only part of the bytes/bits programmed.
    TornWrite,
    /// Power lost during an erase: the sector left partly erased, partly garbage.
    TornErase,
    /// Power lost during a program, the bits that made it scattered over the whole range
    /// (an SPI NOR page program is not a prefix).
    ScatterTear,
    /// A program fails with the power on: part of the data programmed, an error returned.
    FailProgram,
    /// A program reports success, but some zero bits of one byte were not programmed.
    SilentProgram,
    /// Power lost at the very end of a program: every byte reads right, but some bits
    /// drift back to 1 after the second power-on.
    MarginalProgram,
    /// An erase fails with the power on: the sectors left partly erased, an error returned.
    FailErase,
    /// An erase reports success, but some bytes of one sector still hold zero bits.
    SilentErase,
    /// Power lost at the very end of an erase: everything reads `0xFF`, but some bits drift
    /// to 0 after the second power-on (unless the range is erased again first).
    MarginalErase,
    /// A bit of the data this program stored flips at the next power-on (retention).
    Retention,
    /// The erased sectors are worn out: this and every later erase of them fails with an
    /// error, leaving them partly erased.
    WearOut,
}

/// Every fault kind, in the order of their names.
pub const ALL_FAULTS: &[FaultKind] = &[
    FaultKind::Cut,
    FaultKind::TornWrite,
    FaultKind::TornErase,
    FaultKind::ScatterTear,
    FaultKind::FailProgram,
    FaultKind::SilentProgram,
    FaultKind::MarginalProgram,
    FaultKind::FailErase,
    FaultKind::SilentErase,
    FaultKind::MarginalErase,
    FaultKind::Retention,
    FaultKind::WearOut,
];

/// The power-loss faults the explorer injects by default.
pub const POWER_FAULTS: &[FaultKind] = &[FaultKind::Cut, FaultKind::TornWrite, FaultKind::TornErase];

impl FaultKind {
    /// Name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Cut => "cut",
            FaultKind::TornWrite => "torn_write",
            FaultKind::TornErase => "torn_erase",
            FaultKind::ScatterTear => "scatter_tear",
            FaultKind::FailProgram => "fail_program",
            FaultKind::SilentProgram => "silent_program",
            FaultKind::MarginalProgram => "marginal_program",
            FaultKind::FailErase => "fail_erase",
            FaultKind::SilentErase => "silent_erase",
            FaultKind::MarginalErase => "marginal_erase",
            FaultKind::Retention => "retention",
            FaultKind::WearOut => "wear_out",
        }
    }

    /// Parses a name.
    pub fn from_name(name: &str) -> Option<Self> {
        ALL_FAULTS.iter().copied().find(|k| k.name() == name)
    }

    /// Whether the fault applies to operations of this kind (a cut applies to both).
    pub fn applies_to(self, op: OpKind) -> bool {
        match self {
            FaultKind::Cut => true,
            FaultKind::TornWrite
            | FaultKind::ScatterTear
            | FaultKind::FailProgram
            | FaultKind::SilentProgram
            | FaultKind::MarginalProgram
            | FaultKind::Retention => op == OpKind::Write,
            FaultKind::TornErase
            | FaultKind::FailErase
            | FaultKind::SilentErase
            | FaultKind::MarginalErase
            | FaultKind::WearOut => op == OpKind::Erase,
        }
    }
}

/// A later-reboot effect waiting in the cells: applied by [`Bench::power_on`] when
/// `power_ons` reaches 0, dropped if the range is erased first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Latent {
    /// Device number.
    pub dev: usize,
    /// First byte.
    pub offset: u32,
    /// Bytes.
    pub len: u32,
    /// Power-ons left before it shows.
    pub power_ons: u8,
    /// `true`: programmed zero bits drift back to 1 (marginal program, retention);
    /// `false`: erased bits drift to 0 (marginal erase).
    pub loses_charge: bool,
}

/// What kind of operation an index was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Program.
    Write,
    /// Erase.
    Erase,
}

/// One recorded operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    /// Program or erase.
    pub kind: OpKind,
    /// Device number.
    pub dev: u8,
    /// Start offset.
    pub offset: u32,
    /// Length in bytes.
    pub len: u32,
}

/// Counters of one device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Read calls.
    pub reads: u64,
    /// Program calls.
    pub writes: u64,
    /// Bytes programmed.
    pub bytes_programmed: u64,
    /// Sectors erased.
    pub sector_erases: u64,
    /// Bytes erased.
    pub bytes_erased: u64,
}

/// The error every failing operation returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimError(pub NorFlashErrorKind);

impl NorFlashError for SimError {
    fn kind(&self) -> NorFlashErrorKind {
        self.0
    }
}

/// One flash device's contents and bookkeeping.
#[derive(Clone, Debug)]
pub struct Device {
    /// Geometry from the profile.
    pub geometry: FlashGeometry,
    /// Contents.
    pub bytes: Vec<u8>,
    /// Whether each byte was programmed since its last erase.
    pub programmed: Vec<bool>,
    /// Erase count per sector, in sector order.
    pub wear: Vec<u32>,
    /// Operation counters.
    pub stats: Stats,
    /// Sectors whose contents or wear changed since the last [`Bench::restore_from`]
    /// (indices in sector order), so that a restore copies only those.
    touched: Vec<u32>,
    /// Whether each sector is in `touched`.
    touched_mark: Vec<bool>,
}

impl Device {
    /// An erased device.
    pub fn new(geometry: FlashGeometry) -> Self {
        let size = geometry.size() as usize;
        let sectors = geometry.sectors.iter().map(|r| r.count as usize).sum();
        Device {
            geometry,
            bytes: vec![0xFF; size],
            programmed: vec![false; size],
            wear: vec![0; sectors],
            stats: Stats::default(),
            touched: Vec::new(),
            touched_mark: vec![false; sectors],
        }
    }

    /// Records that bytes `[start, end)` changed.
    fn touch(&mut self, start: usize, end: usize) {
        let mut at = start as u32;
        while (at as usize) < end {
            let Some((sector, size)) = self.geometry.sector_at(at) else { break };
            let index = self.sector_index(sector);
            if !self.touched_mark[index] {
                self.touched_mark[index] = true;
                self.touched.push(index as u32);
            }
            at = sector + size;
        }
    }

    /// Byte range of sector `index`.
    fn sector_range(&self, index: usize) -> (usize, usize) {
        let mut start = 0usize;
        let mut first = 0usize;
        for run in self.geometry.sectors {
            let n = run.count as usize;
            if index < first + n {
                let a = start + (index - first) * run.size as usize;
                return (a, a + run.size as usize);
            }
            start += n * run.size as usize;
            first += n;
        }
        (start, start)
    }

    fn sector_index(&self, offset: u32) -> usize {
        let mut start = 0u32;
        let mut index = 0usize;
        for run in self.geometry.sectors {
            let len = run.count * run.size;
            if offset < start + len {
                return index + ((offset - start) / run.size) as usize;
            }
            start += len;
            index += run.count as usize;
        }
        index
    }
}

/// A deterministic pseudo-random generator (SplitMix64), so every run is reproducible.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

/// All flash devices of a board, the operation counter and the fault plan.
#[derive(Clone, Debug)]
pub struct Bench {
    /// The devices.
    pub devices: Vec<Device>,
    /// Program/erase operations performed since the counter was last reset.
    pub ops: Vec<Op>,
    /// Faults to inject, by operation index, sorted.
    pub faults: Vec<(u64, FaultKind)>,
    /// Faults injected so far.
    pub injected: Vec<(u64, FaultKind)>,
    /// Whether the power is on.
    pub powered: bool,
    /// Strictness violations (misaligned writes, double writes, partial-sector erases…).
    pub violations: Vec<String>,
    /// Randomness for torn operations.
    pub rng: Rng,
    /// Whether to keep the operation log (costs memory on long runs).
    pub log_ops: bool,
    /// Latent drifts and retention flips, applied at later power-ons.
    pub latent: Vec<Latent>,
    /// Worn-out sectors: (device, sector start). Their erases fail.
    pub worn: Vec<(usize, u32)>,
    /// Where retention and wear-out faults take effect: (device, first byte, end); a
    /// planned one at an operation elsewhere is not injected. Empty: anywhere.
    pub stored_faults_in: Vec<(u8, u32, u32)>,
    op_count: u64,
}

impl Bench {
    /// A bench of erased devices.
    pub fn new(geometries: &[FlashGeometry]) -> Self {
        Bench {
            devices: geometries.iter().copied().map(Device::new).collect(),
            ops: Vec::new(),
            faults: Vec::new(),
            injected: Vec::new(),
            powered: true,
            violations: Vec::new(),
            rng: Rng(1),
            log_ops: true,
            latent: Vec::new(),
            worn: Vec::new(),
            stored_faults_in: Vec::new(),
            op_count: 0,
        }
    }

    /// Makes this bench equal to `base`, which it must have been cloned or restored from
    /// last (with only this bench's own operations since): copies back the sectors the
    /// operations changed instead of whole devices. Falls back to a full copy when the
    /// devices differ in shape.
    pub fn restore_from(&mut self, base: &Bench) {
        let same_shape = self.devices.len() == base.devices.len()
            && self
                .devices
                .iter()
                .zip(&base.devices)
                .all(|(d, b)| d.bytes.len() == b.bytes.len() && d.wear.len() == b.wear.len());
        if !same_shape {
            self.clone_from(base);
            return;
        }
        for (d, b) in self.devices.iter_mut().zip(&base.devices) {
            for index in std::mem::take(&mut d.touched) {
                let index = index as usize;
                let (a, z) = d.sector_range(index);
                d.bytes[a..z].copy_from_slice(&b.bytes[a..z]);
                d.programmed[a..z].copy_from_slice(&b.programmed[a..z]);
                d.wear[index] = b.wear[index];
                d.touched_mark[index] = false;
            }
            d.touched.clone_from(&b.touched);
            for &index in &d.touched {
                d.touched_mark[index as usize] = true;
            }
            d.stats.clone_from(&b.stats);
        }
        self.ops.clone_from(&base.ops);
        self.faults.clone_from(&base.faults);
        self.injected.clone_from(&base.injected);
        self.powered = base.powered;
        self.violations.clone_from(&base.violations);
        self.rng = base.rng.clone();
        self.log_ops = base.log_ops;
        self.latent.clone_from(&base.latent);
        self.worn.clone_from(&base.worn);
        self.stored_faults_in.clone_from(&base.stored_faults_in);
        self.op_count = base.op_count;
    }

    /// Operations counted since the last [`Bench::reset_counter`].
    pub fn op_count(&self) -> u64 {
        self.op_count
    }

    /// Restarts operation numbering at 0 and clears the log and the statistics.
    pub fn reset_counter(&mut self) {
        self.op_count = 0;
        self.ops.clear();
        for d in &mut self.devices {
            d.stats = Stats::default();
        }
    }

    /// Restores power after a fault (and counts a power-on: latent effects that come due
    /// show now).
    pub fn power_on(&mut self) {
        self.powered = true;
        let mut due = Vec::new();
        self.latent.retain_mut(|l| {
            l.power_ons = l.power_ons.saturating_sub(1);
            if l.power_ons == 0 {
                due.push(l.clone());
                false
            } else {
                true
            }
        });
        for l in due {
            self.show(&l);
        }
    }

    /// Flips one bit of a latent range in the direction it drifts (a bit that is already
    /// there is left: nothing to drift).
    fn show(&mut self, l: &Latent) {
        let Some(d) = self.devices.get(l.dev) else { return };
        let candidates: Vec<(usize, u8)> = (l.offset as usize..(l.offset + l.len) as usize)
            .filter(|&k| k < d.bytes.len())
            .flat_map(|k| (0..8u8).map(move |bit| (k, bit)))
            .filter(|&(k, bit)| (d.bytes[k] >> bit & 1 == 0) == l.loses_charge)
            .collect();
        if candidates.is_empty() {
            return;
        }
        let (k, bit) = candidates[self.rng.below(candidates.len() as u64) as usize];
        self.devices[l.dev].touch(k, k + 1);
        self.devices[l.dev].bytes[k] ^= 1 << bit;
    }

    fn forget_latent(&mut self, dev: usize, from: u32, to: u32) {
        self.latent.retain(|l| !(l.dev == dev && from <= l.offset && l.offset + l.len <= to));
    }

    fn violation(&mut self, what: String) -> SimError {
        self.violations.push(what);
        SimError(NorFlashErrorKind::Other)
    }

    /// Counts an operation and returns the fault to inject at it, if any.
    fn begin(&mut self, op: Op) -> Result<Option<FaultKind>, SimError> {
        if !self.powered {
            return Err(SimError(NorFlashErrorKind::Other));
        }
        let index = self.op_count;
        self.op_count += 1;
        if self.log_ops {
            self.ops.push(op);
        }
        let in_scope = |k: FaultKind| {
            !matches!(k, FaultKind::Retention | FaultKind::WearOut)
                || self.stored_faults_in.is_empty()
                || self.stored_faults_in.iter().any(|&(d, a, z)| d == op.dev && a <= op.offset && op.offset < z)
        };
        let fault = self.faults.iter().find(|(at, _)| *at == index).map(|(_, k)| *k).filter(|k| in_scope(*k));
        if let Some(kind) = fault {
            self.injected.push((index, kind));
        }
        Ok(fault)
    }

    /// Reads from device `dev`.
    pub fn read(&mut self, dev: usize, offset: u32, buf: &mut [u8]) -> Result<(), SimError> {
        if !self.powered {
            return Err(SimError(NorFlashErrorKind::Other));
        }
        let d = self.devices.get_mut(dev).ok_or(SimError(NorFlashErrorKind::OutOfBounds))?;
        let start = offset as usize;
        let end = start
            .checked_add(buf.len())
            .filter(|&e| e <= d.bytes.len())
            .ok_or(SimError(NorFlashErrorKind::OutOfBounds))?;
        buf.copy_from_slice(&d.bytes[start..end]);
        d.stats.reads += 1;
        Ok(())
    }

    /// Programs `data` at `offset` of device `dev`.
    pub fn write(&mut self, dev: usize, offset: u32, data: &[u8]) -> Result<(), SimError> {
        let op = Op { kind: OpKind::Write, dev: dev as u8, offset, len: data.len() as u32 };
        let fault = self.begin(op)?;
        let Some(d) = self.devices.get(dev) else { return Err(SimError(NorFlashErrorKind::OutOfBounds)) };
        let ws = d.geometry.write_size as usize;
        let start = offset as usize;
        let Some(end) = start.checked_add(data.len()).filter(|&e| e <= d.bytes.len()) else {
            return Err(self.violation(format!("write out of bounds: dev {dev} offset {offset:#x} len {}", data.len())));
        };
        if start % ws != 0 || data.len() % ws != 0 {
            return Err(self.violation(format!("misaligned write: dev {dev} offset {offset:#x} len {}", data.len())));
        }
        if let Some(i) = (start..end).find(|&i| d.programmed[i]) {
            return Err(self.violation(format!("double write without erase: dev {dev} offset {i:#x}")));
        }
        self.devices[dev].touch(start, end);
        match fault {
            Some(FaultKind::ScatterTear) => return Err(self.scatter(dev, start, data)),
            Some(k @ (FaultKind::SilentProgram | FaultKind::MarginalProgram | FaultKind::Retention)) => {
                self.program_all(dev, start, data);
                let len = data.len() as u32;
                return match k {
                    FaultKind::SilentProgram => {
                        // One byte with zero bits to program keeps some of them at 1.
                        let zeros: Vec<usize> = (0..data.len()).filter(|&k| data[k] != 0xFF).collect();
                        if !zeros.is_empty() {
                            let k = zeros[self.rng.below(zeros.len() as u64) as usize];
                            // The lowest zero bit of the data stays 1.
                            let zero_bits = !data[k];
                            let keep = zero_bits & zero_bits.wrapping_neg();
                            self.devices[dev].bytes[start + k] |= keep;
                        }
                        Ok(())
                    }
                    FaultKind::MarginalProgram => {
                        self.latent.push(Latent { dev, offset, len, power_ons: 2, loses_charge: true });
                        self.powered = false;
                        Err(SimError(NorFlashErrorKind::Other))
                    }
                    _ => {
                        self.latent.push(Latent { dev, offset, len, power_ons: 1, loses_charge: true });
                        Ok(())
                    }
                };
            }
            _ => {}
        }
        let cut_at = match fault {
            Some(FaultKind::Cut) => {
                self.powered = false;
                return Err(SimError(NorFlashErrorKind::Other));
            }
            Some(_) => Some(self.rng.below(data.len() as u64) as usize),
            None => None,
        };
        let keep_power = fault == Some(FaultKind::FailProgram);
        let partial_bits = self.rng.next_u64() as u8;
        let d = &mut self.devices[dev];
        let n = cut_at.unwrap_or(data.len());
        for (k, &b) in data[..n].iter().enumerate() {
            d.bytes[start + k] &= b;
            d.programmed[start + k] = true;
        }
        d.stats.writes += 1;
        d.stats.bytes_programmed += n as u64;
        if cut_at.is_some() {
            // The byte being programmed when power failed: some of its zero bits made it.
            // If none did, it still reads erased and nothing can tell it was touched, so
            // it counts as programmed only when a bit changed.
            if n < data.len() {
                let before = d.bytes[start + n];
                d.bytes[start + n] &= data[n] | partial_bits;
                d.programmed[start + n] = d.bytes[start + n] != before;
            }
            self.powered = keep_power;
            return Err(SimError(NorFlashErrorKind::Other));
        }
        Ok(())
    }

    fn program_all(&mut self, dev: usize, start: usize, data: &[u8]) {
        let d = &mut self.devices[dev];
        for (k, &b) in data.iter().enumerate() {
            d.bytes[start + k] &= b;
            d.programmed[start + k] = true;
        }
        d.stats.writes += 1;
        d.stats.bytes_programmed += data.len() as u64;
    }

    /// A program torn by a power loss with the programmed bits anywhere in the range.
    fn scatter(&mut self, dev: usize, start: usize, data: &[u8]) -> SimError {
        for (k, &b) in data.iter().enumerate() {
            let r = self.rng.next_u64();
            let made_it = match r % 3 {
                0 => b,
                1 => 0xFF,
                _ => b | (r >> 8) as u8,
            };
            let d = &mut self.devices[dev];
            let before = d.bytes[start + k];
            d.bytes[start + k] &= made_it;
            d.programmed[start + k] = d.bytes[start + k] != before;
        }
        self.powered = false;
        SimError(NorFlashErrorKind::Other)
    }

    /// Erases `[from, to)` of device `dev`, which must be whole sectors.
    pub fn erase(&mut self, dev: usize, from: u32, to: u32) -> Result<(), SimError> {
        let op = Op { kind: OpKind::Erase, dev: dev as u8, offset: from, len: to.saturating_sub(from) };
        let fault = self.begin(op)?;
        let Some(d) = self.devices.get(dev) else { return Err(SimError(NorFlashErrorKind::OutOfBounds)) };
        if from > to || to > d.geometry.size() {
            return Err(self.violation(format!("erase out of bounds: dev {dev} {from:#x}..{to:#x}")));
        }
        if !d.geometry.is_boundary(from) || !d.geometry.is_boundary(to) {
            return Err(self.violation(format!("erase not on sector boundaries: dev {dev} {from:#x}..{to:#x}")));
        }
        if fault == Some(FaultKind::Cut) {
            self.powered = false;
            return Err(SimError(NorFlashErrorKind::Other));
        }
        // Sectors in order; a torn erase stops inside one of them.
        let mut sectors = Vec::new();
        let mut at = from;
        while at < to {
            let Some((start, size)) = d.geometry.sector_at(at) else { break };
            sectors.push((start, size));
            at = start + size;
        }
        self.devices[dev].touch(from as usize, to as usize);
        self.forget_latent(dev, from, to);
        if fault == Some(FaultKind::WearOut) {
            for &(start, _) in &sectors {
                if !self.worn.contains(&(dev, start)) {
                    self.worn.push((dev, start));
                }
            }
        }
        let worn_at = sectors.iter().position(|&(start, _)| self.worn.contains(&(dev, start)));
        let torn = match fault {
            _ if worn_at.is_some() => worn_at,
            Some(FaultKind::TornErase | FaultKind::FailErase) => Some(self.rng.below(sectors.len() as u64) as usize),
            _ => None,
        };
        for (i, &(start, size)) in sectors.iter().enumerate() {
            if torn.is_some_and(|t| i > t) {
                break;
            }
            let index = self.devices[dev].sector_index(start);
            self.devices[dev].wear[index] += 1;
            self.devices[dev].stats.sector_erases += 1;
            self.devices[dev].stats.bytes_erased += u64::from(size);
            let split = if torn == Some(i) { self.rng.below(u64::from(size)) as u32 } else { size };
            let (a, m, z) = (start as usize, (start + split) as usize, (start + size) as usize);
            let d = &mut self.devices[dev];
            d.bytes[a..m].fill(0xFF);
            d.programmed[a..m].fill(false);
            for k in m..z {
                // Erasing sets bits: the unfinished part holds old bits plus some set ones.
                let noise = self.rng.next_u64() as u8;
                let d = &mut self.devices[dev];
                d.bytes[k] |= noise;
                d.programmed[k] = d.bytes[k] != 0xFF;
            }
        }
        match fault {
            _ if worn_at.is_some() => Err(SimError(NorFlashErrorKind::Other)),
            Some(FaultKind::FailErase) => Err(SimError(NorFlashErrorKind::Other)),
            Some(FaultKind::TornErase) => {
                self.powered = false;
                Err(SimError(NorFlashErrorKind::Other))
            }
            Some(FaultKind::SilentErase) => {
                // A few bytes of one sector keep zero bits; they read as not erased but
                // were never programmed since (the software did erase them).
                let (start, size) = sectors[self.rng.below(sectors.len() as u64) as usize];
                for _ in 0..1 + self.rng.below(4) {
                    let k = (start + self.rng.below(u64::from(size)) as u32) as usize;
                    let stuck = self.rng.next_u64() as u8 | 1;
                    self.devices[dev].bytes[k] &= !stuck;
                }
                Ok(())
            }
            Some(FaultKind::MarginalErase) => {
                self.latent.push(Latent { dev, offset: from, len: to - from, power_ons: 2, loses_charge: false });
                self.powered = false;
                Err(SimError(NorFlashErrorKind::Other))
            }
            _ => Ok(()),
        }
    }
}

/// A shared handle to a bench.
pub type SharedBench = Rc<RefCell<Bench>>;

/// One device of a bench as an `embedded-storage` NOR flash with write size `W` and
/// nominal erase size `E` (the smallest sector; uneven sectors are checked by the bench).
#[derive(Clone)]
pub struct SimFlash<const W: usize, const E: usize> {
    bench: SharedBench,
    dev: usize,
}

impl<const W: usize, const E: usize> SimFlash<W, E> {
    /// A handle to device `dev` of `bench`.
    pub fn new(bench: SharedBench, dev: usize) -> Self {
        SimFlash { bench, dev }
    }
}

impl<const W: usize, const E: usize> ErrorType for SimFlash<W, E> {
    type Error = SimError;
}

impl<const W: usize, const E: usize> ReadNorFlash for SimFlash<W, E> {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), SimError> {
        self.bench.borrow_mut().read(self.dev, offset, bytes)
    }
    fn capacity(&self) -> usize {
        self.bench.borrow().devices.get(self.dev).map_or(0, |d| d.bytes.len())
    }
}

impl<const W: usize, const E: usize> NorFlash for SimFlash<W, E> {
    const WRITE_SIZE: usize = W;
    const ERASE_SIZE: usize = E;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), SimError> {
        self.bench.borrow_mut().erase(self.dev, from, to)
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), SimError> {
        self.bench.borrow_mut().write(self.dev, offset, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_device::profile::{SectorRun, STM32F2};

    const SMALL: FlashGeometry = FlashGeometry {
        name: "test",
        base_address: 0,
        sectors: &[SectorRun { count: 2, size: 16 }, SectorRun { count: 1, size: 64 }],
        write_size: 4,
    };

    fn bench() -> Bench {
        Bench::new(&[SMALL])
    }

    /// One operation and its expected effect: Ok(contents of bytes 0..8) or a violation.
    enum Expect {
        Bytes([u8; 8]),
        Violation(&'static str),
    }

    fn check(ops: &[(&str, u32, u32, &[u8])], expect: Expect) {
        let mut b = bench();
        let mut last = Ok(());
        for (kind, a, z, data) in ops {
            last = match *kind {
                "w" => b.write(0, *a, data),
                "e" => b.erase(0, *a, *z),
                _ => unreachable!("test tables only use w and e"),
            };
        }
        match expect {
            Expect::Bytes(bytes) => {
                assert!(last.is_ok(), "{:?}", b.violations);
                assert_eq!(b.devices[0].bytes[..8], bytes);
            }
            Expect::Violation(what) => {
                assert!(last.is_err());
                assert!(b.violations.iter().any(|v| v.contains(what)), "{:?} lacks {what}", b.violations);
            }
        }
    }

    #[test]
    fn strict_rules() {
        let ff = [0xFF; 8];
        check(&[], Expect::Bytes(ff));
        check(&[("w", 0, 0, &[1, 2, 3, 4])], Expect::Bytes([1, 2, 3, 4, 0xFF, 0xFF, 0xFF, 0xFF]));
        check(&[("w", 2, 0, &[1, 2, 3, 4])], Expect::Violation("misaligned"));
        check(&[("w", 0, 0, &[1, 2, 3])], Expect::Violation("misaligned"));
        check(&[("w", 0, 0, &[1, 2, 3, 4]), ("w", 0, 0, &[1, 2, 3, 4])], Expect::Violation("double write"));
        check(
            &[("w", 0, 0, &[0xF0; 4]), ("e", 0, 16, &[]), ("w", 0, 0, &[0x0F; 4])],
            Expect::Bytes([0x0F, 0x0F, 0x0F, 0x0F, 0xFF, 0xFF, 0xFF, 0xFF]),
        );
        check(&[("e", 0, 8, &[])], Expect::Violation("sector boundaries"));
        check(&[("e", 16, 48, &[])], Expect::Violation("sector boundaries"));
        check(&[("e", 0, 96, &[])], Expect::Bytes(ff));
        check(&[("e", 0, 200, &[])], Expect::Violation("out of bounds"));
        check(&[("w", 96, 0, &[0; 4])], Expect::Violation("out of bounds"));
    }

    #[test]
    fn programming_only_clears_bits() {
        let mut b = bench();
        b.write(0, 0, &[0b1010_1010; 4]).unwrap();
        b.erase(0, 0, 16).unwrap();
        b.write(0, 0, &[0b0101_0101; 4]).unwrap();
        assert_eq!(b.devices[0].bytes[0], 0b0101_0101);
        assert_eq!(b.devices[0].wear[..3], [1, 0, 0]);
    }

    #[test]
    fn faults() {
        // Cut: nothing written, power off, every later operation fails until power-on.
        let mut b = bench();
        b.faults = vec![(1, FaultKind::Cut)];
        b.write(0, 0, &[0; 4]).unwrap();
        assert!(b.write(0, 4, &[0; 4]).is_err());
        assert_eq!(b.devices[0].bytes[4..8], [0xFF; 4]);
        assert!(b.read(0, 0, &mut [0; 4]).is_err());
        b.power_on();
        b.write(0, 4, &[0; 4]).unwrap();
        assert_eq!(b.injected, vec![(1, FaultKind::Cut)]);

        // Torn write: a strict prefix programmed; rewriting the same place is a double write.
        for seed in 0..50 {
            let mut b = bench();
            b.rng = Rng(seed);
            b.faults = vec![(0, FaultKind::TornWrite)];
            assert!(b.write(0, 0, &[0u8; 16]).is_err());
            let zeros = b.devices[0].bytes[..16].iter().take_while(|&&x| x == 0).count();
            assert!(zeros < 16, "a torn write never completes");
            b.power_on();
            assert!(b.write(0, 0, &[0u8; 16]).is_err(), "rewriting a torn write is detected");
        }

        // Torn erase: the earlier sectors erased, the torn one partly garbage, later untouched.
        let mut saw_garbage = false;
        for seed in 0..50 {
            let mut b = bench();
            for off in (0..96).step_by(4) {
                b.write(0, off, &[0; 4]).unwrap();
            }
            b.rng = Rng(seed);
            b.faults = vec![(24, FaultKind::TornErase)];
            assert!(b.erase(0, 0, 96).is_err());
            let bytes = &b.devices[0].bytes;
            saw_garbage |= bytes.iter().any(|&x| x != 0 && x != 0xFF);
            assert!(bytes.iter().any(|&x| x != 0xFF), "a torn erase never completes");
        }
        assert!(saw_garbage);
    }

    /// Each fault kind that keeps the power on, or shows later, does what its name says:
    /// (kind, operation, power stays on, the operation reports an error, bytes 0..8 right
    /// after, bytes 0..8 after two more power-ons).
    #[test]
    fn faults_with_power_on_and_later_effects() {
        const DATA: [u8; 8] = [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77];
        for seed in 0..20 {
            let run = |kind: FaultKind, erase: bool| {
                let mut b = bench();
                b.rng = Rng(seed);
                b.write(0, 0, &DATA).unwrap();
                b.faults = vec![(1, kind)];
                let result = if erase { b.erase(0, 0, 16) } else { b.write(0, 8, &DATA) };
                let powered = b.powered;
                let now: Vec<u8> = b.devices[0].bytes[..16].to_vec();
                b.power_on();
                b.power_on();
                let later: Vec<u8> = b.devices[0].bytes[..16].to_vec();
                (result.is_ok(), powered, now, later)
            };
            let ff = vec![0xFF; 16];
            let written: Vec<u8> = DATA.iter().chain(DATA.iter()).copied().collect();
            // Failing program: an error, the power stays on, the data is incomplete.
            let (ok, powered, now, _) = run(FaultKind::FailProgram, false);
            assert!(!ok && powered && now[8..] != DATA);
            // Silent program: no error, one byte keeps a zero bit at 1.
            let (ok, powered, now, _) = run(FaultKind::SilentProgram, false);
            assert!(ok && powered && now != written && now[..8] == DATA);
            // Marginal program: reads right at once, drifts after the second power-on.
            let (ok, powered, now, later) = run(FaultKind::MarginalProgram, false);
            assert!(!ok && !powered && now == written && later != written);
            // Retention: the program succeeds, a bit of it flips at the next power-on.
            let (ok, _, now, later) = run(FaultKind::Retention, false);
            assert!(ok && now == written && later != written && later[..8] == DATA);
            // Scattered tear: the power is lost, the page partly programmed.
            let (ok, powered, now, _) = run(FaultKind::ScatterTear, false);
            assert!(!ok && !powered && now != written);
            // Failing erase: an error with the power on (the sector may or may not read
            // erased: it can fail at any point).
            let (ok, powered, _, _) = run(FaultKind::FailErase, true);
            assert!(!ok && powered);
            // Silent erase: no error, but some bits stay 0.
            let (ok, _, now, _) = run(FaultKind::SilentErase, true);
            assert!(ok && now != ff);
            // Marginal erase: reads erased at once, drifts to 0 bits later.
            let (ok, powered, now, later) = run(FaultKind::MarginalErase, true);
            assert!(!ok && !powered && now == ff && later != ff);
        }
        // Wear-out: the faulted erase and every later one of that sector fail.
        let mut b = bench();
        b.faults = vec![(0, FaultKind::WearOut)];
        assert!(b.erase(0, 0, 16).is_err());
        assert!(b.powered);
        assert!(b.erase(0, 0, 16).is_err(), "a worn-out sector stays worn out");
        b.erase(0, 16, 32).expect("other sectors still erase");
        // An erase of the range before the drift shows cancels it.
        let mut b = bench();
        b.faults = vec![(0, FaultKind::MarginalErase)];
        assert!(b.erase(0, 0, 16).is_err());
        b.power_on();
        b.erase(0, 0, 16).unwrap();
        b.power_on();
        b.power_on();
        assert_eq!(b.devices[0].bytes[..16], [0xFF; 16]);
        for kind in ALL_FAULTS {
            assert_eq!(FaultKind::from_name(kind.name()), Some(*kind));
        }
    }

    /// A restore copies back every sector the operations changed (programs, erases, torn
    /// ones, drifts shown at a power-on) and nothing else differs afterwards.
    #[test]
    fn restore_from_undoes_every_change() {
        let mut base = Bench::new(tern_device::profile::NRF52840.devices);
        base.write(0, 0x4000, &[0x12; 64]).unwrap();
        base.reset_counter();
        for seed in 0..20 {
            let mut b = base.clone();
            for round in 0..3 {
                b.rng = Rng(seed * 3 + round);
                b.faults = vec![(1, FaultKind::MarginalErase), (3, FaultKind::TornErase), (5, FaultKind::ScatterTear)];
                b.reset_counter();
                let _ = b.write(0, 0x8000, &[0; 32]);
                let _ = b.erase(0, 0x4000, 0x8000);
                b.power_on();
                let _ = b.write(1, 0x1000, &[0x5A; 16]);
                let _ = b.erase(0, 0x8000, 0xC000);
                b.power_on();
                let _ = b.write(1, 0x2000 + 4 * seed as u32, &[0; 8]);
                let _ = b.write(0, 0x1_0000, &[0; 8]);
                b.power_on();
                b.power_on();
                assert_ne!(
                    (&b.devices[0].bytes, &b.devices[1].bytes),
                    (&base.devices[0].bytes, &base.devices[1].bytes)
                );
                b.restore_from(&base);
                for (d, d0) in b.devices.iter().zip(&base.devices) {
                    assert!(d.bytes == d0.bytes && d.programmed == d0.programmed && d.wear == d0.wear);
                    assert_eq!(d.stats, d0.stats);
                }
                assert!(b.latent.is_empty() && b.faults.is_empty() && b.op_count() == 0 && b.powered);
            }
        }
    }

    #[test]
    fn uneven_sectors_of_the_stm32f2_profile() {
        let mut b = Bench::new(STM32F2.devices);
        assert_eq!(b.devices[0].wear.len(), 12);
        b.erase(0, 0x1_0000, 0x2_0000).unwrap(); // the 64 KiB sector
        assert!(b.erase(0, 0x2_0000, 0x3_0000).is_err(), "half of a 128 KiB sector");
        b.erase(0, 0x2_0000, 0x4_0000).unwrap();
        assert_eq!(b.devices[0].wear[4..6], [1, 1]);
    }
}
