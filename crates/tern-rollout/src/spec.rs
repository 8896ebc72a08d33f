//! What the operator asks of a rollout: its phases and its brakes.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How far one phase takes the rollout, counted from its start (cumulative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseSize {
    /// The first `n` eligible devices (a canary), or all of them if there are fewer.
    Count(u32),
    /// `p` percent of the eligible devices, rounded up.
    Percent(u8),
}

impl PhaseSize {
    /// How many devices the rollout has reached once this phase is done, out of
    /// `eligible` devices (before making the sequence non-decreasing).
    pub fn target(self, eligible: u32) -> u32 {
        match self {
            PhaseSize::Count(n) => n.min(eligible),
            PhaseSize::Percent(p) => {
                let share = (u64::from(eligible) * u64::from(p)).div_ceil(100);
                // A percentage of at most 100 never exceeds `eligible`; `min` keeps a
                // hand-built, invalid spec harmless.
                u32::try_from(share).unwrap_or(u32::MAX).min(eligible)
            }
        }
    }
}

impl fmt::Display for PhaseSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PhaseSize::Count(n) => write!(f, "{n} devices"),
            PhaseSize::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// What an operator asked of a rollout. Check it with [`Spec::validate`] before
/// starting; the engine tolerates an invalid spec without panicking, but its phases
/// then mean what [`PhaseSize::target`] makes of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// Cumulative phase targets, e.g. `[Count(10), Percent(25), Percent(100)]`.
    pub phases: Vec<PhaseSize>,
    /// 0..=100: the rollout pauses itself when `failed * 100 >= threshold * finished`
    /// (0: any failure pauses) …
    pub failure_threshold_percent: u8,
    /// … once at least this many members of the rollout finished (healthy or failed).
    pub min_finished: u32,
    /// Members updating at once (0 = unlimited).
    pub max_concurrent: u32,
    /// Updates started per rolling minute (0 = unlimited).
    pub rate_per_minute: u32,
    /// After confirming the update, a device must stay healthy this long (ms).
    pub soak_ms: u64,
    /// A member not updated within this long after it became due is expired (ms; 0 = never).
    pub expiry_ms: u64,
    /// First back-off after a device said busy (ms); doubles per busy answer, capped at 16×.
    pub busy_backoff_ms: u64,
}

/// One week in milliseconds: the default expiry.
const WEEK_MS: u64 = 7 * 24 * 60 * 60 * 1000;

impl Default for Spec {
    /// A canary of 5 devices, then a quarter, then everyone; pause at 10% failures once
    /// 3 devices finished; 50 devices at once; one minute of soak; a week to expiry.
    fn default() -> Self {
        Spec {
            phases: vec![PhaseSize::Count(5), PhaseSize::Percent(25), PhaseSize::Percent(100)],
            failure_threshold_percent: 10,
            min_finished: 3,
            max_concurrent: 50,
            rate_per_minute: 0,
            soak_ms: 60_000,
            expiry_ms: WEEK_MS,
            busy_backoff_ms: 30_000,
        }
    }
}

/// Why a [`Spec`] was refused. Phase numbers count from 1, as an operator reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecError {
    /// The phase list is empty.
    NoPhases,
    /// A `Count` phase of zero devices.
    ZeroCount {
        /// Phase number (from 1).
        phase: usize,
    },
    /// A `Percent` phase outside 1..=100.
    PercentOutOfRange {
        /// Phase number (from 1).
        phase: usize,
        /// The percentage given.
        percent: u8,
    },
    /// A phase reaches fewer devices than the phase before it.
    Decreasing {
        /// Phase number (from 1).
        phase: usize,
    },
    /// A `Count` phase after a `Percent` phase: whether it adds devices depends on the
    /// fleet's size, so the plan cannot be checked.
    CountAfterPercent {
        /// Phase number (from 1).
        phase: usize,
    },
    /// The last phase is not `Percent(100)`: the rollout would never reach every device.
    NotEveryone,
    /// The failure threshold is above 100%.
    ThresholdOutOfRange {
        /// The threshold given.
        percent: u8,
    },
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const PLAN: &str = "a phase plan that does not add up";
        match self {
            SpecError::NoPhases => write!(f, "{PLAN}: no phases"),
            SpecError::ZeroCount { phase } => write!(f, "{PLAN}: phase {phase} has 0 devices"),
            SpecError::PercentOutOfRange { phase, percent } => {
                write!(f, "{PLAN}: phase {phase} is {percent}%, outside 1–100%")
            }
            SpecError::Decreasing { phase } => {
                write!(f, "{PLAN}: phase {phase} reaches fewer devices than phase {}", phase - 1)
            }
            SpecError::CountAfterPercent { phase } => {
                write!(f, "{PLAN}: phase {phase} is a device count after a percentage (counts come first)")
            }
            SpecError::NotEveryone => write!(f, "{PLAN}: the last phase must be 100%"),
            SpecError::ThresholdOutOfRange { percent } => {
                write!(f, "failure threshold {percent}% is outside 0–100%")
            }
        }
    }
}

impl std::error::Error for SpecError {}

impl Spec {
    /// Checks that the phases add up (non-empty; counts of at least 1 first, then
    /// percentages of 1..=100, each reaching at least as many devices as the one before;
    /// the last one `Percent(100)`) and that the threshold is a percentage.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.phases.is_empty() {
            return Err(SpecError::NoPhases);
        }
        let mut previous: Option<PhaseSize> = None;
        for (i, size) in self.phases.iter().copied().enumerate() {
            let phase = i + 1;
            match size {
                PhaseSize::Count(0) => return Err(SpecError::ZeroCount { phase }),
                PhaseSize::Percent(percent) if !(1..=100).contains(&percent) => {
                    return Err(SpecError::PercentOutOfRange { phase, percent })
                }
                _ => {}
            }
            match (previous, size) {
                (Some(PhaseSize::Count(a)), PhaseSize::Count(b)) if b < a => {
                    return Err(SpecError::Decreasing { phase })
                }
                (Some(PhaseSize::Percent(a)), PhaseSize::Percent(b)) if b < a => {
                    return Err(SpecError::Decreasing { phase })
                }
                (Some(PhaseSize::Percent(_)), PhaseSize::Count(_)) => {
                    return Err(SpecError::CountAfterPercent { phase })
                }
                _ => {}
            }
            previous = Some(size);
        }
        if previous != Some(PhaseSize::Percent(100)) {
            return Err(SpecError::NotEveryone);
        }
        if self.failure_threshold_percent > 100 {
            return Err(SpecError::ThresholdOutOfRange { percent: self.failure_threshold_percent });
        }
        Ok(())
    }

    /// How many eligible devices each phase holds (not cumulative), for a fleet of
    /// `eligible` devices. Phases may be empty (a 25% phase after a canary of 10 in a
    /// fleet of 20); everything left over lands in the last phase.
    pub fn phase_sizes(&self, eligible: u32) -> Vec<u32> {
        let mut reached = 0u32;
        let last = self.phases.len().saturating_sub(1);
        self.phases
            .iter()
            .enumerate()
            .map(|(i, size)| {
                let target = if i == last { eligible } else { size.target(eligible).max(reached) };
                let count = target - reached;
                reached = target;
                count
            })
            .collect()
    }
}
