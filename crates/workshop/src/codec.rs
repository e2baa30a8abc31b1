//! How domain events are stored in a log: type name, schema version and a JSON payload.
//! Upcasting of old schema versions happens here, on read, and nowhere else.

use santa_cqrs::{NewEvent, Position, RecordedEvent};
use santa_domain::Event;

use crate::Millis;

/// A decoded event with the log's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub position: Position,
    pub stream: String,
    pub version: u64,
    pub recorded_at_ms: Millis,
    pub event: Event,
}

/// A stored event this code cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event at {position} ({event_type} v{schema_version}): {reason}")]
pub struct DecodeError {
    pub position: Position,
    pub event_type: String,
    pub schema_version: u32,
    pub reason: String,
}

/// Encodes an event for appending.
pub fn encode(event: &Event) -> NewEvent {
    let data = match event {
        Event::ToyUpserted(e) => serde_json::to_vec(e),
        Event::LetterSubmitted(e) => serde_json::to_vec(e),
        Event::LetterCancelled(e) => serde_json::to_vec(e),
    };
    NewEvent {
        // Time-ordered, so the log's event-id index grows at its end.
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: event.event_type().to_owned(),
        schema_version: Event::SCHEMA_VERSION,
        // Serialising plain structs of strings and integers into memory cannot fail.
        data: data.unwrap_or_default(),
    }
}

/// Decodes a recorded event, upcasting older schema versions.
pub fn decode(recorded: &RecordedEvent) -> Result<Envelope, DecodeError> {
    let fail = |reason: String| DecodeError {
        position: recorded.position,
        event_type: recorded.event_type.clone(),
        schema_version: recorded.schema_version,
        reason,
    };
    if recorded.schema_version != Event::SCHEMA_VERSION {
        return Err(fail(format!(
            "unsupported schema version (this build reads v{})",
            Event::SCHEMA_VERSION
        )));
    }
    let data = &recorded.data;
    let event = match recorded.event_type.as_str() {
        Event::TOY_UPSERTED => serde_json::from_slice(data).map(Event::ToyUpserted),
        Event::LETTER_SUBMITTED => serde_json::from_slice(data).map(Event::LetterSubmitted),
        Event::LETTER_CANCELLED => serde_json::from_slice(data).map(Event::LetterCancelled),
        other => return Err(fail(format!("unknown event type `{other}`"))),
    }
    .map_err(|e| fail(e.to_string()))?;
    Ok(Envelope {
        position: recorded.position,
        stream: recorded.stream.clone(),
        version: recorded.version,
        recorded_at_ms: recorded.recorded_at_ms,
        event,
    })
}
