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
