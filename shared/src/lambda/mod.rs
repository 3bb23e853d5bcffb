//! The parts of `shared` that exist only because the code runs in a Lambda execution environment.
//!
//! An environment is frozen between invocations (no background task runs, idle connections may
//! be closed by the server meanwhile) and has extensions beside it. What deals with that lives
//! here, so the services and adapters elsewhere in `shared` stay plain Rust: no Lambda types
//! appear anywhere in this crate.

use crate::db::Db;

pub mod secrets_extension;

/// The per-invocation hook: call it once, at each handler's entry. An environment may have been
/// frozen for minutes since the last invocation, so pooled connections older than
/// `POOL_MAX_AGE_SECS` are dropped before any is handed out. Returns how many were dropped.
pub fn begin_invocation(db: &Db) -> usize {
    db.drop_aged_connections()
}
