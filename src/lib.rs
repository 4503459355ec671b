//! sqlite2pg: moves a live SQLite application to PostgreSQL.

pub mod cli;
pub mod config;
pub mod conninfo;
pub mod datetime;
pub mod error;
pub mod expr;
pub mod fleet;
pub mod form;
pub mod framework;
pub mod jsontext;
pub mod metrics;
pub mod model;
pub mod pg;
pub mod phase;
pub mod plan;
pub mod replicate;
pub mod report;
pub mod shutdown;
pub mod sql;
pub mod sqlite;
pub mod switch;
pub mod typemap;
pub mod verify;
pub mod window;
