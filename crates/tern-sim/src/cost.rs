//! Flash cost of each scenario's update: what Tern's device crate does (measured on the
//! flash model in a clean run), the minimum the layout allows, and MCUboot's two swap
//! algorithms for the same image sizes.
//!
//! MCUboot figures are worked out from the algorithms described in MCUboot's
//! `docs/design.md` ("Image swapping"): the update image is first written into the
//! secondary slot (N sector erases, the image bytes programmed), then
//!
//! - **swap using scratch**: for each sector (here: scratch as large as one slot sector),
//!   secondary → scratch, primary → secondary, scratch → primary — three erases and three
//!   sector copies per sector; the scratch sector is erased once per slot sector;
//! - **swap using move**: the primary image is moved up by one sector (one erase and one
//!   sector copy per sector), then for each sector `secondary[i]` → `primary[i]` and
//!   `primary[i+1]` → `secondary[i]` — two more erases and copies per sector.
//!
//! Both therefore cost `4N` erases and `image + 3·N·sector` bytes for an image spanning N
//! sectors; swap-move needs one spare sector in the primary slot, swap-scratch concentrates
//! N erases on the scratch sector. The small status/trailer writes of both are left out.
//!
//! Wear: the report also gives the erases of the most-erased state-bank sector per update
//! (the state record is written at every state change, so its sectors wear first) and the
//! most-erased sector of the whole run.

use serde::Serialize;
use tern_device::profile::Profile;

use crate::scenario::{self, Scenario, Task};

/// Erases and bytes programmed.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Cost {
    /// Sector erases.
    pub erases: u64,
    /// Bytes programmed.
    pub bytes_programmed: u64,
}

/// The cost report for one scenario.
#[derive(Clone, Debug, Serialize)]
pub struct CostReport {
    /// Scenario name.
    pub name: String,
    /// Profile name.
    pub profile: String,
    /// Bytes of the modules delivered.
    pub image_bytes: u64,
    /// Measured: the whole scenario, clean run (download, state records, markers,
    /// rollback copies, install, test-boot accounting).
    pub tern: Cost,
    /// Receive once into the exchange area and copy once into the slot.
    pub minimum: Cost,
    /// MCUboot swap using move for the same images.
    pub mcuboot_swap_move: Cost,
    /// MCUboot swap using scratch for the same images.
    pub mcuboot_swap_scratch: Cost,
    /// Updates the scenario offers (at least 1, for the per-update figures).
    pub updates: u64,
    /// Erases of the most-erased sector of the state banks in the clean run.
    pub state_sector_erases: u64,
    /// [`CostReport::state_sector_erases`] per update: with the profile's state sector
    /// endurance, how many updates the state record lasts.
    pub state_sector_erases_per_update: f64,
    /// The most-erased sector of any area in the clean run: where (`device@offset`) and
    /// how many erases.
    pub hottest_sector: (String, u64),
}

/// Erases during `out` of each sector overlapping `region`: the largest.
fn most_erased_in(profile: &Profile, out: &scenario::Outcome, region: &tern_device::profile::Region) -> u64 {
    let Some(dev) = profile.devices.get(region.dev as usize) else { return 0 };
    let Some(wear) = out.sector_erases.get(region.dev as usize) else { return 0 };
    let mut best = 0;
    let mut at = region.offset;
    while at < region.end() {
        let Some((start, size)) = dev.sector_at(at) else { break };
        best = best.max(u64::from(wear.get(sector_index(dev, start)).copied().unwrap_or(0)));
        at = start + size;
    }
    best
}

fn sector_index(dev: &tern_device::profile::FlashGeometry, offset: u32) -> usize {
    let mut start = 0u32;
    let mut index = 0usize;
    for run in dev.sectors {
        let len = run.count * run.size;
        if offset < start + len {
            return index + ((offset - start) / run.size) as usize;
        }
        start += len;
        index += run.count as usize;
    }
    index
}

fn sector_start(dev: &tern_device::profile::FlashGeometry, index: usize) -> u32 {
    let mut start = 0u32;
    let mut left = index;
    for run in dev.sectors {
        if left < run.count as usize {
            return start + left as u32 * run.size;
        }
        left -= run.count as usize;
        start += run.count * run.size;
    }
    start
}

fn sectors(profile: &Profile, dev: u8, offset: u32, len: u32) -> (u64, u64) {
    let d = &profile.devices[dev as usize];
    let mut n = 0;
    let mut bytes = 0;
    let mut at = offset;
    while at < offset + len {
        let Some((start, size)) = d.sector_at(at) else { break };
        n += 1;
        bytes += u64::from(size);
        at = start + size;
    }
    (n, bytes)
}

/// Computes the cost report of a scenario.
pub fn report(sc: &Scenario) -> CostReport {
    let device = sc.provisioned();
    let base = device.bench.borrow().clone();
    let clean = scenario::run(sc, &base, &[]);
    let tern = clean
        .cost
        .iter()
        .fold(Cost::default(), |a, (e, b)| Cost { erases: a.erases + e, bytes_programmed: a.bytes_programmed + b });
    let p = sc.profile;
    let updates = sc.tasks.iter().filter(|t| matches!(t, Task::Update { .. })).count().max(1) as u64;
    let state_sector_erases = p.state_banks.iter().map(|b| most_erased_in(p, &clean, b)).max().unwrap_or(0);
    let hottest_sector = clean
        .sector_erases
        .iter()
        .enumerate()
        .flat_map(|(dev, wear)| wear.iter().enumerate().map(move |(i, w)| (dev, i, *w)))
        .max_by_key(|(dev, i, w)| (*w, std::cmp::Reverse((*dev, *i))))
        .map(|(dev, i, w)| {
            let g = &p.devices[dev];
            (format!("{}@{:#x}", g.name, sector_start(g, i)), u64::from(w))
        })
        .unwrap_or_default();
    let mut minimum = Cost::default();
    let mut mcuboot = Cost::default();
    let mut image_bytes = 0;
    for task in &sc.tasks {
        let Task::Update { modules, .. } = task else { continue };
        let mut ex_offset = p.exchange.offset;
        for m in modules {
            let size = m.entry.size;
            image_bytes += u64::from(size);
            let slot = p.slot_for(m.entry.function, m.entry.index).map(|s| p.slots[s].region);
            let Some(slot) = slot else { continue };
            let (ex_n, ex_bytes) = sectors(p, p.exchange.dev, ex_offset, size);
            ex_offset += ex_bytes as u32;
            let (slot_n, slot_bytes) = sectors(p, slot.dev, slot.offset, size);
            minimum.erases += ex_n + slot_n;
            minimum.bytes_programmed += 2 * u64::from(size);
            mcuboot.erases += slot_n + 3 * slot_n;
            mcuboot.bytes_programmed += u64::from(size) + 3 * slot_bytes;
        }
    }
    CostReport {
        name: sc.name.clone(),
        profile: p.name.to_string(),
        image_bytes,
        tern,
        minimum,
        mcuboot_swap_move: mcuboot,
        mcuboot_swap_scratch: mcuboot,
        updates,
        state_sector_erases,
        state_sector_erases_per_update: state_sector_erases as f64 / updates as f64,
        hottest_sector,
    }
}

/// State-record wear in the steady state: `n` application updates in a row on one profile.
#[derive(Clone, Debug, Serialize)]
pub struct Endurance {
    /// Profile name.
    pub profile: String,
    /// Updates installed and confirmed.
    pub updates: u64,
    /// Erases of the most-erased state-bank sector over all of them.
    pub state_sector_erases: u64,
    /// The same per update: the figure that, against the sector's rated erase cycles,
    /// says how many updates the state record lasts.
    pub state_sector_erases_per_update: f64,
    /// State changes written (records programmed) over the run.
    pub state_writes: u64,
}

/// Runs [`scenario::repeated_app_updates`] cleanly and measures the state sectors' wear.
pub fn endurance(profile: &'static Profile, n: u64) -> Endurance {
    let sc = scenario::repeated_app_updates(profile, n);
    let base = sc.provisioned().bench.borrow().clone();
    let clean = scenario::run(&sc, &base, &[]);
    let state_sector_erases = profile.state_banks.iter().map(|b| most_erased_in(profile, &clean, b)).max().unwrap_or(0);
    let state_writes = clean
        .log
        .iter()
        .filter(|op| {
            op.kind == crate::flash::OpKind::Write
                && profile.state_banks.iter().any(|b| op.dev == b.dev && b.offset <= op.offset && op.offset < b.end())
        })
        .count() as u64;
    Endurance {
        profile: profile.name.to_string(),
        updates: n,
        state_sector_erases,
        state_sector_erases_per_update: state_sector_erases as f64 / n as f64,
        state_writes,
    }
}
