//! Every platform profile against real Device OS modules and the simulated device.

use tern_device::profile::{self, Profile, PROFILES};
use tern_image::model::ModuleFunction;
use tern_sim::scenario::{run, synthetic};

/// Every corpus module of a platform (releases and fixtures) finds its slot at its link
/// address on that platform's profile and fits it.
#[test]
fn corpus_modules_install_where_they_belong() {
    let corpus = tern_testkit::corpus();
    let mut per_profile = vec![0usize; PROFILES.len()];
    for dir in ["particle/releases", "particle/fixtures"] {
        let mut entries: Vec<_> = std::fs::read_dir(corpus.join(dir)).expect("corpus directory").flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let Ok(bytes) = std::fs::read(entry.path()) else { continue };
            let inspection = tern_image::inspect(&bytes);
            let valid = inspection.is_valid();
            let Some(info) = inspection.info.filter(|_| valid) else { continue };
            let Some(p) = profile::by_platform(info.platform_id) else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            // Device OS ≥ 3.1 links Gen 3 applications as user part 2 at 0xB4000; only the
            // E SoM X (which has no older Device OS) has that layout here.
            if info.function == ModuleFunction::UserPart && info.index != p.app_index() {
                continue;
            }
            // Monolithic firmware (Device OS before modules, and unlockers) has no slot in a
            // modular layout.
            if info.function == ModuleFunction::MonoFirmware {
                continue;
            }
            let slot = p
                .slot_for(info.function, info.index)
                .unwrap_or_else(|| panic!("{name}: no {:?} {} slot on {}", info.function, info.index, p.name));
            assert_eq!(p.slot_address(slot), Some(info.start_address), "{name} on {}", p.name);
            assert!(info.size <= p.slots[slot].region.size, "{name}: {} bytes on {}", info.size, p.name);
            assert!(info.size <= p.staging_capacity(), "{name}: cannot be staged on {}", p.name);
            per_profile[PROFILES.iter().position(|q| q.name == p.name).expect("listed")] += 1;
        }
    }
    // Every profile was checked against real modules (for some platforms the corpus only
    // has applications).
    for (p, n) in PROFILES.iter().zip(&per_profile) {
        println!("{:<9} {n} corpus modules", p.name);
    }
    let count = |name: &str| per_profile[PROFILES.iter().position(|p| p.name == name).expect("profile")];
    assert!(count("photon") >= 40 && count("argon") >= 40, "{per_profile:?}");
    for name in ["p1", "electron", "boron", "esomx", "bsom", "tracker"] {
        assert!(count(name) >= 1, "{name}: no corpus module checked");
    }
}

/// A synthetic device boots and takes an application update on every profile.
#[test]
fn every_profile_runs_a_device() {
    for p in PROFILES {
        let p: &'static Profile = p;
        let sc = synthetic(p).into_iter().find(|s| s.name == "app-update").expect("app-update scenario");
        let base = sc.provisioned().bench.borrow().clone();
        let out = run(&sc, &base, &[]);
        assert!(
            out.bricked.is_none() && out.violations.is_empty(),
            "{}: {:?} {:?}",
            p.name,
            out.bricked,
            out.violations
        );
        assert!(out.ops > 0, "{}", p.name);
    }
}
