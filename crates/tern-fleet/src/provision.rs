//! Factory programming of new simulated devices.
//!
//! A device needs a bootloader, system modules and an application before its first boot.
//! [`synthetic`] makes a complete set of small synthetic modules for a profile (what
//! `tern sim device` uses when its state directory is empty); [`corpus_photon`] and
//! [`corpus_argon`] install real Device OS modules from the corpus at their real
//! addresses, with a synthetic application; [`with_images`] installs any set, such as a
//! release of the synthetic Device OS in [`device_os`](crate::device_os).

use std::path::Path;

use ed25519_dalek::VerifyingKey;
use tern_device::profile::{Profile, NRF52840, STM32F2};
use tern_image::model::{Dependency, ModuleFunction};
use tern_sim::device::{Behaviour, Image, SimDevice};

/// Size of the synthetic modules [`synthetic`] makes.
pub const SYNTHETIC_SIZE: usize = 4 * 1024 + 100;

fn dep(function: ModuleFunction, index: u8, version: u32) -> Dependency {
    Dependency { function, index, version }
}

/// The modules of a synthetic device: bootloader 10, system part(s) 100 (and radio stack
/// 200 on the nRF52840 profile), application 1 with `behaviour` needing system part 1
/// version 100; and a factory application (version 0, healthy).
pub fn synthetic_images(profile: &'static Profile, behaviour: Behaviour) -> (Vec<Image>, Image) {
    use ModuleFunction::*;
    let img = |f, i, v, deps: &[Dependency], b| Image::synthetic(profile, f, i, v, deps, b, SYNTHETIC_SIZE);
    let mut set =
        vec![img(Bootloader, 0, 10, &[], Behaviour::Healthy), img(SystemPart, 1, 100, &[], Behaviour::Healthy)];
    if profile.slot_for(SystemPart, 2).is_some() {
        set.push(img(SystemPart, 2, 100, &[dep(SystemPart, 1, 100)], Behaviour::Healthy));
    }
    if profile.slot_for(RadioStack, 0).is_some() {
        set.push(img(RadioStack, 0, 200, &[], Behaviour::Healthy));
    }
    let app_dep = [dep(SystemPart, 1, 100)];
    let app = profile.app_index();
    set.push(img(UserPart, app, 1, &app_dep, behaviour));
    let factory = Image::synthetic(profile, UserPart, app, 0, &app_dep, Behaviour::Healthy, 2 * 1024);
    (set, factory)
}

/// A new device with the [`synthetic_images`] installed and confirmed.
pub fn synthetic(
    profile: &'static Profile,
    keys: Vec<VerifyingKey>,
    behaviour: Behaviour,
) -> Result<SimDevice, String> {
    let (set, factory) = synthetic_images(profile, behaviour);
    let mut dev = SimDevice::new(profile, keys);
    let refs: Vec<&Image> = set.iter().collect();
    dev.provision(&refs, Some(&factory))?;
    Ok(dev)
}

/// A new device with `installed` (bootloader, system modules) and `app` in their slots and
/// `factory` as its factory application, all confirmed: for example a release of
/// [`device_os`](crate::device_os) and one of its applications.
pub fn with_images(
    profile: &'static Profile,
    keys: Vec<VerifyingKey>,
    installed: &[Image],
    app: Image,
    factory: Image,
) -> Result<SimDevice, String> {
    let mut dev = SimDevice::new(profile, keys);
    let refs: Vec<&Image> = installed.iter().chain([&app]).collect();
    dev.provision(&refs, Some(&factory))?;
    Ok(dev)
}

fn corpus_device(
    profile: &'static Profile,
    keys: Vec<VerifyingKey>,
    corpus: &Path,
    files: &[&str],
    app: Image,
    factory: Image,
) -> Result<(SimDevice, Vec<Image>), String> {
    let dir = corpus.join("particle/releases");
    let mut set: Vec<Image> =
        files.iter().map(|f| tern_sim::corpus::module(&dir.join(f), profile.platform_id)).collect::<Result<_, _>>()?;
    set.push(app);
    let mut dev = SimDevice::new(profile, keys);
    let refs: Vec<&Image> = set.iter().collect();
    dev.provision(&refs, Some(&factory))?;
    Ok((dev, set))
}

/// A Photon (STM32F2 profile) with the corpus bootloader 2.3.1, system part 1 2.3.1 and
/// system part 2 `part2` (e.g. `"2.3.0"`), and `app` installed; returns the installed images.
pub fn corpus_photon(
    keys: Vec<VerifyingKey>,
    corpus: &Path,
    part2: &str,
    app: Image,
    factory: Image,
) -> Result<(SimDevice, Vec<Image>), String> {
    let part2 = format!("photon-system-part2@{part2}.bin");
    let files = ["photon-bootloader@2.3.1+lto.bin", "photon-system-part1@2.3.1.bin", part2.as_str()];
    corpus_device(&STM32F2, keys, corpus, &files, app, factory)
}

/// An Argon (nRF52840 profile) with the corpus SoftDevice 4.1.0, bootloader 4.0.2 and
/// system part 1 `part1` (e.g. `"4.0.1"`), and `app` installed; returns the installed images.
pub fn corpus_argon(
    keys: Vec<VerifyingKey>,
    corpus: &Path,
    part1: &str,
    app: Image,
    factory: Image,
) -> Result<(SimDevice, Vec<Image>), String> {
    let part1 = format!("argon-system-part1@{part1}.bin");
    let files = ["argon-softdevice@4.1.0.bin", "argon-bootloader@4.0.2.bin", part1.as_str()];
    corpus_device(&NRF52840, keys, corpus, &files, app, factory)
}
