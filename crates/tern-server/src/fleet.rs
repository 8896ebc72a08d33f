//! Fleet rules that are plain functions: group filters, maintenance windows, data budgets,
//! tags, and what "runs the release" means. The rollout pump and the API share them.

use tern_rollout::Window;

use crate::store::{Connectivity, DeviceRecord, GroupRecord, ReleaseRecord};

/// A filter term that is not understood, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError(pub String);

impl std::fmt::Display for FilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One term of a group filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    /// The device carries this tag.
    Tag(String),
    /// The device connects this way.
    Connectivity(Connectivity),
    /// The device id starts with this prefix (`id=field-*`).
    IdPrefix(String),
    /// The device id is exactly this.
    Id(String),
}

impl Term {
    /// Parses `tag=NAME`, `connectivity=wifi|cellular`, `id=PREFIX*` or `id=ID`.
    pub fn parse(text: &str) -> Result<Term, FilterError> {
        let (key, value) = text
            .split_once('=')
            .ok_or_else(|| FilterError(format!("filter term {text:?}: expected KEY=VALUE (tag, connectivity, id)")))?;
        let value = value.trim();
        if value.is_empty() {
            return Err(FilterError(format!("filter term {text:?}: empty value")));
        }
        match key.trim() {
            "tag" => check_tag(value).map(|()| Term::Tag(value.to_owned())),
            "connectivity" => Connectivity::parse(value)
                .map(Term::Connectivity)
                .ok_or_else(|| FilterError(format!("filter term {text:?}: connectivity is wifi or cellular"))),
            "id" => Ok(match value.strip_suffix('*') {
                Some(prefix) => Term::IdPrefix(prefix.to_owned()),
                None => Term::Id(value.to_owned()),
            }),
            other => Err(FilterError(format!("filter term {text:?}: unknown key {other:?} (tag, connectivity, id)"))),
        }
    }

    /// Whether `device` matches the term.
    pub fn matches(&self, device: &DeviceRecord) -> bool {
        match self {
            Term::Tag(tag) => device.fleet.tags.iter().any(|t| t == tag),
            Term::Connectivity(c) => device.policy.connectivity == *c,
            Term::IdPrefix(prefix) => device.id.starts_with(prefix.as_str()),
            Term::Id(id) => device.id == *id,
        }
    }
}

/// Checks a tag: 1 to 64 characters from `A-Z a-z 0-9 - _ . :`.
pub fn check_tag(tag: &str) -> Result<(), FilterError> {
    let ok = !tag.is_empty()
        && tag.len() <= 64
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    match ok {
        true => Ok(()),
        false => Err(FilterError(format!("tag {tag:?}: 1 to 64 characters from A-Z a-z 0-9 - _ . :"))),
    }
}

/// Parses every term of a filter.
pub fn parse_filter(terms: &[String]) -> Result<Vec<Term>, FilterError> {
    terms.iter().map(|t| Term::parse(t)).collect()
}

/// Parses maintenance windows.
pub fn parse_windows(windows: &[String]) -> Result<Vec<Window>, FilterError> {
    windows
        .iter()
        .map(|w| Window::parse(w).map_err(|e| FilterError(format!("maintenance window {w:?}: {e}"))))
        .collect()
}

/// Whether `device` is a member of `group`: in its product and matching every term.
/// (A stored filter that no longer parses selects nothing.)
pub fn in_group(device: &DeviceRecord, group: &GroupRecord) -> bool {
    if device.fleet.product != Some(group.product) {
        return false;
    }
    match parse_filter(&group.filter) {
        Ok(terms) => terms.iter().all(|t| t.matches(device)),
        Err(_) => false,
    }
}

/// Whether `device` may be updated at `now` (Unix ms) as far as maintenance windows go:
/// every group it belongs to that has windows has one open.
pub fn in_window(device: &DeviceRecord, groups: &[GroupRecord], now: u64) -> bool {
    groups.iter().filter(|g| !g.windows.is_empty() && in_group(device, g)).all(|g| {
        let windows = parse_windows(&g.windows).unwrap_or_default();
        tern_rollout::in_window(&windows, now)
    })
}

/// The data budget that applies to `device` (bytes per month): its own, else the smallest
/// of its groups'.
pub fn budget_of(device: &DeviceRecord, groups: &[GroupRecord]) -> Option<u64> {
    device
        .fleet
        .budget_bytes
        .or_else(|| groups.iter().filter(|g| in_group(device, g)).filter_map(|g| g.budget_bytes).min())
}

/// The start of the calendar month (UTC) containing `now` (Unix ms), in Unix ms.
pub fn month_start(now: i64) -> i64 {
    const DAY: i64 = 86_400_000;
    let days = now.div_euclid(DAY);
    let (year, month, _) = civil_from_days(days);
    days_from_civil(year, month, 1) * DAY
}

/// Gregorian date of a day number (days since 1970-01-01), after Howard Hinnant's
/// `civil_from_days` algorithm (public domain description of the proleptic calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Day number of a Gregorian date (inverse of [`civil_from_days`]).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Whether `device`'s last Describe shows every module of `release`, intact.
pub fn runs_release(device: &DeviceRecord, release: &ReleaseRecord) -> bool {
    let Some(inventory) = &device.inventory else { return false };
    release.modules.iter().all(|r| inventory.modules.iter().any(|m| m.sha256 == r.sha256 && m.integrity == "valid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_start_is_the_first_of_the_month_utc() {
        // 2026-11-30T02:31:27Z → 2026-11-01T00:00:00Z
        assert_eq!(month_start(1_796_005_887_000), 1_793_491_200_000);
        // The first millisecond of a month is its own start; the last one of February
        // 2028 (a leap year) belongs to February.
        assert_eq!(month_start(1_793_491_200_000), 1_793_491_200_000);
        assert_eq!(month_start(1_835_481_599_999), 1_832_976_000_000);
        assert_eq!(month_start(0), 0);
    }

    #[test]
    fn filter_terms_parse_or_say_why_not() {
        assert_eq!(Term::parse("tag=north").unwrap(), Term::Tag("north".into()));
        assert_eq!(Term::parse("connectivity=cellular").unwrap(), Term::Connectivity(Connectivity::Cellular));
        assert_eq!(Term::parse("id=field-*").unwrap(), Term::IdPrefix("field-".into()));
        assert_eq!(Term::parse("id=pump-7").unwrap(), Term::Id("pump-7".into()));
        for (bad, says) in [
            ("north", "expected KEY=VALUE"),
            ("color=red", "unknown key"),
            ("tag=", "empty value"),
            ("tag=a b", "1 to 64 characters"),
            ("connectivity=lora", "wifi or cellular"),
        ] {
            let err = Term::parse(bad).unwrap_err();
            assert!(err.0.contains(says), "{bad}: {err}");
        }
    }
}
