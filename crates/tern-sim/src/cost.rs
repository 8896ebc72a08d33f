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
    }
}
