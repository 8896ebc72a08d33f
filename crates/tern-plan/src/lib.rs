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
//! - System parts travel as **Device OS releases**: the system parts of one release share
//!   one module version, and a plan that changes one system part brings every system part
//!   the device has to that same version (never a mixture of versions that were not
//!   released together). A missing system dependency is met by the lowest *complete*
//!   release in the catalog; the bootloader shipped with that release is preferred when
//!   the catalog has it ([`device_os`]). An operator can name the release ([`Options`]).
//! - No Device OS module is downgraded unless the operator allows it, and no module whose
//!   signed security counter is below the device's is ever planned.
//! - A plan is split into **stages** that each fit what one offer can stage on the device
//!   ([`stages`]), each leaving every system module's dependencies met (what the device's
//!   agent requires); an application whose dependencies a stage leaves unmet makes the
//!   device run safe mode until a later stage, and the stage says so.
//! - A plan never leaves an installed module with a dependency the plan breaks (a
//!   downgrade below what another module needs is an error, not a surprise).
//! - Order: a module goes after a planned module it depends on when the device's module
//!   in that slot at that point would not meet the dependency; where dependencies leave a
//!   choice (or form a cycle, as Device OS system parts do), bootloader, radio stack,
//!   co-processor, system parts by index, application, assets.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod device_os;
mod stage;

use std::fmt;

pub use stage::{stages, Capacity, Expect, Stage};

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
    /// SHA-256 of the installed module (its file), when known: a planned module with the
    /// same hash in the same slot is already there and is not sent.
    pub sha256: Option<[u8; 32]>,
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
    /// The security counter of its signed statement (0 when it carries none).
    pub security_counter: u64,
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
    /// It belongs to the Device OS release (system module version) another planned
    /// system part brings: system parts travel together.
    SameRelease {
        /// The release's system module version.
        version: u32,
    },
    /// The operator named this Device OS release (system module version).
    Target {
        /// The release's system module version.
        version: u32,
    },
}

/// What the operator asks of a plan beyond the modules themselves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Bring the device's system parts to this Device OS release (system module version).
    pub device_os: Option<u32>,
    /// Allow Device OS modules (bootloader, radio stack, system parts, …) older than the
    /// installed ones.
    pub allow_downgrade: bool,
    /// The device's security counter: modules signed with a lower one are never planned.
    pub security_counter: u64,
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
    /// A Device OS module older than the installed one, without the operator's leave.
    Downgrade {
        /// The slot.
        slot: Slot,
        /// The installed version.
        installed: u32,
        /// The version the plan would install.
        planned: u32,
    },
    /// A module signed with a security counter below the device's.
    BelowSecurityCounter {
        /// The module's slot and version.
        module: (Slot, u32),
        /// Its statement's counter.
        module_counter: u64,
        /// The device's counter.
        device_counter: u64,
    },
    /// A Device OS release the catalog does not hold whole.
    IncompleteRelease {
        /// The release's system module version.
        version: u32,
        /// A system part of it the catalog lacks.
        missing: Slot,
    },
    /// A module larger than everything one offer can stage on the device.
    TooLarge {
        /// The module's slot and version.
        module: (Slot, u32),
        /// Its staging size in bytes.
        size: u64,
        /// What one offer can stage.
        capacity: u64,
    },
    /// No split of the plan into stages that fit leaves the device's system modules
    /// consistent after every stage.
    NoSafeStages {
        /// What one offer can stage, in bytes.
        capacity: u64,
        /// Module bytes of the plan.
        total: u64,
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
            Error::Downgrade { slot, installed, planned } => write!(
                f,
                "{slot} v{planned} is older than the installed v{installed}: Device OS is not downgraded \
                 unless the operator allows it"
            ),
            Error::BelowSecurityCounter { module: (slot, version), module_counter, device_counter } => write!(
                f,
                "{slot} v{version} is signed with security counter {module_counter}, below the device's \
                 {device_counter}: the device would refuse it"
            ),
            Error::IncompleteRelease { version, missing } => write!(
                f,
                "Device OS {} is not complete in the catalog: {missing} v{version} is missing",
                device_os::label(*version)
            ),
            Error::TooLarge { module: (slot, version), size, capacity } => write!(
                f,
                "{slot} v{version} ({size} bytes) can never fit: the device stages at most {capacity} bytes per offer"
            ),
            Error::NoSafeStages { capacity, total } => write!(
                f,
                "the plan's {total} bytes do not fit one offer ({capacity} bytes) and no split into stages \
                 keeps the device's system modules consistent after each stage"
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
    plan_with(platform_id, installed, requested, catalog, &Options::default())
}

/// [`plan`] with the operator's [`Options`]: a Device OS release to bring the device to,
/// leave to downgrade, and the device's security counter.
pub fn plan_with(
    platform_id: u16,
    installed: &[Installed],
    requested: &[Candidate],
    catalog: &[Candidate],
    options: &Options,
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
        check_module(module, installed, options)?;
        steps.push(Step { module: module.clone(), reason: Reason::Requested });
    }
    // Only what the device would accept can heal it.
    let usable: Vec<Candidate> = catalog
        .iter()
        .filter(|c| c.platform_id == platform_id && c.security_counter >= options.security_counter)
        .cloned()
        .collect();
    if let Some(version) = options.device_os {
        add_release(version, Reason::Target { version }, installed, &mut steps, &usable, options)?;
    }
    resolve(installed, &mut steps, &usable, options)?;
    // A module the device already runs, byte for byte, is not sent again.
    steps.retain(|s| !installed.iter().any(|i| i.slot == s.module.slot && i.sha256 == Some(s.module.sha256)));
    order(installed, &mut steps);
    Ok(Plan { steps })
}

/// Computes the plan that makes a device's installed modules consistent again (every
/// dependency met) from `catalog`, with nothing requested: the safe-mode healer. An empty
/// plan means nothing is missing.
pub fn heal(platform_id: u16, installed: &[Installed], catalog: &[Candidate]) -> Result<Plan, Error> {
    plan(platform_id, installed, &[], catalog)
}

/// Whether `function` is part of Device OS (not the application or its assets).
fn is_device_os(function: ModuleFunction) -> bool {
    !matches!(function, ModuleFunction::UserPart | ModuleFunction::Asset | ModuleFunction::None)
}

/// Refuses a module the device would refuse (security counter) or that downgrades Device
/// OS without leave. [`plan_with`] applies it to every module it plans; callers that plan
/// a fixed set (a release bundle) apply it themselves.
pub fn check_module(module: &Candidate, installed: &[Installed], options: &Options) -> Result<(), Error> {
    if module.security_counter < options.security_counter {
        return Err(Error::BelowSecurityCounter {
            module: (module.slot, module.version),
            module_counter: module.security_counter,
            device_counter: options.security_counter,
        });
    }
    check_downgrade(module.slot, module.version, installed, options)
}

/// Refuses version `version` in Device OS slot `slot` when the device runs a newer one and
/// the operator did not allow downgrades.
fn check_downgrade(slot: Slot, version: u32, installed: &[Installed], options: &Options) -> Result<(), Error> {
    if !options.allow_downgrade && is_device_os(slot.function) {
        if let Some(old) = installed.iter().find(|i| i.slot == slot && i.version > version) {
            return Err(Error::Downgrade { slot, installed: old.version, planned: version });
        }
    }
    Ok(())
}

/// The system part indexes a release must cover on this device: those it has installed
/// or planned, plus `extra`.
fn system_indexes(installed: &[Installed], steps: &[Step], extra: Option<u8>) -> Vec<u8> {
    let mut indexes: Vec<u8> = installed
        .iter()
        .map(|i| i.slot)
        .chain(steps.iter().map(|s| s.module.slot))
        .filter(|slot| slot.function == ModuleFunction::SystemPart)
        .map(|slot| slot.index)
        .chain(extra)
        .collect();
    indexes.sort_unstable();
    indexes.dedup();
    indexes
}

/// Plans every system part of Device OS release `version` the device does not already run
/// at that version: the part that brought the release in keeps its own reason, the others
/// are [`Reason::SameRelease`] (or `reason` for all when the operator named the release).
fn add_release(
    version: u32,
    reason: Reason,
    installed: &[Installed],
    steps: &mut Vec<Step>,
    catalog: &[Candidate],
    options: &Options,
) -> Result<(), Error> {
    for index in system_indexes(installed, steps, None) {
        let slot = Slot { function: ModuleFunction::SystemPart, index };
        if installed.iter().any(|i| i.slot == slot && i.version == version)
            && !steps.iter().any(|s| s.module.slot == slot)
        {
            continue;
        }
        match steps.iter().find(|s| s.module.slot == slot) {
            Some(step) if step.module.version == version => continue,
            Some(step) => {
                return Err(Error::Conflict {
                    needed_by: (slot, step.module.version),
                    requirement: Dependency { function: slot.function, index, version },
                    planned_version: step.module.version,
                })
            }
            None => {}
        }
        // A downgrade is refused whether or not the catalog has the release.
        check_downgrade(slot, version, installed, options)?;
        let module = catalog
            .iter()
            .find(|c| c.slot == slot && c.version == version)
            .ok_or(Error::IncompleteRelease { version, missing: slot })?;
        check_module(module, installed, options)?;
        steps.push(Step { module: module.clone(), reason: reason.clone() });
    }
    Ok(())
}

/// The lowest Device OS release (system module version) at least `min` that the catalog
/// holds whole for `indexes`, and not older than any installed system part unless the
/// operator allows downgrades.
fn lowest_release(
    min: u32,
    indexes: &[u8],
    installed: &[Installed],
    catalog: &[Candidate],
    options: &Options,
) -> Option<u32> {
    let floor = if options.allow_downgrade {
        0
    } else {
        installed.iter().filter(|i| i.slot.function == ModuleFunction::SystemPart).map(|i| i.version).max().unwrap_or(0)
    };
    let mut versions: Vec<u32> = catalog
        .iter()
        .filter(|c| c.slot.function == ModuleFunction::SystemPart && c.version >= min.max(floor))
        .map(|c| c.version)
        .collect();
    versions.sort_unstable();
    versions.dedup();
    versions.into_iter().find(|&v| {
        indexes.iter().all(|&index| {
            let slot = Slot { function: ModuleFunction::SystemPart, index };
            catalog.iter().any(|c| c.slot == slot && c.version == v)
        })
    })
}

/// Adds catalog modules to `steps` until every dependency of every planned module, and of
/// every installed module the plan keeps, is met, and every planned system part has the
/// rest of its Device OS release with it.
fn resolve(
    installed: &[Installed],
    steps: &mut Vec<Step>,
    catalog: &[Candidate],
    options: &Options,
) -> Result<(), Error> {
    // Each round either finds everything met or adds modules to slots not yet planned, so
    // the loop ends after at most one round per catalog slot.
    loop {
        // System parts travel together.
        let release =
            steps.iter().find(|s| s.module.slot.function == ModuleFunction::SystemPart).map(|s| s.module.version);
        if let Some(version) = release {
            add_release(version, Reason::SameRelease { version }, installed, steps, catalog, options)?;
        }
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
        let reason = Reason::Dependency { needed_by, requirement };
        if slot.function == ModuleFunction::SystemPart {
            let indexes = system_indexes(installed, steps, Some(slot.index));
            let version = lowest_release(requirement.version, &indexes, installed, catalog, options)
                .ok_or(Error::Unsatisfiable { needed_by, requirement })?;
            let module = catalog
                .iter()
                .find(|c| c.slot == slot && c.version == version)
                .ok_or(Error::Unsatisfiable { needed_by, requirement })?;
            steps.push(Step { module: module.clone(), reason });
            continue;
        }
        // The bootloader shipped with the planned Device OS release, when the catalog has
        // it and it is enough; else the lowest sufficient version.
        let shipped = (slot.function == ModuleFunction::Bootloader)
            .then(|| release.and_then(|v| device_os::by_system_version(v)?.bootloader_version))
            .flatten()
            .filter(|&b| b >= requirement.version)
            .and_then(|b| catalog.iter().find(|c| c.slot == slot && c.version == b));
        let best = shipped
            .or_else(|| {
                catalog.iter().filter(|c| c.slot == slot && c.version >= requirement.version).min_by_key(|c| c.version)
            })
            .ok_or(Error::Unsatisfiable { needed_by, requirement })?;
        steps.push(Step { module: best.clone(), reason });
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
