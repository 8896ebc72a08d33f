//! Stages: a plan split into offers that each fit what the device can stage at once.
//!
//! A device stages every module of an offer in its exchange area before installing any,
//! so an update larger than that area (a Photon's bootloader and two system parts, over
//! 500 KB, against 256 KiB) must go in several offers, one reboot each — what Particle's
//! devices do, one system part at a time. The device's agent accepts an offer only if,
//! after it, every system module's dependencies are met (so the device can always boot at
//! least safe mode); an application whose dependencies are unmet runs safe mode until a
//! later stage meets them. [`stages`] finds the split with the fewest stages that
//! satisfies both, trying the plan's install order first.

use crate::{dep_slot, Error, Installed, Plan, Slot, Step};
use tern_image::{Dependency, ModuleFunction};

/// What one offer can carry on a device, as the device describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// The most module bytes one offer may stage, each module rounded up to `block_size`.
    pub staging_bytes: u64,
    /// The most modules one offer may list.
    pub max_modules: usize,
    /// The unit module sizes are rounded up to.
    pub block_size: u64,
}

impl Capacity {
    /// Staging bytes a module of `size` bytes takes.
    pub fn staged_size(&self, size: u64) -> u64 {
        let unit = self.block_size.max(1);
        size.div_ceil(unit) * unit
    }
}

/// What the device runs after a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Its application, every dependency met.
    Normal,
    /// Safe mode: the application needs this, which a later stage brings.
    SafeMode(Dependency),
}

/// One offer of a staged plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage {
    /// Positions in the plan's steps (after [`stages`] reorders them, consecutive).
    pub steps: Vec<usize>,
    /// Module bytes of the stage.
    pub bytes: u64,
    /// What the device runs after it.
    pub expect: Expect,
}

/// The device's modules after `steps` are installed over `installed`: (slot, version,
/// dependencies) for every slot.
fn after<'a>(installed: &'a [Installed], steps: &[&'a Step]) -> Vec<(Slot, u32, &'a [Dependency])> {
    let mut state: Vec<(Slot, u32, &[Dependency])> =
        installed.iter().map(|i| (i.slot, i.version, &i.dependencies[..])).collect();
    for step in steps {
        state.retain(|(slot, _, _)| *slot != step.module.slot);
        state.push((step.module.slot, step.module.version, &step.module.dependencies[..]));
    }
    state
}

/// Whether the device's agent accepts `stage` on a device holding `before` + `done`, and
/// what the device runs afterwards. Mirrors `tern_device`'s rule: every module's
/// dependencies are met after the stage, except the application's, which may stay unmet
/// (safe mode) when the stage does not touch the slot it needs.
fn check(installed: &[Installed], done: &[&Step], stage: &[&Step]) -> Option<Expect> {
    let all: Vec<&Step> = done.iter().chain(stage.iter()).copied().collect();
    let state = after(installed, &all);
    let mut expect = Expect::Normal;
    for (slot, _, deps) in &state {
        // The application slot, whatever index the platform links applications at (2 on
        // Device OS 3.1 and later Gen 3 layouts).
        let is_app = slot.function == ModuleFunction::UserPart;
        for dep in deps.iter().filter(|d| d.function != ModuleFunction::None) {
            let needed = dep_slot(dep);
            let met = state.iter().any(|(s, v, _)| *s == needed && *v >= dep.version);
            if met {
                continue;
            }
            let touched = stage.iter().any(|s| s.module.slot == needed);
            if !is_app || touched {
                return None;
            }
            if expect == Expect::Normal {
                expect = Expect::SafeMode(*dep);
            }
        }
    }
    Some(expect)
}

/// The fewest stages over `order` (positions into `steps`), by dynamic programming over
/// where each stage ends.
fn split(installed: &[Installed], steps: &[Step], order: &[usize], capacity: &Capacity) -> Option<Vec<Stage>> {
    let n = order.len();
    // best[j]: the fewest stages covering order[..j], with the previous boundary.
    let mut best: Vec<Option<(usize, usize, Expect)>> = vec![None; n + 1];
    best[0] = Some((0, 0, Expect::Normal));
    for end in 1..=n {
        for start in (0..end).rev() {
            let Some((count, _, _)) = best[start] else { continue };
            let stage: Vec<&Step> = order[start..end].iter().map(|&i| &steps[i]).collect();
            let bytes: u64 = stage.iter().map(|s| capacity.staged_size(s.module.size)).sum();
            if stage.len() > capacity.max_modules || bytes > capacity.staging_bytes {
                // Longer stages ending here only grow.
                break;
            }
            let done: Vec<&Step> = order[..start].iter().map(|&i| &steps[i]).collect();
            let Some(expect) = check(installed, &done, &stage) else { continue };
            if best[end].as_ref().is_none_or(|(c, _, _)| count + 1 < *c) {
                best[end] = Some((count + 1, start, expect));
            }
        }
    }
    let mut stages = Vec::new();
    let mut end = n;
    while end > 0 {
        let (_, start, expect) = best[end].clone()?;
        let bytes = order[start..end].iter().map(|&i| steps[i].module.size).sum();
        stages.push(Stage { steps: order[start..end].to_vec(), bytes, expect });
        end = start;
    }
    stages.reverse();
    Some(stages)
}

/// Calls `f` with every permutation of `items` (Heap's algorithm), stopping when it
/// returns true.
fn permutations(items: &mut [usize], k: usize, f: &mut impl FnMut(&[usize]) -> bool) -> bool {
    if k <= 1 {
        return f(items);
    }
    for i in 0..k - 1 {
        if permutations(items, k - 1, f) {
            return true;
        }
        if k % 2 == 0 {
            items.swap(i, k - 1);
        } else {
            items.swap(0, k - 1);
        }
    }
    permutations(items, k - 1, f)
}

/// Splits `plan` (for a device running `installed`) into stages that each fit `capacity`
/// and each leave the device's system modules consistent; reorders `plan.steps` so that
/// every stage is a consecutive run of steps. The install order is kept when any safe
/// split exists in it; otherwise other orders are tried (plans have a handful of steps).
/// One stage when everything fits at once.
pub fn stages(plan: &mut Plan, installed: &[Installed], capacity: &Capacity) -> Result<Vec<Stage>, Error> {
    for step in &plan.steps {
        let size = capacity.staged_size(step.module.size);
        if size > capacity.staging_bytes || capacity.max_modules == 0 {
            return Err(Error::TooLarge {
                module: (step.module.slot, step.module.version),
                size: step.module.size,
                capacity: capacity.staging_bytes,
            });
        }
    }
    let no_split = || Error::NoSafeStages { capacity: capacity.staging_bytes, total: plan.module_bytes() };
    let n = plan.steps.len();
    let natural: Vec<usize> = (0..n).collect();
    let mut found = split(installed, &plan.steps, &natural, capacity);
    // Beyond eight steps the search would be slow; plans carry at most a dozen modules and
    // real ones a handful.
    if found.is_none() && n <= 8 {
        let mut best: Option<Vec<Stage>> = None;
        let mut items = natural.clone();
        permutations(&mut items, n, &mut |order| {
            if let Some(candidate) = split(installed, &plan.steps, order, capacity) {
                if best.as_ref().is_none_or(|b| candidate.len() < b.len()) {
                    best = Some(candidate);
                }
            }
            false
        });
        found = best;
    }
    let mut stages = found.ok_or_else(no_split)?;
    // Reorder the steps so that each stage is consecutive.
    let order: Vec<usize> = stages.iter().flat_map(|s| s.steps.iter().copied()).collect();
    let mut old: Vec<Option<Step>> = std::mem::take(&mut plan.steps).into_iter().map(Some).collect();
    plan.steps = order.iter().filter_map(|&i| old[i].take()).collect();
    let mut next = 0;
    for stage in &mut stages {
        let len = stage.steps.len();
        stage.steps = (next..next + len).collect();
        next += len;
    }
    Ok(stages)
}
