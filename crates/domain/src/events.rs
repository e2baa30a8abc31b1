//! Events: past-tense facts, the source of truth. Payloads are domain types, never wire
//! types; each kind carries an explicit schema version.

use serde::{Deserialize, Serialize};

use crate::{Address, Cents, ChildName, Country, Description, LetterId, Quantity, ToyId, ToyName};

/// Everything that can happen in the workshop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    ToyUpserted(ToyUpserted),
    LetterSubmitted(LetterSubmitted),
    LetterCancelled(LetterCancelled),
}

/// A toy was added to the catalogue or its details changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToyUpserted {
    pub toy_id: ToyId,
    pub name: ToyName,
    pub description: Description,
    pub price_cents: Cents,
}

/// A child's letter was accepted. Lines carry the unit price at submission time, so later
/// price changes never rewrite what was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LetterSubmitted {
    pub letter_id: LetterId,
    pub child: ChildName,
    pub address: Address,
    pub country: Option<Country>,
    pub lines: Vec<LetterLine>,
    pub total_cents: Cents,
}

/// One line of a submitted letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LetterLine {
    pub toy_id: ToyId,
    pub quantity: Quantity,
    pub unit_price_cents: Cents,
}

/// A letter was withdrawn; its lines no longer count as demand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LetterCancelled {
    pub letter_id: LetterId,
}

/// The schema versions events are written with today (see [`Event::schema_version`]):
/// one table for what is written and what is read without upcasting.
const LETTER_SUBMITTED_VERSION: u32 = 2;
const TOY_UPSERTED_VERSION: u32 = 1;
const LETTER_CANCELLED_VERSION: u32 = 1;

impl Event {
    /// The names under which events are stored; stable forever.
    pub const TOY_UPSERTED: &'static str = "ToyUpserted";
    pub const LETTER_SUBMITTED: &'static str = "LetterSubmitted";
    pub const LETTER_CANCELLED: &'static str = "LetterCancelled";

    /// The schema version each kind of event is written with today. History:
    /// `LetterSubmitted` v1 had no `country`; v2 always carries it (possibly null).
    pub fn schema_version(&self) -> u32 {
        match self {
            Event::LetterSubmitted(_) => LETTER_SUBMITTED_VERSION,
            Event::ToyUpserted(_) => TOY_UPSERTED_VERSION,
            Event::LetterCancelled(_) => LETTER_CANCELLED_VERSION,
        }
    }

    /// The schema version events of `event_type` are written with today; `None` for a
    /// type this build does not know.
    pub fn current_schema_version(event_type: &str) -> Option<u32> {
        match event_type {
            Self::LETTER_SUBMITTED => Some(LETTER_SUBMITTED_VERSION),
            Self::TOY_UPSERTED => Some(TOY_UPSERTED_VERSION),
            Self::LETTER_CANCELLED => Some(LETTER_CANCELLED_VERSION),
            _ => None,
        }
    }

    pub fn event_type(&self) -> &'static str {
        match self {
            Event::ToyUpserted(_) => Self::TOY_UPSERTED,
            Event::LetterSubmitted(_) => Self::LETTER_SUBMITTED,
            Event::LetterCancelled(_) => Self::LETTER_CANCELLED,
        }
    }

    /// The stream (aggregate) the event belongs to: `toy-<id>` or `letter-<id>`.
    pub fn stream(&self) -> String {
        match self {
            Event::ToyUpserted(e) => toy_stream(&e.toy_id),
            Event::LetterSubmitted(e) => letter_stream(&e.letter_id),
            Event::LetterCancelled(e) => letter_stream(&e.letter_id),
        }
    }
}

pub(crate) fn toy_stream(id: &ToyId) -> String {
    format!("toy-{id}")
}

pub(crate) fn letter_stream(id: &LetterId) -> String {
    format!("letter-{id}")
}
