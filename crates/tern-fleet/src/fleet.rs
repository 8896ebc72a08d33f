//! The make-up of a simulated fleet, decided from device indexes alone: which devices
//! misbehave on an update (the mix), which are cellular, which go offline and when.
//!
//! Every choice is deterministic and spread evenly over the fleet. A share `p` of `n`
//! devices is chosen by ranking the devices on a Weyl sequence — device `i` (0-based) sits
//! at the fractional part of `(i + 1) · α` for an irrational `α` — and cutting that order
//! into runs of the exact sizes the shares ask for (largest remainders). Devices whose
//! positions are close on the sequence are far apart in index, so each class is strewn
//! across the id range instead of bunched at one end, the counts are exact, and a different
//! `α` per trait (mix, cellular, offline) keeps the traits independent of each other.

use std::time::Duration;

use tern_sim::device::Behaviour;

/// Irrationals for the traits: the golden ratio's conjugate, √2 − 1 and √3 − 1.
const ALPHA_MIX: f64 = 0.618_033_988_749_894_9;
const ALPHA_CELLULAR: f64 = 0.414_213_562_373_095_1;
const ALPHA_OFFLINE: f64 = 0.732_050_807_568_877_3;

/// A fleet's mix of behaviours: per class, its weight (a percentage, or any weights).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mix {
    /// Classes in the order given, each with its weight (all weights > 0).
    pub classes: Vec<(Behaviour, u32)>,
}

impl Mix {
    /// Parses `healthy=90,panic=5,hang=5` (classes: healthy, panic, hang, noconfirm; each
    /// at most once; weights are relative, usually percentages adding up to 100).
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut classes: Vec<(Behaviour, u32)> = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) =
                part.split_once('=').ok_or_else(|| format!("{part}: expected CLASS=WEIGHT, e.g. panic=5"))?;
            let behaviour = Behaviour::from_name(name.trim())
                .ok_or_else(|| format!("{name}: unknown class (healthy, panic, hang, noconfirm)"))?;
            let weight: u32 = weight.trim().parse().map_err(|_| format!("{part}: the weight is not a whole number"))?;
            if classes.iter().any(|(b, _)| *b == behaviour) {
                return Err(format!("{name}: given twice"));
            }
            if weight > 0 {
                classes.push((behaviour, weight));
            }
        }
        if classes.is_empty() {
            return Err(format!("{text:?}: no class has a weight above 0"));
        }
        Ok(Mix { classes })
    }

    /// Everyone healthy.
    pub fn healthy() -> Mix {
        Mix { classes: vec![(Behaviour::Healthy, 100)] }
    }

    /// The class of every device of a fleet of `count`.
    pub fn assign(&self, count: usize) -> Vec<Behaviour> {
        let weights: Vec<u64> = self.classes.iter().map(|(_, w)| u64::from(*w)).collect();
        spread(count, &weights, ALPHA_MIX).into_iter().map(|c| self.classes[c].0).collect()
    }
}

/// Which of `count` devices are cellular: `percent` of them (0–100), spread evenly.
pub fn cellular(count: usize, percent: u32) -> Vec<bool> {
    let p = u64::from(percent.min(100));
    spread(count, &[p, 100 - p], ALPHA_CELLULAR).into_iter().map(|c| c == 0).collect()
}

/// Splits `count` devices into classes of the given weights: the class index of each
/// device. Class sizes are the weights' exact shares of `count`, rounded by largest
/// remainder (earlier classes win ties); members are chosen by rank on the Weyl sequence
/// of `alpha`.
pub fn spread(count: usize, weights: &[u64], alpha: f64) -> Vec<usize> {
    let total: u64 = weights.iter().sum();
    if count == 0 || total == 0 {
        return vec![0; count];
    }
    // Sizes: floors, then one more for the largest remainders.
    let n = count as u64;
    let mut sizes: Vec<u64> = weights.iter().map(|w| n * w / total).collect();
    let mut short = n - sizes.iter().sum::<u64>();
    let mut by_remainder: Vec<usize> = (0..weights.len()).collect();
    by_remainder.sort_by_key(|&c| std::cmp::Reverse(n * weights[c] % total));
    for &c in &by_remainder {
        if short == 0 {
            break;
        }
        sizes[c] += 1;
        short -= 1;
    }
    // Devices in order of their place on the sequence.
    let place = |i: usize| ((i as f64 + 1.0) * alpha).fract();
    let mut order: Vec<usize> = (0..count).collect();
    order.sort_by(|&a, &b| place(a).total_cmp(&place(b)));
    let mut class = vec![0; count];
    let mut at = 0;
    for (c, &size) in sizes.iter().enumerate() {
        for &device in &order[at..at + size as usize] {
            class[device] = c;
        }
        at += size as usize;
    }
    class
}

/// When one device is offline. Offline means no connection at all: the server sees the
/// device disconnect, and it reconnects (and describes itself) when the period ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offline {
    /// Offline from the start until this long after it (a device that joins late).
    pub at_start: Option<Duration>,
    /// Offline for `down` out of every `every`, starting `phase` into the cycle.
    pub periodic: Option<Periodic>,
}

/// Recurring offline periods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Periodic {
    /// Length of one offline period.
    pub down: Duration,
    /// Time from the start of one offline period to the next (longer than `down`).
    pub every: Duration,
    /// Where in its cycle this device starts (staggers devices).
    pub phase: Duration,
}

impl Offline {
    /// Whether the device is online `elapsed` after the fleet started.
    pub fn online(&self, elapsed: Duration) -> bool {
        if self.at_start.is_some_and(|until| elapsed < until) {
            return false;
        }
        match self.periodic {
            Some(p) if !p.every.is_zero() => {
                let into = (elapsed + p.phase).as_millis() % p.every.as_millis();
                into >= p.down.as_millis()
            }
            _ => true,
        }
    }

    /// Whether this device is ever offline.
    pub fn ever(&self) -> bool {
        self.at_start.is_some() || self.periodic.is_some()
    }
}

/// How a fleet goes offline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OfflineRule {
    /// Share of devices (0–100) with recurring offline periods.
    pub percent: u32,
    /// Length of each period.
    pub down: Duration,
    /// Time from one period's start to the next.
    pub every: Duration,
    /// This many devices are offline from the start…
    pub at_start: usize,
    /// …until this long after it.
    pub online_after: Duration,
}

impl OfflineRule {
    /// Parses `PERCENT:SECONDS[:EVERY]` (every defaults to four times the period) into
    /// `percent`, `down` and `every`.
    pub fn parse_periodic(&mut self, text: &str) -> Result<(), String> {
        let parts: Vec<&str> = text.split(':').collect();
        let number = |s: &str, what: &str| -> Result<u64, String> {
            s.trim().parse().map_err(|_| format!("{text}: {what} is not a whole number"))
        };
        let (percent, down, every) = match parts[..] {
            [p, d] => (number(p, "the percentage")?, number(d, "the period")?, None),
            [p, d, e] => (number(p, "the percentage")?, number(d, "the period")?, Some(number(e, "EVERY")?)),
            _ => return Err(format!("{text}: expected PERCENT:SECONDS[:EVERY], e.g. 10:30")),
        };
        if percent > 100 {
            return Err(format!("{text}: the percentage is above 100"));
        }
        if down == 0 {
            return Err(format!("{text}: an offline period of 0 seconds"));
        }
        let every = every.unwrap_or(down * 4);
        if every <= down {
            return Err(format!("{text}: EVERY ({every} s) must be longer than the period ({down} s)"));
        }
        self.percent = percent as u32;
        self.down = Duration::from_secs(down);
        self.every = Duration::from_secs(every);
        Ok(())
    }

    /// The offline plan of every device of a fleet of `count`: `percent` of them (spread
    /// evenly) with periods staggered evenly over the cycle, and `at_start` of them (also
    /// spread evenly, chosen among the others first) offline until `online_after`.
    pub fn assign(&self, count: usize) -> Vec<Offline> {
        let p = u64::from(self.percent.min(100));
        let periodic = spread(count, &[p, 100 - p], ALPHA_OFFLINE);
        let members = periodic.iter().filter(|&&c| c == 0).count().max(1) as u32;
        let mut plans = vec![Offline::default(); count];
        let mut rank = 0u32;
        for (plan, class) in plans.iter_mut().zip(&periodic) {
            if *class == 0 {
                plan.periodic =
                    Some(Periodic { down: self.down, every: self.every, phase: self.every * rank / members });
                rank += 1;
            }
        }
        // Late joiners: the devices last on the sequence, preferring ones without periods.
        let place = |i: usize| ((i as f64 + 1.0) * ALPHA_OFFLINE).fract();
        let mut order: Vec<usize> = (0..count).collect();
        order.sort_by(|&a, &b| (periodic[b] == 1).cmp(&(periodic[a] == 1)).then(place(b).total_cmp(&place(a))));
        for &i in order.iter().take(self.at_start.min(count)) {
            plans[i].at_start = Some(self.online_after);
        }
        plans
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(classes: &[usize], n: usize) -> Vec<usize> {
        (0..n).map(|c| classes.iter().filter(|&&x| x == c).count()).collect()
    }

    #[test]
    fn class_sizes_are_exact_shares() {
        // (devices, weights, expected sizes)
        let cases: &[(usize, &[u64], &[usize])] = &[
            (1000, &[90, 5, 5], &[900, 50, 50]),
            (50, &[90, 5, 5], &[45, 3, 2]), // 45 + 2.5 + 2.5: the earlier of the tied remainders wins
            (50, &[80, 10, 10], &[40, 5, 5]),
            (7, &[1, 1], &[4, 3]),
            (3, &[100, 0], &[3, 0]),
            (0, &[50, 50], &[0, 0]),
            (10, &[1, 1, 1], &[4, 3, 3]),
        ];
        for (n, weights, expected) in cases {
            let classes = spread(*n, weights, ALPHA_MIX);
            assert_eq!(classes.len(), *n);
            assert_eq!(counts(&classes, weights.len()), expected.to_vec(), "{n} devices, weights {weights:?}");
        }
    }

    #[test]
    fn a_small_class_is_strewn_across_the_ids() {
        // 5% of 1000: 50 devices; no run of 100 consecutive ids holds more than 2 × its
        // share (10) nor fewer than half of it, and no gap is longer than 3 × 20.
        let classes = spread(1000, &[95, 5], ALPHA_MIX);
        let members: Vec<usize> = (0..1000).filter(|&i| classes[i] == 1).collect();
        assert_eq!(members.len(), 50);
        for window in (0..=900).step_by(50) {
            let k = members.iter().filter(|&&i| (window..window + 100).contains(&i)).count();
            assert!((3..=10).contains(&k), "{k} members in ids {window}..{}", window + 100);
        }
        let gap = members.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        assert!(gap <= 60, "largest gap {gap}");
    }

    #[test]
    fn traits_are_independent() {
        // Cellular devices are not the same as the devices of a same-sized mix class.
        let mix = Mix::parse("healthy=90,panic=10").unwrap().assign(1000);
        let cell = cellular(1000, 10);
        let both = mix.iter().zip(&cell).filter(|(m, c)| **m == Behaviour::Panic && **c).count();
        assert_eq!(cell.iter().filter(|c| **c).count(), 100);
        // Independent traits would share about 10; the same rule would share all 100.
        assert!((2..=30).contains(&both), "{both} devices are both panic and cellular");
    }

    #[test]
    fn mix_parses_and_refuses() {
        use Behaviour::*;
        let ok: &[(&str, &[(Behaviour, u32)])] = &[
            ("healthy=90,panic=5,hang=5", &[(Healthy, 90), (Panic, 5), (Hang, 5)]),
            ("noconfirm=1, healthy=3", &[(NeverConfirms, 1), (Healthy, 3)]),
            ("panic=0,healthy=100", &[(Healthy, 100)]),
        ];
        for (text, classes) in ok {
            assert_eq!(Mix::parse(text), Ok(Mix { classes: classes.to_vec() }), "{text}");
        }
        let bad = [
            ("healthy=90,crash=10", "crash: unknown class"),
            ("healthy", "expected CLASS=WEIGHT"),
            ("healthy=x", "not a whole number"),
            ("healthy=1,healthy=2", "given twice"),
            ("panic=0", "no class has a weight above 0"),
            ("", "no class"),
        ];
        for (text, message) in bad {
            let e = Mix::parse(text).unwrap_err();
            assert!(e.contains(message), "{text}: {e}");
        }
    }

    #[test]
    fn offline_schedules() {
        let s = Duration::from_secs;
        let periodic = Offline { at_start: None, periodic: Some(Periodic { down: s(10), every: s(40), phase: s(5) }) };
        let late = Offline { at_start: Some(s(30)), periodic: None };
        // (plan, seconds since start, online)
        let cases = [
            (Offline::default(), 0, true),
            (Offline::default(), 1000, true),
            (late, 0, false),
            (late, 29, false),
            (late, 30, true),
            (periodic, 0, false),  // 5 s into the cycle
            (periodic, 4, false),  // 9 s into the cycle
            (periodic, 5, true),   // 10 s into the cycle
            (periodic, 34, true),  // 39 s
            (periodic, 35, false), // 0 s of the next cycle
            (periodic, 45, true),
        ];
        for (plan, at, online) in cases {
            assert_eq!(plan.online(s(at)), online, "{plan:?} at {at} s");
        }
    }

    #[test]
    fn offline_rule_parses_and_assigns() {
        let mut rule = OfflineRule::default();
        rule.parse_periodic("20:30").unwrap();
        assert_eq!((rule.percent, rule.down, rule.every), (20, Duration::from_secs(30), Duration::from_secs(120)));
        rule.parse_periodic("10:5:60").unwrap();
        assert_eq!((rule.percent, rule.down, rule.every), (10, Duration::from_secs(5), Duration::from_secs(60)));
        for (text, message) in [
            ("101:5", "above 100"),
            ("10:0", "0 seconds"),
            ("10:30:30", "must be longer"),
            ("10", "expected PERCENT"),
            ("a:5", "percentage is not"),
        ] {
            let e = OfflineRule::default().parse_periodic(text).unwrap_err();
            assert!(e.contains(message), "{text}: {e}");
        }
        rule.at_start = 3;
        rule.online_after = Duration::from_secs(20);
        let plans = rule.assign(100);
        let periodic: Vec<&Offline> = plans.iter().filter(|p| p.periodic.is_some()).collect();
        assert_eq!(periodic.len(), 10);
        // Phases spread over the cycle: all different, between 0 and `every`.
        let mut phases: Vec<Duration> = periodic.iter().map(|p| p.periodic.unwrap().phase).collect();
        phases.dedup();
        assert_eq!(phases.len(), 10);
        assert!(phases.iter().all(|p| *p < rule.every));
        let late: Vec<&Offline> = plans.iter().filter(|p| p.at_start.is_some()).collect();
        assert_eq!(late.len(), 3);
        assert!(late.iter().all(|p| p.periodic.is_none() && p.at_start == Some(Duration::from_secs(20))));
        // More late joiners than devices: everyone.
        let all = OfflineRule { at_start: 9, online_after: Duration::from_secs(1), ..OfflineRule::default() }.assign(4);
        assert!(all.iter().all(|p| p.at_start.is_some() && p.periodic.is_none()));
    }
}
