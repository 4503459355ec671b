//! The order of things: plan, check, snapshot (streaming, cutover and verify build on these).

pub mod check;
pub mod follower;
pub mod migrations;
pub mod plan;
pub mod progress;
pub mod reverse_check;
pub mod reverse_stream;
pub mod run;
pub mod snapshot;
pub mod status;
pub mod stream;
pub mod triggers;
pub mod uninstall;
pub mod verify;
pub mod views;
pub mod watch;

/// How long a stream, either way, runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// The daemon's: until a stop, a schema change, or the switch it follows.
    Stopped,
    /// A switch's own drain: until every change recorded so far is applied. With
    /// `give_up_after`, it gives up when the other database stays unreachable that long
    /// (writes are fenced meanwhile); without, it waits as long as it takes.
    CaughtUp {
        /// How long an unreachable database is waited for.
        give_up_after: Option<std::time::Duration>,
    },
}
