//! `Idempotency-Key`: the first answer to a command sent with a key is kept for a window,
//! and a retry with the same key gets it again instead of a second effect. The same key
//! with a different request is refused.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;

use crate::kv::StoreError;

/// What is kept for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotentAnswer {
    /// Identifies the request the key was first used with (method, path and body).
    pub fingerprint: String,
    /// The acknowledged command's id and position.
    pub id: String,
    pub position: u64,
}

/// Where keys are kept: beside the event log of each backend.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + Debug + 'static {
    /// The answer kept for `key`, if it was stored less than the window ago.
    async fn get(&self, key: &str) -> Result<Option<IdempotentAnswer>, StoreError>;

    /// Keeps `answer` for `key` unless one is kept already (the first answer wins), and
    /// returns the kept answer.
    async fn put(
        &self,
        key: &str,
        answer: IdempotentAnswer,
    ) -> Result<IdempotentAnswer, StoreError>;
}

/// The default window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);
