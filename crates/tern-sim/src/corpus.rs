//! Scenarios with real Device OS binaries from the corpus, installed at their real
//! addresses.
//!
//! The manifest entries are made from the facts each file's `module_info` prefix states
//! (start address, version, function, index, dependencies). This is a minimal reader of
//! just those fields for building test manifests; Tern's Particle parser lives in the
//! image crate.

use std::path::Path;

use tern_device::profile::{Profile, NRF52840, STM32F2};
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
    images.push(Image::synthetic(profile, ModuleFunction::UserPart, 1, 1, &[app_dep], Behaviour::Healthy, 3000));
    let factory = Image::synthetic(profile, ModuleFunction::UserPart, 1, 0, &[app_dep], Behaviour::Healthy, 2000);
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
        }],
        expect: Expect::New(vec![new]),
    })
}

/// The real-corpus scenarios: Photon system part 2 2.3.0 → 2.3.1 on the STM32F2 profile
/// and Argon system part 1 4.0.1 → 4.0.2 on the nRF52840 profile.
pub fn scenarios(dir: &Path) -> Result<Vec<Scenario>, String> {
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
