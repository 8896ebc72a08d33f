//! Install plans: which modules a device needs and in which order.
//!
//! Given what a device runs, the modules an operator asked for and a catalog of modules
//! available for the device's platform, [`plan`] computes the complete set to send: the
//! requested modules plus every module their dependencies need that the device lacks
//! (system parts, bootloader, radio stack …), transitively, ordered so that each module
//! comes after the modules it needs. [`heal`] does the same for a device whose installed
//! modules have unmet dependencies (a device in safe mode), with nothing requested.
//!
//! Pure logic: no IO, no clock. The server calls it to show the operator an explicit plan
//! before anything is sent; the CLI uses [`install_order`] to order release bundles.
//!
//! # Rules
//!
//! - A dependency `(function, index, version)` is met by a module of that function and
//!   index whose version is at least `version` (Device OS semantics).
//! - A missing dependency is healed with the *lowest* catalog version that meets it: the
//!   smallest change that makes the device consistent, which is also what keeps cellular
//!   costs down. Its own dependencies are resolved the same way.
//! - A plan never leaves an installed module with a dependency the plan breaks (a
//!   downgrade below what another module needs is an error, not a surprise).
//! - Order: a module goes after a planned module it depends on when the device's module
//!   in that slot at that point would not meet the dependency; where dependencies leave a
//!   choice (or form a cycle, as Device OS system parts do), bootloader, radio stack,
//!   co-processor, system parts by index, application, assets.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;

use tern_image::{Dependency, ModuleFunction};

/// A module's slot: function and index. A device holds at most one module per slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot {
    /// What the module is for.
    pub function: ModuleFunction,
    /// Index among modules of that function.
    pub index: u8,
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.function {
            ModuleFunction::SystemPart | ModuleFunction::UserPart | ModuleFunction::Asset => {
                write!(f, "{} {}", self.function.name(), self.index)
            }
            _ if self.index == 0 => f.write_str(self.function.name()),
            _ => write!(f, "{} {}", self.function.name(), self.index),
        }
    }
}

/// A module the device has installed, as the device describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    /// Its slot.
    pub slot: Slot,
    /// Its version.
    pub version: u32,
    /// What it needs installed.
    pub dependencies: Vec<Dependency>,
}

/// A module that can be sent: one the operator asked for or one from the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// SHA-256 of the module file, its identity.
    pub sha256: [u8; 32],
    /// Platform the module is for.
    pub platform_id: u16,
    /// Its slot.
    pub slot: Slot,
    /// Its version.
    pub version: u32,
    /// Bytes to transfer.
    pub size: u64,
    /// What it needs installed.
    pub dependencies: Vec<Dependency>,
}

/// Why a module is in a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The operator asked for it.
    Requested,
    /// It meets a dependency of another module that nothing else meets.
    Dependency {
        /// The module that needs it (slot and version).
        needed_by: (Slot, u32),
        /// The requirement it meets.
        requirement: Dependency,
    },
}

/// One module of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The module to send.
    pub module: Candidate,
    /// Why it is sent.
    pub reason: Reason,
}

/// A complete install plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Modules in install order.
    pub steps: Vec<Step>,
}

impl Plan {
    /// Total module bytes to transfer.
    pub fn module_bytes(&self) -> u64 {
        self.steps.iter().map(|s| s.module.size).sum()
    }

    /// Whether the plan adds modules nobody asked for.
    pub fn heals(&self) -> bool {
        self.steps.iter().any(|s| s.reason != Reason::Requested)
    }
}

/// Why no plan exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// A requested module is for another platform.
    WrongPlatform {
        /// The module's slot.
        slot: Slot,
        /// Its platform.
        module_platform: u16,
        /// The device's platform.
        device_platform: u16,
    },
    /// Two requested modules occupy the same slot.
    SameSlotTwice(Slot),
    /// A dependency that neither the device, the request nor the catalog can meet.
    Unsatisfiable {
        /// The module that needs it (slot and version).
        needed_by: (Slot, u32),
        /// The requirement.
        requirement: Dependency,
    },
    /// A module the plan installs is older than another module needs.
    Conflict {
        /// The module that needs more (slot and version).
        needed_by: (Slot, u32),
        /// The requirement.
        requirement: Dependency,
        /// The version the plan would install in that slot.
        planned_version: u32,
    },
}

fn dep_slot(d: &Dependency) -> Slot {
    Slot { function: d.function, index: d.index }
}

fn describe_dep(d: &Dependency) -> String {
    format!("{} >= v{}", dep_slot(d), d.version)
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::WrongPlatform { slot, module_platform, device_platform } => {
                write!(f, "{slot} is built for platform {module_platform}, the device is platform {device_platform}")
            }
            Error::SameSlotTwice(slot) => write!(f, "two modules requested for {slot}"),
            Error::Unsatisfiable { needed_by: (slot, version), requirement } => write!(
                f,
                "{slot} v{version} needs {}, which neither the device nor the catalog has",
                describe_dep(requirement)
            ),
            Error::Conflict { needed_by: (slot, version), requirement, planned_version } => write!(
                f,
                "{slot} v{version} needs {}, but the plan installs v{planned_version} there",
                describe_dep(requirement)
            ),
        }
    }
}

impl std::error::Error for Error {}

/// What the device will hold after the planned steps so far: installed overlaid by plan.
fn version_in(slot: Slot, installed: &[Installed], planned: &[Step]) -> Option<u32> {
    planned
        .iter()
        .find(|s| s.module.slot == slot)
        .map(|s| s.module.version)
        .or_else(|| installed.iter().find(|i| i.slot == slot).map(|i| i.version))
}

/// Computes the plan that installs `requested` on a device of `platform_id` running
/// `installed`, adding from `catalog` whatever dependencies are missing.
pub fn plan(
    platform_id: u16,
    installed: &[Installed],
    requested: &[Candidate],
    catalog: &[Candidate],
) -> Result<Plan, Error> {
    let mut steps: Vec<Step> = Vec::new();
    for module in requested {
        if module.platform_id != platform_id && module.platform_id != 0 {
            return Err(Error::WrongPlatform {
                slot: module.slot,
                module_platform: module.platform_id,
                device_platform: platform_id,
            });
        }
        if steps.iter().any(|s| s.module.slot == module.slot) {
            return Err(Error::SameSlotTwice(module.slot));
        }
        steps.push(Step { module: module.clone(), reason: Reason::Requested });
    }
    resolve(platform_id, installed, &mut steps, catalog)?;
    order(installed, &mut steps);
    Ok(Plan { steps })
}

/// Computes the plan that makes a device's installed modules consistent again (every
/// dependency met) from `catalog`, with nothing requested: the safe-mode healer. An empty
/// plan means nothing is missing.
pub fn heal(platform_id: u16, installed: &[Installed], catalog: &[Candidate]) -> Result<Plan, Error> {
    plan(platform_id, installed, &[], catalog)
}

/// Adds catalog modules to `steps` until every dependency of every planned module, and of
/// every installed module the plan keeps, is met.
fn resolve(
    platform_id: u16,
    installed: &[Installed],
    steps: &mut Vec<Step>,
    catalog: &[Candidate],
) -> Result<(), Error> {
    // Each round either finds everything met or adds a module to a slot not yet planned,
    // so the loop ends after at most one round per catalog slot.
    loop {
        let mut missing: Option<((Slot, u32), Dependency)> = None;
        let planned = steps.iter().map(|s| ((s.module.slot, s.module.version), &s.module.dependencies[..]));
        let kept = installed
            .iter()
            .filter(|i| !steps.iter().any(|s| s.module.slot == i.slot))
            .map(|i| ((i.slot, i.version), &i.dependencies[..]));
        'find: for (who, deps) in planned.chain(kept) {
            for dep in deps {
                if dep.function == ModuleFunction::None {
                    continue;
                }
                let slot = dep_slot(dep);
                match version_in(slot, installed, steps) {
                    Some(v) if v >= dep.version => continue,
                    _ => {}
                }
                if let Some(planned) = steps.iter().find(|s| s.module.slot == slot) {
                    return Err(Error::Conflict {
                        needed_by: who,
                        requirement: *dep,
                        planned_version: planned.module.version,
                    });
                }
                missing = Some((who, *dep));
                break 'find;
            }
        }
        let Some((needed_by, requirement)) = missing else { return Ok(()) };
        let slot = dep_slot(&requirement);
        let best = catalog
            .iter()
            .filter(|c| c.platform_id == platform_id && c.slot == slot && c.version >= requirement.version)
            .min_by_key(|c| c.version)
            .ok_or(Error::Unsatisfiable { needed_by, requirement })?;
        steps.push(Step { module: best.clone(), reason: Reason::Dependency { needed_by, requirement } });
    }
}

/// Where a module function goes when dependencies leave the order open.
pub fn install_rank(function: ModuleFunction) -> u8 {
    match function {
        ModuleFunction::Bootloader => 0,
        ModuleFunction::RadioStack => 1,
        ModuleFunction::NcpFirmware => 2,
        ModuleFunction::SystemPart => 3,
        ModuleFunction::MonoFirmware => 4,
        ModuleFunction::UserPart => 5,
        ModuleFunction::Asset => 6,
        _ => 7,
    }
}

/// Orders `steps` for installation on a device running `installed`.
fn order(installed: &[Installed], steps: &mut Vec<Step>) {
    install_order_by(installed, steps, |s| (s.module.slot, s.module.version, &s.module.dependencies[..]));
}

/// Orders items (anything with a slot, a version and dependencies) for installation on a
/// device running `installed` (empty when unknown, as for a release bundle): each item
/// after the items it depends on unless the device already meets that dependency; ties
/// and cycles broken by [`install_rank`] and index. Stable for equal keys.
pub fn install_order_by<T>(
    installed: &[Installed],
    items: &mut Vec<T>,
    key: impl Fn(&T) -> (Slot, u32, &[Dependency]),
) {
    items.sort_by_key(|item| {
        let (slot, _, _) = key(item);
        (install_rank(slot.function), slot.index)
    });
    let mut pending: Vec<T> = std::mem::take(items);
    // What the device holds in each slot after the items ordered so far.
    let mut state: Vec<(Slot, u32)> = installed.iter().map(|i| (i.slot, i.version)).collect();
    while !pending.is_empty() {
        let ready = pending
            .iter()
            .position(|item| {
                let (own, _, deps) = key(item);
                deps.iter().all(|d| {
                    let slot = dep_slot(d);
                    let met = state.iter().any(|&(s, v)| s == slot && v >= d.version);
                    let waits_for_pending = pending.iter().any(|p| key(p).0 == slot && slot != own);
                    met || !waits_for_pending
                })
            })
            // A cycle among pending items: take the first by rank.
            .unwrap_or(0);
        let item = pending.remove(ready);
        let (slot, version, _) = key(&item);
        state.retain(|&(s, _)| s != slot);
        state.push((slot, version));
        items.push(item);
    }
}

#[cfg(test)]
mod tests;
