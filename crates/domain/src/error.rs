use crate::{LetterId, ToyId};

/// A raw value that could not be parsed into its domain type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidValue {
    /// The name of the offending field, as a client would spell it.
    pub field: &'static str,
    /// What is wrong with it, in words a client can act on.
    pub reason: String,
}

impl InvalidValue {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// Why a command was refused. Each kind is something a caller can match on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error(transparent)]
    Invalid(#[from] InvalidValue),
    #[error("toy `{0}` is not in the catalogue")]
    UnknownToy(ToyId),
    #[error("letter `{0}` was already submitted with different content")]
    LetterConflict(LetterId),
    #[error("letter `{0}` does not exist")]
    LetterNotFound(LetterId),
    #[error("letter `{0}` is already cancelled")]
    AlreadyCancelled(LetterId),
}
