//! The order of things: plan, check, snapshot (streaming, cutover and verify build on these).

pub mod check;
pub mod cutover;
pub mod fallback;
pub mod phase;
pub mod plan;
pub mod progress;
pub mod reverse;
pub mod reverse_check;
pub mod run;
pub mod snapshot;
pub mod status;
pub mod stream;
pub mod verify;
pub mod watch;
