//! Maintenance windows: parsing, display, open or closed at given instants.

use tern_rollout::{in_window, Window, WindowError};

/// Monday 2026-11-30 00:00 UTC (`date -d '2026-11-30 00:00 UTC' +%s`), in ms.
const MONDAY: u64 = 1_795_996_800_000;
const DAY: u64 = 86_400_000;
const HOUR: u64 = 3_600_000;
const MINUTE: u64 = 60_000;

/// The instant `day` days after that Monday at `hh:mm`.
fn at(day: u64, hh: u64, mm: u64) -> u64 {
    MONDAY + day * DAY + hh * HOUR + mm * MINUTE
}

const MON: u64 = 0;
const TUE: u64 = 1;
const FRI: u64 = 4;
const SAT: u64 = 5;
const SUN: u64 = 6;

#[test]
fn parse_and_display() {
    // (text, days bits, start minute, end minute, displayed)
    for (text, days, start, end, shown) in [
        ("mon-fri 01:00-05:00", 0b001_1111, 60, 300, "mon-fri 01:00-05:00"),
        ("daily 22:00-02:00", 0b111_1111, 1320, 120, "daily 22:00-02:00"),
        ("sat,sun 00:00-24:00", 0b110_0000, 0, 1440, "sat,sun 00:00-24:00"),
        ("mon-sun 03:30-04:00", 0b111_1111, 210, 240, "daily 03:30-04:00"),
        ("fri-mon 23:00-01:15", 0b111_0001, 1380, 75, "mon,fri-sun 23:00-01:15"),
        ("Mon,WED,fri 9:05-17:00", 0b001_0101, 545, 1020, "mon,wed,fri 09:05-17:00"),
        ("tue,wed,thu 00:00-00:01", 0b000_1110, 0, 1, "tue-thu 00:00-00:01"),
    ] {
        let w = Window::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(w, Window { days, start_minute: start, end_minute: end }, "{text}");
        assert_eq!(w.to_string(), shown, "{text}");
        assert_eq!(Window::parse(shown), Ok(w), "{shown} reads back");
        assert_eq!(text.parse::<Window>(), Ok(w), "{text} through FromStr");
    }
}

#[test]
fn parse_refuses_bad_windows() {
    for (text, expected) in [
        ("mon-fri", WindowError::Shape("mon-fri".into())),
        ("mon-fri 01:00-05:00 extra", WindowError::Shape("mon-fri 01:00-05:00 extra".into())),
        ("mon 01:00", WindowError::Shape("mon 01:00".into())),
        ("funday 01:00-02:00", WindowError::Day("funday".into())),
        ("mon,,tue 01:00-02:00", WindowError::Day("".into())),
        ("mon 25:00-26:00", WindowError::Time("25:00".into())),
        ("mon 01:60-02:00", WindowError::Time("01:60".into())),
        ("mon 01:00-24:01", WindowError::Time("24:01".into())),
        ("mon 24:00-01:00", WindowError::Time("24:00".into())),
        ("mon 1h-2h", WindowError::Time("1h".into())),
        ("mon 01:00-01:00", WindowError::Empty("mon 01:00-01:00".into())),
    ] {
        assert_eq!(Window::parse(text), Err(expected.clone()), "{text}");
        let message = expected.to_string();
        assert!(!message.contains('\n') && message.contains("maintenance window"), "{message}");
    }
}

#[test]
fn open_at_given_instants() {
    let weekdays = Window::parse("mon-fri 01:00-05:00").expect("valid");
    let nightly = Window::parse("daily 22:00-02:00").expect("valid");
    let friday_night = Window::parse("fri 22:00-02:00").expect("valid");
    let weekend = Window::parse("sat,sun 00:00-24:00").expect("valid");
    for (window, now, open) in [
        (weekdays, at(MON, 0, 59), false),
        (weekdays, at(MON, 1, 0), true),
        (weekdays, at(MON, 4, 59), true),
        (weekdays, at(MON, 5, 0), false),
        (weekdays, at(FRI, 3, 0), true),
        (weekdays, at(SAT, 3, 0), false),
        (nightly, at(MON, 21, 59), false),
        (nightly, at(MON, 22, 0), true),
        (nightly, at(MON, 23, 59), true),
        (nightly, at(TUE, 0, 0), true),
        (nightly, at(TUE, 1, 59), true),
        (nightly, at(TUE, 2, 0), false),
        // Past midnight belongs to the day it starts: Friday night runs into Saturday,
        // while Friday's own early hours belong to a Thursday window that does not exist.
        (friday_night, at(FRI, 1, 0), false),
        (friday_night, at(FRI, 23, 0), true),
        (friday_night, at(SAT, 1, 0), true),
        (friday_night, at(SAT, 2, 0), false),
        (friday_night, at(SAT, 23, 0), false),
        (weekend, at(SAT, 0, 0), true),
        (weekend, at(SUN, 23, 59), true),
        (weekend, at(SUN + 1, 0, 0), false),
        (weekend, at(FRI, 23, 59), false),
    ] {
        assert_eq!(window.is_open(now), open, "{window} at {now}");
    }
}

#[test]
fn next_open() {
    let weekdays = Window::parse("mon-fri 01:00-05:00").expect("valid");
    let friday_night = Window::parse("fri 22:00-02:00").expect("valid");
    for (window, now, next) in [
        (weekdays, at(MON, 0, 0), at(MON, 1, 0)),
        (weekdays, at(MON, 2, 0), at(MON, 2, 0)),
        (weekdays, at(MON, 5, 0), at(TUE, 1, 0)),
        (weekdays, at(FRI, 6, 0), at(MON + 7, 1, 0)),
        (weekdays, at(SAT, 12, 0), at(MON + 7, 1, 0)),
        (friday_night, at(SAT, 1, 30), at(SAT, 1, 30)),
        (friday_night, at(SAT, 2, 0), at(FRI + 7, 22, 0)),
        (friday_night, at(FRI, 21, 59) + 59_999, at(FRI, 22, 0)),
    ] {
        assert_eq!(window.next_open(now), next, "{window} from {now}");
        assert!(window.is_open(window.next_open(now)), "{window} is open when it says it opens");
    }
    let never = Window { days: 0, start_minute: 60, end_minute: 120 };
    assert_eq!(never.next_open(at(MON, 0, 0)), u64::MAX);
}

#[test]
fn devices_without_windows_are_always_in_one() {
    let weekdays = Window::parse("mon-fri 01:00-05:00").expect("valid");
    let weekend = Window::parse("sat,sun 00:00-24:00").expect("valid");
    assert!(in_window(&[], at(SAT, 3, 0)));
    assert!(!in_window(&[weekdays], at(SAT, 3, 0)));
    assert!(in_window(&[weekdays, weekend], at(SAT, 3, 0)));
    assert!(in_window(&[weekdays, weekend], at(MON, 3, 0)));
    assert!(!in_window(&[weekdays, weekend], at(MON, 6, 0)));
}
