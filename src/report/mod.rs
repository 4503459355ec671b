//! What sqlite2pg tells a person, reading both sides without changing them: `check` (and
//! `check --reverse`) before and after the move, `status` and its live `--watch`.

pub mod check;
pub mod fleet;
pub mod reverse_check;
pub mod status;
pub mod watch;
