//! The workshop's domain: toys, letters, the commands that change them, the events that
//! record the changes, and the write-side rules that decide between them.
//!
//! This crate is pure. It does no I/O, owns no clock and no randomness, and knows nothing
//! of JSON, HTTP or storage: every value arrives already parsed into a type that cannot
//! hold an invalid state, and every decision is a function of (state, command).

mod decide;
mod error;
mod events;
mod values;

pub use decide::{CancelLetter, Decision, LetterState, SubmitLetter, ToyState, UpsertToy};
pub use error::{DomainError, InvalidValue};
pub use events::{Event, LetterCancelled, LetterLine, LetterSubmitted, ToyUpserted};
pub use values::{
    Address, Cents, ChildName, Country, Description, LetterId, MAX_LINES_PER_LETTER, Quantity,
    ToyId, ToyName,
};
