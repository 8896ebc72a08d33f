//! Plans over the real Device OS releases in the corpus (Photon and Argon), whose
//! dependencies are exactly what Particle ships, plus crafted edge cases.

use std::path::Path;

use super::*;

/// A catalog entry for a corpus file, named by its file name in the sha256 field's place
/// (tests identify modules by name).
struct Named {
    name: String,
    candidate: Candidate,
}

fn load(path: &Path) -> Named {
    let bytes = std::fs::read(path).unwrap();
    let info = tern_image::inspect(&bytes).info.unwrap_or_else(|| panic!("{} is a module", path.display()));
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut sha256 = [0u8; 32];
    sha256[..name.len().min(32)].copy_from_slice(&name.as_bytes()[..name.len().min(32)]);
    Named {
        name,
        candidate: Candidate {
            sha256,
            platform_id: info.platform_id,
            slot: Slot { function: info.function, index: info.index },
            version: info.version,
            size: bytes.len() as u64,
            dependencies: info.dependencies().copied().collect(),
            security_counter: 0,
        },
    }
}

fn catalog() -> Vec<Named> {
    tern_testkit::corpus_files("particle/releases")
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .map(|p| load(p))
        .collect()
}

fn find<'a>(catalog: &'a [Named], name: &str) -> &'a Named {
    catalog.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("{name} in the corpus"))
}

fn installed(catalog: &[Named], names: &[&str]) -> Vec<Installed> {
    names
        .iter()
        .map(|n| {
            let c = &find(catalog, n).candidate;
            Installed { slot: c.slot, version: c.version, dependencies: c.dependencies.clone(), sha256: Some(c.sha256) }
        })
        .collect()
}

fn names(catalog: &[Named], plan: &Plan) -> Vec<String> {
    plan.steps
        .iter()
        .map(|s| catalog.iter().find(|n| n.candidate == s.module).map(|n| n.name.clone()).unwrap_or("?".into()))
        .collect()
}

fn candidates(catalog: &[Named]) -> Vec<Candidate> {
    catalog.iter().map(|n| n.candidate.clone()).collect()
}

const PHOTON_152: &[&str] =
    &["photon-bootloader@1.5.2+lto.bin", "photon-system-part1@1.5.2.bin", "photon-system-part2@1.5.2.bin"];

#[test]
fn nothing_to_add_when_dependencies_are_met() {
    let cat = catalog();
    let device = installed(&cat, PHOTON_152);
    let part1 = find(&cat, "photon-system-part1@1.5.2.bin").candidate.clone();
    // The device runs these very bytes: nothing is sent.
    let plan = plan(6, &device, &[part1], &candidates(&cat)).unwrap();
    assert_eq!(plan.steps, vec![]);
    assert_eq!(heal(6, &device, &candidates(&cat)).unwrap().steps, vec![], "a consistent device needs nothing");
}

#[test]
fn system_part_2_pulls_in_part_1_and_the_bootloader_in_order() {
    let cat = catalog();
    let device = installed(&cat, PHOTON_152);
    let part2 = find(&cat, "photon-system-part2@2.0.1.bin").candidate.clone();
    let plan = plan(6, &device, std::slice::from_ref(&part2), &candidates(&cat)).unwrap();
    // part2 2.0.1 needs part1 >= its own version and a newer bootloader; the lowest catalog
    // versions that meet those are chosen, and they go first.
    let steps = names(&cat, &plan);
    assert_eq!(steps.last().map(String::as_str), Some("photon-system-part2@2.0.1.bin"));
    assert!(steps.contains(&"photon-system-part1@2.0.1.bin".to_string()), "{steps:?}");
    let boot = plan.steps.iter().position(|s| s.module.slot.function == ModuleFunction::Bootloader);
    let part1 = plan.steps.iter().position(|s| s.module.slot == part2.dependencies[0].slot());
    assert!(boot.is_some() && part1.is_some(), "{steps:?}");
    assert!(boot < Some(plan.steps.len() - 1) && part1 < Some(plan.steps.len() - 1));
    // Every added module says what it is for: part 1 comes with part 2's release.
    for step in &plan.steps[..plan.steps.len() - 1] {
        assert!(matches!(step.reason, Reason::Dependency { .. } | Reason::SameRelease { .. }), "{step:?}");
    }
    assert_eq!(plan.steps[part1.unwrap()].reason, Reason::SameRelease { version: part2.version });
    assert_eq!(plan.module_bytes(), plan.steps.iter().map(|s| s.module.size).sum::<u64>());
    // The bootloader is the one Device OS 2.0.1 shipped with (system-versions.md), which
    // meets the requirement.
    let need = part2.dependencies.iter().find(|d| d.function == ModuleFunction::Bootloader).unwrap().version;
    let chosen = &plan.steps[boot.unwrap()].module;
    assert!(chosen.version >= need);
    assert_eq!(Some(chosen.version), device_os::by_system_version(part2.version).unwrap().bootloader_version);
}

#[test]
fn safe_mode_device_is_healed_from_the_catalog() {
    let cat = catalog();
    let mut device = installed(&cat, PHOTON_152);
    // An application built against Device OS 2.0.1 system part 2, on a 1.5.2 device.
    let part2_201 = find(&cat, "photon-system-part2@2.0.1.bin").candidate.version;
    device.push(Installed {
        slot: Slot { function: ModuleFunction::UserPart, index: 1 },
        version: 6,
        dependencies: vec![Dependency { function: ModuleFunction::SystemPart, index: 2, version: part2_201 }],
        sha256: None,
    });
    let plan = heal(6, &device, &candidates(&cat)).unwrap();
    let steps = names(&cat, &plan);
    assert!(steps.contains(&"photon-system-part2@2.0.1.bin".to_string()), "{steps:?}");
    assert!(steps.contains(&"photon-system-part1@2.0.1.bin".to_string()), "{steps:?}");
    let pos = |n: &str| steps.iter().position(|s| s == n).unwrap();
    assert!(pos("photon-system-part1@2.0.1.bin") < pos("photon-system-part2@2.0.1.bin"), "part 1 before part 2");
    assert!(plan.steps.iter().all(|s| s.module.platform_id == 6), "only Photon modules");
}

#[test]
fn argon_system_part_needs_radio_stack_and_bootloader() {
    let cat = catalog();
    let device =
        installed(&cat, &["argon-bootloader@1.2.1.bin", "argon-softdevice@1.4.1.bin", "argon-system-part1@1.2.1.bin"]);
    let part1 = find(&cat, "argon-system-part1@4.0.2.bin").candidate.clone();
    let plan = plan(12, &device, std::slice::from_ref(&part1), &candidates(&cat)).unwrap();
    let slots: Vec<ModuleFunction> = plan.steps.iter().map(|s| s.module.slot.function).collect();
    // Every dependency of the plan is met once it is installed.
    for (i, step) in plan.steps.iter().enumerate() {
        for d in &step.module.dependencies {
            let after: Vec<(Slot, u32)> = device
                .iter()
                .map(|i| (i.slot, i.version))
                .chain(plan.steps[..i].iter().map(|s| (s.module.slot, s.module.version)))
                .collect();
            let met = after.iter().rev().find(|(s, _)| *s == d.slot()).is_some_and(|(_, v)| *v >= d.version)
                || plan.steps[i + 1..].iter().any(|s| s.module.slot == d.slot() && s.module.version >= d.version);
            assert!(met, "{:?} unmet in {slots:?}", d);
        }
    }
    assert_eq!(slots.last(), Some(&ModuleFunction::SystemPart));
    assert!(slots.contains(&ModuleFunction::Bootloader), "{slots:?}");
}

#[test]
fn errors() {
    let cat = catalog();
    let device = installed(&cat, PHOTON_152);
    let argon = find(&cat, "argon-system-part1@4.0.2.bin").candidate.clone();
    assert!(matches!(plan(6, &device, &[argon], &candidates(&cat)), Err(Error::WrongPlatform { .. })));

    let p1 = find(&cat, "photon-system-part1@1.5.2.bin").candidate.clone();
    assert_eq!(plan(6, &device, &[p1.clone(), p1.clone()], &[]), Err(Error::SameSlotTwice(p1.slot)));

    // Nothing in an empty catalog meets part 2 2.0.1's needs.
    let part2 = find(&cat, "photon-system-part2@2.0.1.bin").candidate.clone();
    let err = plan(6, &device, std::slice::from_ref(&part2), &[]).unwrap_err();
    assert!(matches!(err, Error::IncompleteRelease { .. }), "{err:?}");

    // Downgrading part 1 is refused unless the operator allows it.
    let old_p1 = find(&cat, "photon-system-part1@1.2.1.bin").candidate.clone();
    let err = plan(6, &device, std::slice::from_ref(&old_p1), &candidates(&cat)).unwrap_err();
    assert!(matches!(err, Error::Downgrade { installed: 1512, .. }), "{err:?}");
    assert!(err.to_string().contains("not downgraded unless the operator allows it"), "{err}");
    // Allowed, it brings the whole older release: part 2 of the same version.
    let allow = Options { allow_downgrade: true, ..Options::default() };
    let older = plan_with(6, &device, std::slice::from_ref(&old_p1), &candidates(&cat), &allow).unwrap();
    assert!(older
        .steps
        .iter()
        .filter(|s| s.module.slot.function == ModuleFunction::SystemPart)
        .all(|s| s.module.version == old_p1.version));
    assert_eq!(older.steps.iter().filter(|s| s.module.slot.function == ModuleFunction::SystemPart).count(), 2);

    // A release the catalog lacks a part of cannot be planned.
    let only_p1: Vec<Candidate> = candidates(&cat)
        .into_iter()
        .filter(|c| c.slot.index != 2 || c.slot.function != ModuleFunction::SystemPart)
        .collect();
    let p1_231 = find(&cat, "photon-system-part1@2.3.1.bin").candidate.clone();
    let err = plan(6, &device, &[p1_231], &only_p1).unwrap_err();
    assert!(matches!(err, Error::IncompleteRelease { version: 2302, .. }), "{err:?}");
    assert!(err.to_string().contains("2.3.1 (v2302) is not complete"), "{err}");
}

#[test]
fn release_order_without_a_device() {
    let cat = catalog();
    let mut items: Vec<&Named> =
        ["photon-system-part2@1.5.2.bin", "photon-system-part1@1.5.2.bin", "photon-bootloader@1.5.2+lto.bin"]
            .iter()
            .map(|n| find(&cat, n))
            .collect();
    install_order_by(&[], &mut items, |n| (n.candidate.slot, n.candidate.version, &n.candidate.dependencies[..]));
    let order: Vec<&str> = items.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        order,
        ["photon-bootloader@1.5.2+lto.bin", "photon-system-part1@1.5.2.bin", "photon-system-part2@1.5.2.bin"]
    );
}

trait DepSlot {
    fn slot(&self) -> Slot;
}

impl DepSlot for Dependency {
    fn slot(&self) -> Slot {
        dep_slot(self)
    }
}

mod releases;
