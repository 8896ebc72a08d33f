//! Maintenance windows: recurring UTC periods in which devices may be updated.

use std::fmt;

use serde::{Deserialize, Serialize};

const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 24 * 60 * MINUTE_MS;
const DAY_MINUTES: u16 = 24 * 60;
const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const ALL_DAYS: u8 = 0x7f;

/// A recurring UTC period, e.g. `mon-fri 01:00-05:00` or `daily 22:00-02:00`.
///
/// A window whose end is before its start runs past midnight and belongs to the day it
/// starts on: `fri 22:00-02:00` is open from Friday 22:00 to Saturday 02:00.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// The days it starts on: bit 0 = Monday … bit 6 = Sunday.
    pub days: u8,
    /// Minute of the UTC day it opens, 0..1440.
    pub start_minute: u16,
    /// Minute of the UTC day it closes, 0..=1440 (exclusive).
    pub end_minute: u16,
}

/// Why [`Window::parse`] refused a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowError {
    /// Not `DAYS HH:MM-HH:MM`.
    Shape(String),
    /// A day name that is not `mon` … `sun` or `daily`.
    Day(String),
    /// A time that is not `HH:MM` within 00:00..=24:00.
    Time(String),
    /// Start equals end: a window that is never open.
    Empty(String),
}

impl fmt::Display for WindowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowError::Shape(text) => write!(
                f,
                "maintenance window {text:?} is not DAYS HH:MM-HH:MM (e.g. \"mon-fri 01:00-05:00\", \"daily 22:00-02:00\")"
            ),
            WindowError::Day(day) => {
                write!(f, "unknown day {day:?} in a maintenance window (mon … sun, ranges like mon-fri, or daily)")
            }
            WindowError::Time(time) => {
                write!(f, "time {time:?} in a maintenance window is not HH:MM between 00:00 and 24:00")
            }
            WindowError::Empty(text) => write!(f, "maintenance window {text:?} starts when it ends: it is never open"),
        }
    }
}

impl std::error::Error for WindowError {}

/// The day of the week (0 = Monday) of the UTC day number `day` since the Unix epoch,
/// which was a Thursday.
fn weekday(day: u64) -> u32 {
    ((day + 3) % 7) as u32
}

fn parse_day(name: &str) -> Result<u32, WindowError> {
    DAY_NAMES.iter().position(|d| *d == name).map(|i| i as u32).ok_or_else(|| WindowError::Day(name.to_string()))
}

fn parse_days(text: &str) -> Result<u8, WindowError> {
    if text == "daily" {
        return Ok(ALL_DAYS);
    }
    let mut days = 0u8;
    for part in text.split(',') {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (parse_day(first)?, parse_day(last)?);
                // A range may wrap past Sunday: `fri-mon`.
                let mut day = first;
                loop {
                    days |= 1 << day;
                    if day == last {
                        break;
                    }
                    day = (day + 1) % 7;
                }
            }
            None => days |= 1 << parse_day(part)?,
        }
    }
    Ok(days)
}

fn parse_time(text: &str) -> Result<u16, WindowError> {
    let bad = || WindowError::Time(text.to_string());
    let (hours, minutes) = text.split_once(':').ok_or_else(bad)?;
    if hours.is_empty() || hours.len() > 2 || minutes.len() != 2 {
        return Err(bad());
    }
    let hours: u16 = hours.parse().map_err(|_| bad())?;
    let minutes: u16 = minutes.parse().map_err(|_| bad())?;
    if minutes >= 60 || hours * 60 + minutes > DAY_MINUTES {
        return Err(bad());
    }
    Ok(hours * 60 + minutes)
}

impl Window {
    /// Parses `DAYS HH:MM-HH:MM`, where DAYS is `daily` or a comma-separated list of
    /// days (`mon` … `sun`) and ranges (`mon-fri`), e.g. `sat,sun 00:00-24:00`.
    pub fn parse(text: &str) -> Result<Window, WindowError> {
        let shape = || WindowError::Shape(text.to_string());
        let lowered = text.trim().to_ascii_lowercase();
        let mut words = lowered.split_whitespace();
        let (Some(days), Some(times), None) = (words.next(), words.next(), words.next()) else {
            return Err(shape());
        };
        let (start, end) = times.split_once('-').ok_or_else(shape)?;
        let window = Window { days: parse_days(days)?, start_minute: parse_time(start)?, end_minute: parse_time(end)? };
        if window.start_minute == DAY_MINUTES {
            return Err(WindowError::Time(start.to_string()));
        }
        if window.start_minute == window.end_minute {
            return Err(WindowError::Empty(text.to_string()));
        }
        Ok(window)
    }

    fn starts_on(&self, weekday: u32) -> bool {
        self.days & (1 << weekday) != 0
    }

    /// Whether the window is open at `now` (ms since the Unix epoch, UTC).
    pub fn is_open(&self, now: u64) -> bool {
        let day = now / DAY_MS;
        let minute = ((now % DAY_MS) / MINUTE_MS) as u16;
        if self.start_minute < self.end_minute {
            self.starts_on(weekday(day)) && (self.start_minute..self.end_minute).contains(&minute)
        } else {
            // Past midnight: the evening part belongs to today, the morning part to
            // yesterday's window.
            (self.starts_on(weekday(day)) && minute >= self.start_minute)
                || (day > 0 && self.starts_on(weekday(day - 1)) && minute < self.end_minute)
        }
    }

    /// When the window is next open: `now` if it is open, else the next instant it
    /// opens; `u64::MAX` for a window without days (never open).
    pub fn next_open(&self, now: u64) -> u64 {
        if self.is_open(now) {
            return now;
        }
        let today = now / DAY_MS;
        (0..=7)
            .map(|offset| today + offset)
            .filter(|day| self.starts_on(weekday(*day)))
            .map(|day| day * DAY_MS + u64::from(self.start_minute) * MINUTE_MS)
            .find(|opens| *opens > now)
            .unwrap_or(u64::MAX)
    }
}

impl std::str::FromStr for Window {
    type Err = WindowError;

    /// [`Window::parse`], for command-line parsers.
    fn from_str(text: &str) -> Result<Window, WindowError> {
        Window::parse(text)
    }
}

/// Whether a device whose maintenance windows are `windows` may be updated at `now`:
/// when it has none, or any of them is open.
pub fn in_window(windows: &[Window], now: u64) -> bool {
    windows.is_empty() || windows.iter().any(|w| w.is_open(now))
}

impl fmt::Display for Window {
    /// The form [`Window::parse`] reads: `daily`, or days and runs of three or more days
    /// as ranges (`mon-fri`, `sat,sun`), then the times.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.days & ALL_DAYS == ALL_DAYS {
            f.write_str("daily")?;
        } else {
            let mut parts = Vec::new();
            let mut day = 0u32;
            while day < 7 {
                if !self.starts_on(day) {
                    day += 1;
                    continue;
                }
                let first = day;
                while day + 1 < 7 && self.starts_on(day + 1) {
                    day += 1;
                }
                match day - first {
                    0 => parts.push(DAY_NAMES[first as usize].to_string()),
                    1 => {
                        parts.push(DAY_NAMES[first as usize].to_string());
                        parts.push(DAY_NAMES[day as usize].to_string());
                    }
                    _ => parts.push(format!("{}-{}", DAY_NAMES[first as usize], DAY_NAMES[day as usize])),
                }
                day += 1;
            }
            f.write_str(&parts.join(","))?;
        }
        let time = |minute: u16| format!("{:02}:{:02}", minute / 60, minute % 60);
        write!(f, " {}-{}", time(self.start_minute), time(self.end_minute))
    }
}
