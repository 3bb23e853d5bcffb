//! A test hook, off by default: `HIKMAH_FAULT_INJECTION=panic-on:<marker>` makes applying any
//! record whose hikmah contains `<marker>` panic inside the record's task.
//!
//! It exists so that the per-record panic isolation can be checked against the binary that is
//! actually deployed (`cargo lambda build --release`, where the panic strategy is decided by the
//! release profile), not only in debug builds. Nothing in the template sets the variable; when it
//! is unset the consumer is wired exactly as without this module, and when it is set a warning
//! says so at init.

use std::sync::Arc;

use shared::config::{ConfigError, Env};
use shared::events::ElaborationCompleted;
use shared::memory::extract::NoteExtractor;

/// The variable naming the injected fault.
pub const FAULT_INJECTION_VAR: &str = "HIKMAH_FAULT_INJECTION";

/// A fault requested through [`FAULT_INJECTION_VAR`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Panic while extracting the notes of a record whose hikmah contains this marker.
    PanicOn(String),
}

impl Fault {
    /// The requested fault, if any; an unknown value is a configuration error naming the variable.
    pub fn from_env(env: &Env) -> Result<Option<Fault>, ConfigError> {
        let Some(value) = env.get(FAULT_INJECTION_VAR) else {
            return Ok(None);
        };
        match value.strip_prefix("panic-on:") {
            Some(marker) if !marker.is_empty() => Ok(Some(Fault::PanicOn(marker.to_owned()))),
            _ => Err(ConfigError::Invalid {
                name: FAULT_INJECTION_VAR,
                value,
                reason: "the only fault is panic-on:<marker> (a test hook; leave it unset)".into(),
            }),
        }
    }
}

/// Wraps an extractor so that it panics on records carrying the marker.
pub struct PanicOnMarker {
    /// The marker.
    pub marker: String,
    /// The extractor used for every other record.
    pub inner: Arc<dyn NoteExtractor>,
}

impl NoteExtractor for PanicOnMarker {
    fn extract(&self, event: &ElaborationCompleted) -> Vec<String> {
        if event.hikmah.contains(&self.marker) {
            panic!("injected fault: panic-on:{}", self.marker);
        }
        self.inner.extract(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_means_no_fault_and_only_panic_on_is_accepted() {
        assert_eq!(Fault::from_env(&Env::from_pairs([("X", "1")])), Ok(None));
        assert_eq!(
            Fault::from_env(&Env::from_pairs([(FAULT_INJECTION_VAR, "panic-on:BOOM")])),
            Ok(Some(Fault::PanicOn("BOOM".into())))
        );
        for bad in ["panic-on:", "abort", "panic"] {
            let err = Fault::from_env(&Env::from_pairs([(FAULT_INJECTION_VAR, bad)]));
            assert!(
                matches!(err, Err(ConfigError::Invalid { name, .. }) if name == FAULT_INJECTION_VAR)
            );
        }
    }
}
