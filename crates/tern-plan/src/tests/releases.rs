//! Device OS releases and stages, on the real releases of the corpus: the upgrades users
//! run (Photon 1.5.2 → 2.3.1, Electron 1.4.4 → 1.5.2, Boron 1.5.2 → 2.0.1, Tracker 2.0.1
//! → 2.3.0), planned whole and coherent, then split to fit the device.

use super::*;

/// A Gen 2 exchange area (256 KiB), 1 KiB blocks.
const GEN2: Capacity = Capacity { staging_bytes: 256 * 1024, max_modules: 4, block_size: 1024 };
/// A Gen 3 exchange area on external flash (2 MiB).
const GEN3: Capacity = Capacity { staging_bytes: 2048 * 1024, max_modules: 4, block_size: 1024 };

fn target(release: &str) -> Options {
    Options { device_os: Some(device_os::parse_target(release).unwrap()), ..Options::default() }
}

/// A module the corpus lacks (the Electron's bootloader, the Tracker's SoftDevice), as
/// the device would describe it.
fn described(function: ModuleFunction, version: u32) -> Installed {
    Installed { slot: Slot { function, index: 0 }, version, dependencies: vec![], sha256: None }
}

/// Every stage fits, and after every stage each system module's dependencies are met on
/// the device (what the device's agent requires before it accepts an offer).
fn assert_stages_are_safe(device: &[Installed], plan: &Plan, stages: &[Stage], capacity: &Capacity) {
    let mut state: Vec<(Slot, u32, Vec<Dependency>)> =
        device.iter().map(|i| (i.slot, i.version, i.dependencies.clone())).collect();
    let mut seen = 0;
    for stage in stages {
        assert_eq!(stage.steps.first(), Some(&seen), "stages are consecutive runs");
        seen += stage.steps.len();
        let staged: u64 = stage.steps.iter().map(|&i| capacity.staged_size(plan.steps[i].module.size)).sum();
        assert!(staged <= capacity.staging_bytes, "stage of {staged} bytes");
        for &i in &stage.steps {
            let m = &plan.steps[i].module;
            state.retain(|(s, _, _)| *s != m.slot);
            state.push((m.slot, m.version, m.dependencies.clone()));
        }
        for (slot, version, deps) in &state {
            if slot.function == ModuleFunction::UserPart {
                continue;
            }
            for d in deps {
                let met = state.iter().any(|(s, v, _)| *s == d.slot() && *v >= d.version);
                assert!(met, "after a stage, {slot} v{version} needs {d:?}");
            }
        }
    }
    assert_eq!(seen, plan.steps.len());
}

#[test]
fn photon_to_2_3_1_is_one_release_in_two_stages() {
    let cat = catalog();
    let device = installed(&cat, PHOTON_152);
    let mut plan = plan_with(6, &device, &[], &candidates(&cat), &target("2.3.1")).unwrap();
    let mut steps = names(&cat, &plan);
    steps.sort();
    assert_eq!(
        steps,
        ["photon-bootloader@2.3.1+lto.bin", "photon-system-part1@2.3.1.bin", "photon-system-part2@2.3.1.bin"],
        "the bootloader shipped with 2.3.1 and both of its system parts, nothing else"
    );
    assert!(plan.module_bytes() > GEN2.staging_bytes, "does not fit one Photon exchange area");
    let stages = stages(&mut plan, &device, &GEN2).unwrap();
    assert_eq!(stages.len(), 2, "{stages:?}");
    assert_stages_are_safe(&device, &plan, &stages, &GEN2);
    assert!(stages.iter().all(|s| s.expect == Expect::Normal));
    assert_eq!(stages.iter().map(|s| s.bytes).sum::<u64>(), plan.module_bytes());
}

#[test]
fn asking_for_one_system_part_brings_its_release_not_a_mixture() {
    // The field report: part 1 of 2.3.1 asked for, part 2 and the bootloader added at the
    // lowest sufficient versions of each (v1213, v311): a set never released together.
    let cat = catalog();
    let device = installed(&cat, PHOTON_152);
    let part1 = find(&cat, "photon-system-part1@2.3.1.bin").candidate.clone();
    let plan = plan(6, &device, &[part1], &candidates(&cat)).unwrap();
    let mut steps = names(&cat, &plan);
    steps.sort();
    assert_eq!(
        steps,
        ["photon-bootloader@2.3.1+lto.bin", "photon-system-part1@2.3.1.bin", "photon-system-part2@2.3.1.bin"]
    );
}

#[test]
fn heal_uses_the_lowest_complete_release_and_stages_through_safe_mode() {
    let cat = catalog();
    let mut device = installed(&cat, PHOTON_152);
    // An application built for 2.3.1: it needs part 2 v2302; the device runs safe mode.
    let app_dep = Dependency { function: ModuleFunction::SystemPart, index: 2, version: 2302 };
    device.push(Installed {
        slot: Slot { function: ModuleFunction::UserPart, index: 1 },
        version: 9,
        dependencies: vec![app_dep],
        sha256: None,
    });
    let mut plan = heal(6, &device, &candidates(&cat)).unwrap();
    assert!(plan
        .steps
        .iter()
        .filter(|s| s.module.slot.function == ModuleFunction::SystemPart)
        .all(|s| s.module.version == 2302));
    let stages = stages(&mut plan, &device, &GEN2).unwrap();
    assert_eq!(stages.len(), 2);
    assert_stages_are_safe(&device, &plan, &stages, &GEN2);
    // Until part 2 arrives the application still cannot run: the first stage says so.
    assert_eq!(stages[0].expect, Expect::SafeMode(app_dep));
    assert_eq!(stages[1].expect, Expect::Normal);
}

#[test]
fn electron_three_parts_in_stages_that_fit() {
    let cat = catalog();
    let mut device = installed(
        &cat,
        &["electron-system-part1@1.4.4.bin", "electron-system-part2@1.4.4.bin", "electron-system-part3@1.4.4.bin"],
    );
    device.push(described(ModuleFunction::Bootloader, 501));
    let mut plan = plan_with(10, &device, &[], &candidates(&cat), &target("1.5.2")).unwrap();
    assert_eq!(plan.steps.len(), 3, "{:?}", names(&cat, &plan));
    assert!(plan.steps.iter().all(|s| s.module.version == 1512));
    let stages = stages(&mut plan, &device, &GEN2).unwrap();
    assert_eq!(stages.len(), 2, "{stages:?}");
    assert_stages_are_safe(&device, &plan, &stages, &GEN2);
    // With room for everything, one stage.
    let stages = super::super::stages(&mut plan, &device, &GEN3).unwrap();
    assert_eq!(stages.len(), 1);
}

#[test]
fn boron_and_tracker_take_their_bootloader_with_the_system_part() {
    let cat = catalog();
    let boron =
        installed(&cat, &["boron-bootloader@1.5.2.bin", "boron-softdevice@1.4.1.bin", "boron-system-part1@1.5.2.bin"]);
    let mut plan = plan_with(13, &boron, &[], &candidates(&cat), &target("2.0.1")).unwrap();
    let mut steps = names(&cat, &plan);
    steps.sort();
    assert_eq!(steps, ["boron-bootloader@2.0.1.bin", "boron-system-part1@2.0.1.bin"]);
    let stages = stages(&mut plan, &boron, &GEN3).unwrap();
    assert_eq!(stages.len(), 1);
    assert_stages_are_safe(&boron, &plan, &stages, &GEN3);

    let mut tracker = installed(&cat, &["tracker-bootloader@2.0.1.bin", "tracker-system-part1@2.0.1.bin"]);
    tracker.push(described(ModuleFunction::RadioStack, 202));
    let plan = plan_with(26, &tracker, &[], &candidates(&cat), &target("2.3.0")).unwrap();
    let mut steps = names(&cat, &plan);
    steps.sort();
    assert_eq!(steps, ["tracker-bootloader@2.3.0.bin", "tracker-system-part1@2.3.0.bin"]);
}

#[test]
fn no_downgrade_of_device_os_without_leave() {
    let cat = catalog();
    let device = installed(&cat, PHOTON_152);
    let err = plan_with(6, &device, &[], &candidates(&cat), &target("1.4.4")).unwrap_err();
    assert!(matches!(err, Error::Downgrade { installed: 1512, planned: 1406, .. }), "{err:?}");
    let allowed = Options { allow_downgrade: true, ..target("1.4.4") };
    let plan = plan_with(6, &device, &[], &candidates(&cat), &allowed).unwrap();
    assert!(plan
        .steps
        .iter()
        .filter(|s| s.module.slot.function == ModuleFunction::SystemPart)
        .all(|s| s.module.version == 1406));
    // The release the device already runs: nothing to do.
    assert_eq!(plan_with(6, &device, &[], &candidates(&cat), &target("1.5.2")).unwrap().steps, vec![]);
    // A release missing from the catalog.
    let err = plan_with(6, &device, &[], &candidates(&cat), &target("6.2.0")).unwrap_err();
    assert!(matches!(err, Error::IncompleteRelease { version: 6200, .. }), "{err:?}");
}

#[test]
fn security_counter_below_the_device_is_never_planned() {
    let cat = catalog();
    let device = installed(&cat, PHOTON_152);
    // Everything in the catalog is signed with counter 0 except 2.3.1, signed with 5.
    let signed: Vec<Candidate> = candidates(&cat)
        .into_iter()
        .map(|mut c| {
            if c.version == 2302 || (c.slot.function == ModuleFunction::Bootloader && c.version == 1006) {
                c.security_counter = 5;
            }
            c
        })
        .collect();
    let options = Options { security_counter: 5, ..Options::default() };
    let p1_201 = signed.iter().find(|c| c.version == 2011 && c.platform_id == 6).unwrap().clone();
    let err = plan_with(6, &device, &[p1_201], &signed, &options).unwrap_err();
    assert!(matches!(err, Error::BelowSecurityCounter { module_counter: 0, device_counter: 5, .. }), "{err:?}");
    assert!(err.to_string().contains("below the device's 5"), "{err}");
    // A heal needing part 2 >= 2011 skips the counter-0 releases (2.0.1 … 2.3.0) for 2.3.1.
    let mut broken = device.clone();
    broken.push(Installed {
        slot: Slot { function: ModuleFunction::UserPart, index: 1 },
        version: 3,
        dependencies: vec![Dependency { function: ModuleFunction::SystemPart, index: 2, version: 2011 }],
        sha256: None,
    });
    let plan = plan_with(6, &broken, &[], &signed, &options).unwrap();
    assert!(plan.steps.iter().all(|s| s.module.security_counter == 5), "{:?}", names(&cat, &plan));
}

#[test]
fn plans_that_can_never_fit_are_refused() {
    let cat = catalog();
    let device = installed(&cat, PHOTON_152);
    let mut plan = plan_with(6, &device, &[], &candidates(&cat), &target("2.3.1")).unwrap();
    let small = Capacity { staging_bytes: 128 * 1024, ..GEN2 };
    let err = stages(&mut plan, &device, &small).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    assert!(err.to_string().contains("can never fit"), "{err}");

    // Two system parts that need each other's new version cannot go one at a time, and
    // together they do not fit.
    let part = |index: u8, other: u8, size: u64| Candidate {
        sha256: [index; 32],
        platform_id: 6,
        slot: Slot { function: ModuleFunction::SystemPart, index },
        version: 2,
        size,
        dependencies: vec![Dependency { function: ModuleFunction::SystemPart, index: other, version: 2 }],
        security_counter: 0,
    };
    let old = |index: u8| Installed {
        slot: Slot { function: ModuleFunction::SystemPart, index },
        version: 1,
        dependencies: vec![],
        sha256: None,
    };
    let device = [old(1), old(2)];
    let mut plan = super::super::plan(6, &device, &[part(1, 2, 200_000), part(2, 1, 200_000)], &[]).unwrap();
    let err = stages(&mut plan, &device, &GEN2).unwrap_err();
    assert!(matches!(err, Error::NoSafeStages { .. }), "{err:?}");
}

#[test]
fn an_application_at_index_2_may_wait_in_safe_mode_like_one_at_index_1() {
    // Gen 3 layouts from Device OS 3.1 (and the E SoM X) link applications at index 2.
    let cat = catalog();
    let mut device = installed(&cat, PHOTON_152);
    let app_dep = Dependency { function: ModuleFunction::SystemPart, index: 2, version: 2302 };
    device.push(Installed {
        slot: Slot { function: ModuleFunction::UserPart, index: 2 },
        version: 9,
        dependencies: vec![app_dep],
        sha256: None,
    });
    let mut plan = heal(6, &device, &candidates(&cat)).unwrap();
    let stages = stages(&mut plan, &device, &GEN2).unwrap();
    assert_eq!(stages.len(), 2, "{stages:?}");
    assert_eq!(stages[0].expect, Expect::SafeMode(app_dep));
}
