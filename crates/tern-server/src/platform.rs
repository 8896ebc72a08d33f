//! Platform names the API and CLI accept besides numeric ids.
//!
//! Ids are Particle Device OS platform ids (`PLATFORM_ID`, as listed in Device OS
//! `hal/shared/platforms.h`), the numbering the module formats carry.

/// Known platforms: (name, id).
pub const PLATFORMS: &[(&str, u16)] = &[
    ("photon", 6),
    ("p1", 8),
    ("electron", 10),
    ("argon", 12),
    ("boron", 13),
    ("xenon", 14),
    ("bsom", 23),
    ("b5som", 25),
    ("tracker", 26),
    ("p2", 32),
];

/// The platform id for `name` (a known name or a decimal id).
pub fn parse(name: &str) -> Option<u16> {
    PLATFORMS.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, id)| *id).or_else(|| name.parse().ok())
}

/// The name of platform `id`, when it has one.
pub fn name(id: u16) -> Option<&'static str> {
    PLATFORMS.iter().find(|(_, i)| *i == id).map(|(n, _)| *n)
}
