//! Device OS releases: which system module version and bootloader version each public
//! Device OS release carries.
//!
//! System parts of one Device OS release share one module version (`2302` for 2.3.1), so
//! the modules' own metadata groups them; this table only adds the names operators use
//! (`--target 2.3.1`) and the bootloader module version shipped with each release. Facts
//! from Particle's `system/system-versions.md` in the device-os repository
//! (particle-iot/device-os, commit 889b301c4, "bump module version to 6.2.0"); final
//! releases only. Releases newer than the table are still planned by module version
//! (`--target 6300`), and their bootloader by the lowest catalog version that meets the
//! system parts' dependencies.

/// `(release, system module version, bootloader module version)`.
const RELEASES: &[(&str, u32, Option<u32>)] = &[
    ("0.4.0", 0, None),
    ("0.4.1", 1, None),
    ("0.4.2", 2, None),
    ("0.4.3", 3, None),
    ("0.4.4", 5, None),
    ("0.4.5", 6, None),
    ("0.4.6", 7, None),
    ("0.4.7", 8, None),
    ("0.4.9", 11, Some(7)),
    ("0.5.0", 13, None),
    ("0.5.1", 15, None),
    ("0.5.2", 17, None),
    ("0.5.3", 21, None),
    ("0.5.4", 22, None),
    ("0.5.5", 23, None),
    ("0.6.0", 102, None),
    ("0.6.1", 105, None),
    ("0.6.2", 108, Some(11)),
    ("0.6.3", 109, Some(11)),
    ("0.6.4", 110, Some(11)),
    ("0.7.0", 207, Some(101)),
    ("0.9.0", 403, Some(300)),
    ("1.0.0", 1000, Some(201)),
    ("1.0.1", 1002, Some(201)),
    ("1.1.0", 1102, Some(301)),
    ("1.2.1", 1213, Some(311)),
    ("1.3.1", 1321, Some(401)),
    ("1.4.0", 1401, Some(500)),
    ("1.4.1", 1403, Some(500)),
    ("1.4.2", 1404, Some(501)),
    ("1.4.3", 1405, Some(501)),
    ("1.4.4", 1406, Some(501)),
    ("1.5.0", 1502, Some(501)),
    ("1.5.1", 1511, Some(501)),
    ("1.5.2", 1512, Some(502)),
    ("2.0.0", 2008, Some(1003)),
    ("2.0.1", 2011, Some(1005)),
    ("2.1.0", 2101, Some(1005)),
    ("2.2.0", 2202, Some(1006)),
    ("2.3.0", 2301, Some(1006)),
    ("2.3.1", 2302, Some(1006)),
    ("3.0.0", 3005, Some(1005)),
    ("3.1.0", 3103, Some(1100)),
    ("3.2.0", 3201, Some(1100)),
    ("3.3.0", 3301, Some(1100)),
    ("3.3.1", 3302, Some(1100)),
    ("4.0.0", 4003, Some(1101)),
    ("4.0.1", 4005, Some(1101)),
    ("4.0.2", 4006, Some(1101)),
    ("4.1.0", 4100, Some(1200)),
    ("4.2.0", 4200, Some(1200)),
    ("5.0.0", 5002, Some(2000)),
    ("5.0.1", 5003, Some(2001)),
    ("5.1.0", 5004, Some(2001)),
    ("5.2.0", 5200, Some(2002)),
    ("5.3.0", 5300, Some(2100)),
    ("5.3.1", 5301, Some(2101)),
    ("5.3.2", 5302, Some(2102)),
    ("5.4.0", 5400, Some(2200)),
    ("5.4.1", 5410, Some(2210)),
    ("5.5.0", 5501, Some(2300)),
    ("5.6.0", 5600, Some(2400)),
    ("5.7.0", 5700, Some(2500)),
    ("5.8.0", 5800, Some(2600)),
    ("5.8.1", 5801, Some(2600)),
    ("5.8.2", 5802, Some(2601)),
    ("5.9.0", 5901, Some(2700)),
    ("6.0.0", 6000, Some(3000)),
    ("6.1.0", 6100, Some(3000)),
    ("6.1.1", 6101, Some(3001)),
    ("6.1.2", 6102, Some(3002)),
    ("6.2.0", 6200, Some(3100)),
];

/// A Device OS release as the planner knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Release {
    /// The semantic version operators use ("2.3.1").
    pub name: &'static str,
    /// The module version of its system parts.
    pub system_version: u32,
    /// The module version of the bootloader shipped with it, when the table says.
    pub bootloader_version: Option<u32>,
}

fn release(row: &(&'static str, u32, Option<u32>)) -> Release {
    Release { name: row.0, system_version: row.1, bootloader_version: row.2 }
}

/// The release named `name` ("2.3.1", also "v2.3.1").
pub fn by_name(name: &str) -> Option<Release> {
    let name = name.strip_prefix('v').unwrap_or(name);
    RELEASES.iter().find(|r| r.0 == name).map(release)
}

/// The release whose system parts have module version `version`.
pub fn by_system_version(version: u32) -> Option<Release> {
    RELEASES.iter().rev().find(|r| r.1 == version).map(release)
}

/// The system module version an operator's `--target` names: a release name from the
/// table ("2.3.1") or a module version number ("2302").
pub fn parse_target(target: &str) -> Result<u32, String> {
    if let Some(release) = by_name(target) {
        return Ok(release.system_version);
    }
    match target.parse::<u32>() {
        Ok(version) => Ok(version),
        Err(_) => Err(format!(
            "unknown Device OS release {target:?}: name a release ({}…{}) or a system module version number",
            RELEASES[0].0,
            RELEASES[RELEASES.len() - 1].0
        )),
    }
}

/// A human name for system module version `version`: "2.3.1 (v2302)" or "v6300".
pub fn label(version: u32) -> String {
    match by_system_version(version) {
        Some(release) => format!("{} (v{version})", release.name),
        None => format!("v{version}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_from_the_table() {
        assert_eq!(by_name("2.3.1").map(|r| (r.system_version, r.bootloader_version)), Some((2302, Some(1006))));
        assert_eq!(by_name("v1.5.2").map(|r| r.system_version), Some(1512));
        assert_eq!(by_system_version(4100).map(|r| r.name), Some("4.1.0"));
        assert_eq!(parse_target("1.4.4"), Ok(1406));
        assert_eq!(parse_target("6300"), Ok(6300));
        assert!(parse_target("9.9.x").unwrap_err().contains("unknown Device OS release"));
        assert_eq!(label(2011), "2.0.1 (v2011)");
        assert_eq!(label(7), "0.4.6 (v7)");
        assert_eq!(label(99999), "v99999");
        // Versions only grow along the table.
        assert!(RELEASES.windows(2).all(|w| w[0].1 <= w[1].1));
    }
}
