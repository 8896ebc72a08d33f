//! Shared helpers: provisioned devices, synthetic modules and signed documents.

use ed25519_dalek::SigningKey;
use tern_device::profile::Profile;
use tern_image::manifest::build::Document;
use tern_image::manifest::Kind;
use tern_image::model::{Dependency, ModuleFunction};
use tern_proto::{List, OfferedModule, Transfer, MAX_MODULES};
use tern_sim::device::{Behaviour, Image, SimDevice};
use tern_sim::scenario::{scenario_key, synthetic};

/// A device provisioned like `tern-sim`'s synthetic scenarios: bootloader v10, system
/// part 1 v100 (and part 2 v100 on the STM32F2, the radio stack v200 on the nRF52840),
/// application v1 needing system part 1 v100, a factory application.
pub fn device(profile: &'static Profile) -> SimDevice {
    synthetic(profile).into_iter().next().expect("synthetic scenarios exist").provisioned()
}

/// A dependency.
pub fn dep(function: ModuleFunction, index: u8, version: u32) -> Dependency {
    Dependency { function, index, version }
}

/// A healthy synthetic module of `size` bytes for the slot of `function` and `index`.
pub fn module(
    p: &Profile,
    function: ModuleFunction,
    index: u8,
    version: u32,
    deps: &[Dependency],
    size: usize,
) -> Image {
    Image::synthetic(p, function, index, version, deps, Behaviour::Healthy, size)
}

/// A release manifest listing `modules`, signed by the scenarios' key.
pub fn release(p: &Profile, counter: u64, modules: &[&Image]) -> Vec<u8> {
    release_signed_by(p, counter, modules, &scenario_key())
}

/// A release manifest listing `modules`, signed by `key`.
pub fn release_signed_by(p: &Profile, counter: u64, modules: &[&Image], key: &SigningKey) -> Vec<u8> {
    Document {
        kind: Kind::Release,
        platform_id: p.platform_id,
        product_id: 0,
        security_counter: counter,
        created: 1,
        modules: modules.iter().map(|m| m.entry).collect(),
        name: String::new(),
    }
    .sign(key)
    .expect("a valid document")
}

/// The offer's list of `modules`, each travelling as itself.
pub fn offered(modules: &[&Image]) -> List<OfferedModule, MAX_MODULES> {
    let mut list = List::new();
    for m in modules {
        let e = m.entry;
        let module = OfferedModule {
            function: e.function,
            index: e.index,
            version: e.version,
            size: e.size,
            sha256: e.sha256,
            transfer: Transfer::Raw,
        };
        list.push(module).expect("few modules");
    }
    list
}
