//! Scenarios with real Device OS binaries from the corpus, installed at their real
//! addresses.
//!
//! The manifest entries are made from the facts each file's `module_info` prefix states
//! (start address, version, function, index, dependencies). This is a minimal reader of
//! just those fields for building test manifests; Tern's Particle parser lives in the
//! image crate.

use std::path::Path;

use tern_device::profile::{Profile, BORON, NRF52840, PHOTON, STM32F2};
use tern_image::model::{Dependency, Format, ModuleFunction};

use crate::device::{entry, Behaviour, Image};
use crate::scenario::{Expect, Scenario, Task};

/// Reads a corpus module and describes it from its prefix (found at offset 0, 0x184 or
/// 0x200 — after the vector table — whichever names `platform`).
pub fn module(path: &Path, platform: u16) -> Result<Image, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for at in [0usize, 0x184, 0x200] {
        let Some(p) = bytes.get(at..at + 24).map(<[u8]>::to_vec) else { continue };
        let le32 = |k: usize| u32::from_le_bytes([p[k], p[k + 1], p[k + 2], p[k + 3]]);
        let le16 = |k: usize| u16::from_le_bytes([p[k], p[k + 1]]);
        let (start, end) = (le32(0), le32(4));
        if le16(12) != platform || end <= start || (end - start) as usize + 4 != bytes.len() {
            continue;
        }
        let mut deps = Vec::new();
        for k in [16, 20] {
            if p[k] != 0 {
                deps.push(Dependency {
                    function: ModuleFunction::from_code(p[k]),
                    index: p[k + 1],
                    version: u32::from(le16(k + 2)),
                });
            }
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let facts = entry(ModuleFunction::from_code(p[14]), p[15], u32::from(le16(10)), start, &deps, Format::Particle);
        return Ok(Image::new(&name, bytes, facts));
    }
    Err(format!("{}: no module_info prefix for platform {platform}", path.display()))
}

fn scenario(
    profile: &'static Profile,
    name: &str,
    dir: &Path,
    initial: &[&str],
    new: &str,
    app_dep: Dependency,
) -> Result<Scenario, String> {
    let rel = dir.join("particle/releases");
    let load = |f: &str| module(&rel.join(f), profile.platform_id);
    let mut images: Vec<Image> = initial.iter().map(|f| load(f)).collect::<Result<_, _>>()?;
    let app = profile.app_index();
    images.push(Image::synthetic(profile, ModuleFunction::UserPart, app, 1, &[app_dep], Behaviour::Healthy, 3000));
    let factory = Image::synthetic(profile, ModuleFunction::UserPart, app, 0, &[app_dep], Behaviour::Healthy, 2000);
    let new = load(new)?;
    let documents = vec![Scenario::sign(profile, std::slice::from_ref(&new), 1)];
    Ok(Scenario {
        name: name.to_string(),
        profile,
        initial: images,
        factory,
        tasks: vec![Task::Update {
            documents,
            modules: vec![new.clone()],
            wait_confirm: true,
            expect_fail: false,
            reset_after_blocks: None,
            patches: Vec::new(),
        }],
        expect: Expect::New(vec![new]),
        staged: false,
    })
}

/// A Device OS upgrade with real modules installed in stages, one offer per stage (each
/// stage's modules signed as one release with the next security counter), on a device
/// that runs `initial` and a synthetic application needing `app_dep`.
pub fn staged(
    profile: &'static Profile,
    name: &str,
    dir: &Path,
    initial: &[&str],
    stages: &[&[&str]],
    app_dep: Dependency,
) -> Result<Scenario, String> {
    let rel = dir.join("particle/releases");
    let load = |f: &str| module(&rel.join(f), profile.platform_id);
    let app = profile.app_index();
    let mut images: Vec<Image> = initial.iter().map(|f| load(f)).collect::<Result<_, _>>()?;
    images.push(Image::synthetic(profile, ModuleFunction::UserPart, app, 1, &[app_dep], Behaviour::Healthy, 3000));
    let factory = Image::synthetic(profile, ModuleFunction::UserPart, app, 0, &[app_dep], Behaviour::Healthy, 2000);
    let mut tasks = Vec::new();
    let mut all = Vec::new();
    for (k, files) in (1u64..).zip(stages) {
        let modules: Vec<Image> = files.iter().map(|f| load(f)).collect::<Result<_, _>>()?;
        tasks.push(Task::Update {
            documents: vec![Scenario::sign(profile, &modules, k)],
            modules: modules.clone(),
            wait_confirm: true,
            expect_fail: false,
            reset_after_blocks: None,
            patches: Vec::new(),
        });
        all.extend(modules);
    }
    Ok(Scenario {
        name: name.to_string(),
        profile,
        initial: images,
        factory,
        tasks,
        expect: Expect::New(all),
        staged: true,
    })
}

/// Photon Device OS 1.5.2 → 2.3.1 as a Photon takes it: bootloader, then system part 1,
/// then system part 2 (517 KiB in all; the exchange area stages 256 KiB). Each stage
/// leaves every system module's dependencies met: part 1 2.3.1 needs part 2 ≥ 207, which
/// 1.5.2 is; part 2 2.3.1 needs part 1 2.3.1 and bootloader ≥ 1003, installed before it.
pub fn photon_staged(dir: &Path) -> Result<Scenario, String> {
    staged(
        &PHOTON,
        "photon-1.5.2-to-2.3.1-bootloader-and-system-parts-staged",
        dir,
        &["photon-bootloader@1.5.2+lto.bin", "photon-system-part1@1.5.2.bin", "photon-system-part2@1.5.2.bin"],
        &[&["photon-bootloader@2.3.1+lto.bin"], &["photon-system-part1@2.3.1.bin"], &["photon-system-part2@2.3.1.bin"]],
        Dependency { function: ModuleFunction::SystemPart, index: 2, version: 1512 },
    )
}

/// Boron Device OS 1.5.2 → 2.0.1 with its SoftDevice: bootloader 2.0.1 with the
/// SoftDevice first (system part 1 2.0.1 needs bootloader ≥ 1005; the SoftDevice needs
/// bootloader ≥ 401 and system part 1 ≥ 1321, which 1.5.2 is), then system part 1 2.0.1.
/// The exchange area would hold all three at once; two stages keep the exhaustive sweep's
/// time down (it grows with the square of a stage's flash operations). The corpus has
/// one SoftDevice version (s140 6.1.1, module version 202), so it is re-installed as is.
pub fn boron_staged(dir: &Path) -> Result<Scenario, String> {
    staged(
        &BORON,
        "boron-1.5.2-to-2.0.1-bootloader-softdevice-system-part-staged",
        dir,
        &["boron-softdevice@1.4.1.bin", "boron-bootloader@1.5.2.bin", "boron-system-part1@1.5.2.bin"],
        &[&["boron-bootloader@2.0.1.bin", "boron-softdevice@1.4.1.bin"], &["boron-system-part1@2.0.1.bin"]],
        Dependency { function: ModuleFunction::SystemPart, index: 1, version: 1512 },
    )
}

/// The real-corpus scenarios of the power-cut sweep: the staged upgrades [`photon_staged`]
/// (Gen 2) and [`boron_staged`] (Gen 3).
pub fn scenarios(dir: &Path) -> Result<Vec<Scenario>, String> {
    Ok(vec![photon_staged(dir)?, boron_staged(dir)?])
}

/// Single-offer upgrades of one real system part: Photon system part 2 2.3.0 → 2.3.1 and
/// Argon system part 1 4.0.1 → 4.0.2 (not in the default sweep: the staged upgrades
/// install the same kinds of module on the same layouts).
pub fn single_module_scenarios(dir: &Path) -> Result<Vec<Scenario>, String> {
    let part = |i| Dependency { function: ModuleFunction::SystemPart, index: i, version: 2301 };
    let photon = scenario(
        &STM32F2,
        "photon-system-part2-2.3.0-to-2.3.1",
        dir,
        &["photon-bootloader@2.3.1+lto.bin", "photon-system-part1@2.3.1.bin", "photon-system-part2@2.3.0.bin"],
        "photon-system-part2@2.3.1.bin",
        part(2),
    );
    let argon = scenario(
        &NRF52840,
        "argon-system-part1-4.0.1-to-4.0.2",
        dir,
        &["argon-softdevice@4.1.0.bin", "argon-bootloader@4.0.2.bin", "argon-system-part1@4.0.1.bin"],
        "argon-system-part1@4.0.2.bin",
        Dependency { function: ModuleFunction::SystemPart, index: 1, version: 4000 },
    );
    Ok(vec![photon?, argon?])
}
