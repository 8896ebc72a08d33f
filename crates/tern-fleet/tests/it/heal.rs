//! Acceptance 2 of issue 4 (the device and server half): an application that needs a newer
//! system part than an Argon runs. The plan is computed by `tern-plan` over the server's
//! real catalog (corpus Device OS modules uploaded through the API) and the inventory the
//! device described; it adds the missing system modules in dependency order; the bundle of
//! exactly that plan installs, and the attempt is confirmed.
//!
//! Not covered here: `tern flash FILE...` doing this itself (it takes a signed bundle).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use tern_fleet::{provision, Settings};
use tern_image::model::{Dependency, ModuleFunction};
use tern_plan::{Candidate, Installed, Reason, Slot};
use tern_sim::device::{Behaviour, Image};

use crate::support::{bundle, installed_hashes, release_key, scratch, Device, Server};

const TIMEOUT: Duration = Duration::from_secs(120);
const CATALOG: &[&str] = &[
    "argon-softdevice@4.1.0.bin",
    "argon-bootloader@4.0.2.bin",
    "argon-bootloader@4.1.0.bin",
    "argon-system-part1@4.0.1.bin",
    "argon-system-part1@4.0.2.bin",
    "argon-system-part1@4.1.0.bin",
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn deps(v: &Value) -> Vec<Dependency> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|d| Dependency {
            function: ModuleFunction::from_code(d["function"].as_u64().unwrap() as u8),
            index: d["index"].as_u64().unwrap() as u8,
            version: d["version"].as_u64().unwrap() as u32,
        })
        .collect()
}

fn slot(v: &Value) -> Slot {
    Slot {
        function: ModuleFunction::from_code(v["function"].as_u64().unwrap() as u8),
        index: v["index"].as_u64().unwrap() as u8,
    }
}

fn sha(v: &Value) -> [u8; 32] {
    let s = v["sha256"].as_str().unwrap();
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

#[test]
fn application_needing_newer_system_part_is_healed_in_order_and_confirmed() {
    heal_case(false);
}

/// The same device, but its installed application already needs the newer system part:
/// it boots safe mode and says why; `tern_plan::heal` over the catalog fixes it; the device
/// leaves safe mode and runs its application.
#[test]
fn device_in_safe_mode_is_healed_and_leaves_safe_mode() {
    heal_case(true);
}

fn heal_case(safe_mode: bool) {
    let dir = scratch(if safe_mode { "fleet-heal-safe" } else { "fleet-heal" });
    let server = Server::start(&dir.join("server"));
    let corpus = tern_testkit::corpus();
    let rel = corpus.join("particle/releases");
    // The catalog, uploaded through the API; the bytes by hash for building the bundle.
    let mut files: HashMap<String, Image> = HashMap::new();
    for f in CATALOG {
        let bytes = std::fs::read(rel.join(f)).unwrap();
        let (status, body) = server.post_bytes(&format!("/api/modules?filename={f}"), &bytes);
        assert!(status == 201 || status == 200, "{f}: {status} {body}");
        let image = tern_sim::corpus::module(&rel.join(f), 12).unwrap();
        files.insert(hex(&image.entry.sha256), image);
    }
    let (_, catalog) = server.get("/api/modules");
    let catalog: Vec<Value> =
        catalog.as_array().cloned().unwrap_or_else(|| catalog["modules"].as_array().unwrap().clone());
    let version_of = |f: &str| {
        let image = tern_sim::corpus::module(&rel.join(f), 12).unwrap();
        image.entry.version
    };
    let newest_part1 = version_of("argon-system-part1@4.1.0.bin");

    // The device runs system part 1 4.0.1 and application v1.
    let id = if safe_mode { "argon-safe" } else { "argon-heal" };
    let need = Dependency { function: ModuleFunction::SystemPart, index: 1, version: newest_part1 };
    let secret = server.add_device(id, "argon");
    let profile = &tern_device::NRF52840;
    let old = Dependency {
        function: ModuleFunction::SystemPart,
        index: 1,
        version: version_of("argon-system-part1@4.0.1.bin"),
    };
    let app1_dep = if safe_mode { need } else { old };
    let app1 = Image::synthetic(profile, ModuleFunction::UserPart, 1, 1, &[app1_dep], Behaviour::Healthy, 5000);
    let factory = Image::synthetic(profile, ModuleFunction::UserPart, 1, 0, &[app1_dep], Behaviour::Healthy, 2000);
    let app1_deps = vec![app1_dep];
    let device = Device::start(&server, id, &secret, Settings::default(), None, move || {
        provision::corpus_argon(vec![release_key().verifying_key()], &corpus, "4.0.1", app1, factory).unwrap().0
    });
    device.wait_for("the first describe", TIMEOUT, |s| s.describes > 0);
    if safe_mode {
        let (_, d) = server.get(&format!("/api/devices/{id}"));
        assert_eq!(d["inventory"]["boot_reason"], "safe_mode", "{d}");
        assert_eq!(d["inventory"]["safe_mode"], "unmet_dependency", "{d}");
        assert_eq!(d["status"], "safe_mode", "{d}");
    }

    // Application v2 needs the newest system part 1.
    let app2 = Image::synthetic(profile, ModuleFunction::UserPart, 1, 2, &[need], Behaviour::Healthy, 7000);

    // The plan, from what the device described and the server's catalog.
    let (_, record) = server.get(&format!("/api/devices/{id}"));
    let by_sha: HashMap<String, &Value> =
        catalog.iter().map(|m| (m["sha256"].as_str().unwrap().to_owned(), m)).collect();
    let installed: Vec<Installed> = record["inventory"]["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| Installed {
            slot: slot(m),
            version: m["version"].as_u64().unwrap() as u32,
            dependencies: match by_sha.get(m["sha256"].as_str().unwrap()) {
                Some(c) => deps(&c["dependencies"]),
                None => app1_deps.clone(),
            },
        })
        .collect();
    let candidates: Vec<Candidate> = catalog
        .iter()
        .map(|m| Candidate {
            sha256: sha(m),
            platform_id: m["platform_id"].as_u64().unwrap() as u16,
            slot: slot(m),
            version: m["version"].as_u64().unwrap() as u32,
            size: m["size"].as_u64().unwrap(),
            dependencies: deps(&m["dependencies"]),
        })
        .collect();
    let requested = Candidate {
        sha256: app2.entry.sha256,
        platform_id: 12,
        slot: Slot { function: ModuleFunction::UserPart, index: 1 },
        version: 2,
        size: app2.bytes.len() as u64,
        dependencies: vec![need],
    };
    let plan = if safe_mode {
        tern_plan::heal(12, &installed, &candidates).expect("a healing plan exists")
    } else {
        tern_plan::plan(12, &installed, &[requested], &candidates).expect("a plan exists")
    };
    assert!(plan.heals(), "{plan:?}");
    let order: Vec<(ModuleFunction, u32)> =
        plan.steps.iter().map(|s| (s.module.slot.function, s.module.version)).collect();
    println!("heal plan: {order:?}");
    // Dependency order: everything a step needs comes from the device or an earlier step.
    for (i, step) in plan.steps.iter().enumerate() {
        for d in &step.module.dependencies {
            let earlier = plan.steps[..i]
                .iter()
                .any(|s| d.is_satisfied_by(s.module.slot.function, s.module.slot.index, s.module.version));
            let present = installed.iter().any(|m| d.is_satisfied_by(m.slot.function, m.slot.index, m.version))
                && !plan.steps.iter().any(|s| s.module.slot.function == d.function && s.module.slot.index == d.index);
            assert!(earlier || present, "step {i} {:?} needs {d:?} first: {order:?}", step.module.slot);
        }
    }
    let sys = plan
        .steps
        .iter()
        .find(|s| s.module.slot.function == ModuleFunction::SystemPart)
        .expect("a system part is added");
    assert_eq!(sys.module.version, newest_part1);
    assert!(matches!(sys.reason, Reason::Dependency { .. }));
    let last = plan.steps.last().map(|s| s.module.slot.function);
    assert_eq!(last, Some(if safe_mode { ModuleFunction::SystemPart } else { ModuleFunction::UserPart }), "{order:?}");

    let images: Vec<&Image> = plan
        .steps
        .iter()
        .map(|s| if s.module.sha256 == app2.entry.sha256 { &app2 } else { &files[&hex(&s.module.sha256)] })
        .collect();
    let attempt = server.flash(id, &bundle(12, &images, 1));
    let a = server.wait_final(attempt, TIMEOUT);
    assert_eq!(a["state"], "confirmed", "{a}");
    let hashes = installed_hashes(&server, id);
    for image in &images {
        assert!(hashes.contains(&hex(&image.entry.sha256)), "{} installed: {hashes:?}", image.name);
    }
    let running = if safe_mode { 1 } else { 2 };
    device.wait_for("the application running", TIMEOUT, |s| s.app_version == running && s.boot_reason != "safe_mode");
    let (_, d) = server.get(&format!("/api/devices/{id}"));
    assert_ne!(d["inventory"]["boot_reason"], "safe_mode", "{d}");
    assert_eq!(d["status"], "online", "{d}");
    device.stop().expect("the device ran without error");
}
