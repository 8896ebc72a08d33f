//! The rollout engine: which devices of a fleet update when, phase by phase, with brakes.
//!
//! A sans-IO core: [`step`] takes the rollout record, its members as persisted, facts
//! about every device of the product or group and the time, and returns the new records,
//! the devices to start an update for and events. It performs no IO, reads no clock,
//! draws no random numbers: the same inputs give the same step. The server persists
//! the records, creates the attempts and pumps it; a server killed between steps loses
//! nothing, because everything the engine knows is in its inputs.
//!
//! # Rules
//!
//! - **Phases.** At the first step the eligible devices are ordered by a stable hash of
//!   their id ([`spread`]) and cut into phases by the spec's cumulative sizes. Devices
//!   that appear later, or become eligible again, join the current phase while it is
//!   not complete, else the last phase. Pinned, development and removed devices (and
//!   members the server sends no facts for) are excluded while they wait.
//! - **Opening.** Phase k opens when every member of phases 0..k is final (healthy,
//!   already there, failed, expired or excluded) and the rollout is running. Members
//!   of an open phase are due; a due member that runs the release is `AlreadyThere`.
//! - **Starting.** A due member starts when it is online, in a maintenance window,
//!   within its data budget (or approved), not backing off after a busy answer, and
//!   `max_concurrent` and `rate_per_minute` allow; otherwise it waits with the first
//!   reason that applies, in that order. Starts go by phase, then device id.
//! - **Outcomes.** A confirmed attempt makes the member soak; after `soak_ms` it is
//!   healthy if it is online and still runs the release. A rollback reported after
//!   confirming fails it at once; not running the release at the end of the soak fails
//!   it. An offline device stays soaking until it is seen. A failed or cancelled attempt
//!   fails the member. A busy answer backs off (doubling, at most 16×) and never counts
//!   as a failure. A lost attempt is started again.
//! - **Brakes.** Failures over all members so far pause the rollout by itself when at
//!   least `min_finished` members finished (healthy or failed) and
//!   `failed * 100 >= threshold * finished`. Paused: no starts; outcomes are recorded.
//!   [`resume`] accepts the failures so far; [`abort`] stops for good.
//! - **Expiry.** A due member not updated within `expiry_ms` of becoming due (time
//!   spent paused not counted) is expired and reported.
//! - **Completion.** The rollout completes when its last phase does; late joiners still
//!   converge afterwards.
//!
//! # Pumping it
//!
//! ```
//! use tern_rollout::{step, AttemptView, Budget, DeviceFacts, Rollout, Spec, Standing};
//!
//! let facts = |id: &str, attempt: Option<AttemptView>| DeviceFacts {
//!     device: id.to_string(),
//!     standing: Standing::Eligible,
//!     online: true,
//!     runs_release: false,
//!     in_window: true,
//!     budget: Budget::Ok,
//!     attempt,
//!     rolled_back_since_confirm: false,
//! };
//! let rollout = Rollout::new(Spec::default(), 0);
//! let fleet: Vec<DeviceFacts> = (0..40).map(|i| facts(&format!("dev-{i}"), None)).collect();
//!
//! // First step: members are placed in phases; the canary of 5 starts.
//! let first = step(&rollout, &[], &fleet, 1_000);
//! assert_eq!(first.start.len(), 5);
//! assert_eq!(first.members.len(), 40);
//!
//! // The server records `first.rollout` and `first.members` and creates an attempt per
//! // started device, in one transaction. The next step sees those attempts running and
//! // decides nothing new.
//! let fleet: Vec<DeviceFacts> = fleet
//!     .iter()
//!     .map(|f| facts(&f.device, first.start.contains(&f.device).then_some(AttemptView::Running)))
//!     .collect();
//! let next = step(&first.rollout, &first.members, &fleet, 2_000);
//! assert!(next.start.is_empty() && next.members.is_empty() && next.events.is_empty());
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod engine;
mod model;
mod spec;
mod summary;
mod window;

pub use engine::{abort, pause, resume, spread, step, TransitionError};
pub use model::{
    AttemptView, Budget, DeviceFacts, Event, Exclusion, Member, MemberState, PauseReason, Rollout, RolloutState,
    Standing, Step, WaitReason,
};
pub use spec::{PhaseSize, Spec, SpecError};
pub use summary::{summary, Counts, PhaseSummary, Summary, WaitingCounts};
pub use window::{in_window, Window, WindowError};
