//! Spec validation and phase sizes.

use tern_rollout::{
    PhaseSize::{self, Count, Percent},
    Spec, SpecError,
};

fn with_phases(phases: &[PhaseSize]) -> Spec {
    Spec { phases: phases.to_vec(), ..Spec::default() }
}

#[test]
fn validate_refuses_plans_that_do_not_add_up() {
    let cases: &[(&[PhaseSize], Result<(), SpecError>, &str)] = &[
        (&[Count(5), Percent(25), Percent(100)], Ok(()), ""),
        (&[Percent(100)], Ok(()), ""),
        (&[Count(1), Count(10), Percent(10), Percent(10), Percent(100)], Ok(()), ""),
        (&[], Err(SpecError::NoPhases), "a phase plan that does not add up: no phases"),
        (
            &[Count(0), Percent(100)],
            Err(SpecError::ZeroCount { phase: 1 }),
            "a phase plan that does not add up: phase 1 has 0 devices",
        ),
        (
            &[Percent(0), Percent(100)],
            Err(SpecError::PercentOutOfRange { phase: 1, percent: 0 }),
            "a phase plan that does not add up: phase 1 is 0%, outside 1–100%",
        ),
        (
            &[Percent(10), Percent(101)],
            Err(SpecError::PercentOutOfRange { phase: 2, percent: 101 }),
            "a phase plan that does not add up: phase 2 is 101%, outside 1–100%",
        ),
        (
            &[Percent(50), Percent(25), Percent(100)],
            Err(SpecError::Decreasing { phase: 2 }),
            "a phase plan that does not add up: phase 2 reaches fewer devices than phase 1",
        ),
        (
            &[Count(10), Count(5), Percent(100)],
            Err(SpecError::Decreasing { phase: 2 }),
            "a phase plan that does not add up: phase 2 reaches fewer devices than phase 1",
        ),
        (
            &[Percent(10), Count(50), Percent(100)],
            Err(SpecError::CountAfterPercent { phase: 2 }),
            "a phase plan that does not add up: phase 2 is a device count after a percentage (counts come first)",
        ),
        (
            &[Count(5), Percent(50)],
            Err(SpecError::NotEveryone),
            "a phase plan that does not add up: the last phase must be 100%",
        ),
        (&[Count(5)], Err(SpecError::NotEveryone), "a phase plan that does not add up: the last phase must be 100%"),
    ];
    for (phases, expected, message) in cases {
        let got = with_phases(phases).validate();
        assert_eq!(&got, expected, "{phases:?}");
        if let Err(e) = got {
            assert_eq!(e.to_string(), *message, "{phases:?}");
        }
    }
    for (threshold, ok) in [(0u8, true), (100, true), (101, false), (255, false)] {
        let spec = Spec { failure_threshold_percent: threshold, ..Spec::default() };
        let got = spec.validate();
        assert_eq!(got.is_ok(), ok, "threshold {threshold}");
        if !ok {
            assert_eq!(got, Err(SpecError::ThresholdOutOfRange { percent: threshold }));
            assert_eq!(got.unwrap_err().to_string(), format!("failure threshold {threshold}% is outside 0–100%"));
        }
    }
}

#[test]
fn default_spec_is_valid() {
    let spec = Spec::default();
    assert_eq!(spec.validate(), Ok(()));
    assert_eq!(spec.phases, vec![Count(5), Percent(25), Percent(100)]);
    assert_eq!(spec.expiry_ms, 7 * 24 * 3600 * 1000);
}

#[test]
fn phase_sizes_cut_the_fleet() {
    let cases: &[(&[PhaseSize], u32, &[u32])] = &[
        (&[Count(10), Percent(25), Percent(100)], 100, &[10, 15, 75]),
        // 25% of 20 is 5, fewer than the canary: the phase adds nothing.
        (&[Count(10), Percent(25), Percent(100)], 20, &[10, 0, 10]),
        (&[Count(10), Percent(25), Percent(100)], 3, &[3, 0, 0]),
        (&[Count(10), Percent(25), Percent(100)], 0, &[0, 0, 0]),
        // Percentages round up: 1% of 50 is one device.
        (&[Percent(1), Percent(100)], 50, &[1, 49]),
        (&[Percent(33), Percent(66), Percent(100)], 10, &[4, 3, 3]),
        (&[Percent(100)], 7, &[7]),
    ];
    for (phases, eligible, expected) in cases {
        assert_eq!(with_phases(phases).phase_sizes(*eligible), expected.to_vec(), "{phases:?} of {eligible}");
    }
}
