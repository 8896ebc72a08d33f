//! Particle's platform numbering: the id every Device OS module carries in its prefix
//! (`platform_id`), and what Tern knows about each platform it serves.
//!
//! Ids, names, generations and MCUs are Device OS's own: `hal/shared/platforms.h`
//! (`PLATFORM_PHOTON 6`, `PLATFORM_P1 8`, `PLATFORM_ELECTRON 10`, `PLATFORM_ARGON 12`,
//! `PLATFORM_BORON 13`, `PLATFORM_ESOMX 15`, `PLATFORM_BSOM 23`, `PLATFORM_TRACKER 26`)
//! and `build/platform-id.mk` (`PLATFORM_NAME`, `PLATFORM_GEN`, `PLATFORM_MCU`,
//! `PLATFORM_NET`), in `github.com/particle-iot/device-os` (tags v2.3.1 and v5.5.0).
//! The E-Series shares the Electron's id (10); the E SoM X ("esomx", the E404X) is a
//! Gen 3 nRF52840 device despite its name.

/// How a platform reaches the network by default (an operator may say otherwise per
/// device, e.g. a Gen 3 device on Ethernet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connectivity {
    /// Wi-Fi: bytes are cheap.
    Wifi,
    /// Cellular: bytes cost money; updates need the operator's confirmation.
    Cellular,
}

impl Connectivity {
    /// The name the API and CLI use (`wifi`, `cellular`).
    pub const fn name(self) -> &'static str {
        match self {
            Connectivity::Wifi => "wifi",
            Connectivity::Cellular => "cellular",
        }
    }
}

/// One Particle platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Platform {
    /// Device OS `PLATFORM_ID`, as module prefixes carry it.
    pub id: u16,
    /// Particle's platform name (`photon`, `electron`, …).
    pub name: &'static str,
    /// Hardware generation (Device OS `PLATFORM_GEN`).
    pub generation: u8,
    /// The MCU (Device OS `PLATFORM_MCU`, with the part number).
    pub mcu: &'static str,
    /// Default connectivity.
    pub connectivity: Connectivity,
}

const fn platform(id: u16, name: &'static str, generation: u8, mcu: &'static str, c: Connectivity) -> Platform {
    Platform { id, name, generation, mcu, connectivity: c }
}

/// Every platform Tern serves, by id.
pub const PLATFORMS: &[Platform] = &[
    platform(6, "photon", 2, "STM32F205", Connectivity::Wifi),
    platform(8, "p1", 2, "STM32F205", Connectivity::Wifi),
    platform(10, "electron", 2, "STM32F205", Connectivity::Cellular),
    platform(12, "argon", 3, "nRF52840", Connectivity::Wifi),
    platform(13, "boron", 3, "nRF52840", Connectivity::Cellular),
    platform(15, "esomx", 3, "nRF52840", Connectivity::Cellular),
    platform(23, "bsom", 3, "nRF52840", Connectivity::Cellular),
    platform(26, "tracker", 3, "nRF52840", Connectivity::Cellular),
];

/// The platform with Device OS id `id`.
pub fn by_id(id: u16) -> Option<&'static Platform> {
    PLATFORMS.iter().find(|p| p.id == id)
}

/// The platform named `name` (ASCII case ignored; `e-series` is the Electron's id).
pub fn by_name(name: &str) -> Option<&'static Platform> {
    let name =
        if name.eq_ignore_ascii_case("e-series") || name.eq_ignore_ascii_case("eseries") { "electron" } else { name };
    PLATFORMS.iter().find(|p| p.name.eq_ignore_ascii_case(name))
}

/// A platform given as a name or a decimal id, as operators type it.
pub fn parse(text: &str) -> Option<&'static Platform> {
    match text.trim().parse::<u16>() {
        Ok(id) => by_id(id),
        Err(_) => by_name(text.trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Option<(u16, &str, u8)>) {
        assert_eq!(parse(text).map(|p| (p.id, p.name, p.generation)), expected, "{text:?}");
    }

    /// Ids and generations as `hal/shared/platforms.h` and `build/platform-id.mk` give them.
    #[test]
    fn names_and_ids() {
        check("photon", Some((6, "photon", 2)));
        check("6", Some((6, "photon", 2)));
        check("P1", Some((8, "p1", 2)));
        check("electron", Some((10, "electron", 2)));
        check("E-Series", Some((10, "electron", 2)));
        check("12", Some((12, "argon", 3)));
        check("boron", Some((13, "boron", 3)));
        check("esomx", Some((15, "esomx", 3)));
        check("23", Some((23, "bsom", 3)));
        check(" tracker ", Some((26, "tracker", 3)));
        check("toaster", None);
        check("14", None);
        check("70000", None);
        check("", None);
        assert_eq!(by_id(10).map(|p| p.connectivity), Some(Connectivity::Cellular));
        assert_eq!(by_id(12).map(|p| p.connectivity.name()), Some("wifi"));
    }

    #[test]
    fn ids_and_names_are_unique() {
        for (i, p) in PLATFORMS.iter().enumerate() {
            for q in &PLATFORMS[i + 1..] {
                assert!(p.id != q.id && p.name != q.name, "{p:?} {q:?}");
            }
        }
    }
}
