//! Queue messages for tests.

use shared::events::ElaborationCompleted;
use shared::types::UserId;

/// A current-version event for `user` about `hikmah` (with an optional question).
pub fn event(user: &str, hikmah: &str, question: Option<&str>) -> ElaborationCompleted {
    ElaborationCompleted::new(
        UserId::parse(user).unwrap_or_else(|e| panic!("test user id {user:?}: {e}")),
        hikmah.into(),
        question.map(Into::into),
        "An elaboration the consumer does not store.".into(),
        "test-model".into(),
    )
}
