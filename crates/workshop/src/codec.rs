//! How domain events are stored in a log: type name, schema version and a JSON payload.
//! Upcasting of old schema versions happens here, on read, and nowhere else.

use santa_cqrs::{NewEvent, Position, RecordedEvent};
use santa_domain::Event;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

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

/// Encodes an event for appending, at its current schema version.
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
        schema_version: event.schema_version(),
        // Serialising plain structs of strings and integers into memory cannot fail.
        data: data.unwrap_or_default(),
    }
}

/// Decodes a recorded event, upcasting older schema versions to the current one.
pub fn decode(recorded: &RecordedEvent) -> Result<Envelope, DecodeError> {
    let fail = |reason: String| DecodeError {
        position: recorded.position,
        event_type: recorded.event_type.clone(),
        schema_version: recorded.schema_version,
        reason,
    };
    let event_type = recorded.event_type.as_str();
    let event = if Event::current_schema_version(event_type) == Some(recorded.schema_version) {
        // The usual case, at the version this build writes: straight from the bytes into
        // the event, with no JSON document in between (building one was 6 % of a letters
        // rebuild's CPU).
        let mut payload = serde_json::Deserializer::from_slice(&recorded.data);
        let event = typed(event_type, &mut payload).map_err(|e| fail(e.to_string()))?;
        payload.end().map_err(|e| fail(e.to_string()))?;
        event
    } else {
        let payload: Value =
            serde_json::from_slice(&recorded.data).map_err(|e| fail(e.to_string()))?;
        let payload = upcast(event_type, recorded.schema_version, payload).map_err(fail)?;
        typed(event_type, payload).map_err(|e| fail(e.to_string()))?
    };
    Ok(Envelope {
        position: recorded.position,
        stream: recorded.stream.clone(),
        version: recorded.version,
        recorded_at_ms: recorded.recorded_at_ms,
        event,
    })
}

/// Reads a payload at the current schema version as an event of `event_type`.
fn typed<'de, D: Deserializer<'de>>(event_type: &str, payload: D) -> Result<Event, D::Error> {
    Ok(match event_type {
        Event::TOY_UPSERTED => Event::ToyUpserted(Deserialize::deserialize(payload)?),
        Event::LETTER_SUBMITTED => Event::LetterSubmitted(Deserialize::deserialize(payload)?),
        Event::LETTER_CANCELLED => Event::LetterCancelled(Deserialize::deserialize(payload)?),
        other => return Err(D::Error::custom(format!("unknown event type `{other}`"))),
    })
}

/// Brings a payload of `schema_version` up to the version this build writes.
fn upcast(event_type: &str, schema_version: u32, mut payload: Value) -> Result<Value, String> {
    match (event_type, schema_version) {
        (Event::LETTER_SUBMITTED, 1) => {
            // v1 letters had no country: they were sent before countries were asked for.
            if let Value::Object(fields) = &mut payload {
                fields.entry("country").or_insert(Value::Null);
            }
            Ok(payload)
        }
        (Event::LETTER_SUBMITTED, 2) | (Event::TOY_UPSERTED | Event::LETTER_CANCELLED, 1) => {
            Ok(payload)
        }
        (Event::LETTER_SUBMITTED | Event::TOY_UPSERTED | Event::LETTER_CANCELLED, version) => {
            Err(format!(
                "unsupported schema version {version} (this build reads up to the current one)"
            ))
        }
        (other, _) => Err(format!("unknown event type `{other}`")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn recorded(event_type: &str, schema_version: u32, data: Value) -> RecordedEvent {
        RecordedEvent {
            position: Position::new(7),
            stream: "letter-old".into(),
            version: 1,
            event_id: "e".into(),
            event_type: event_type.into(),
            schema_version,
            recorded_at_ms: 0,
            data: serde_json::to_vec(&data).unwrap(),
        }
    }

    fn v1_letter() -> Value {
        json!({
            "letter_id": "old", "child": "Ada", "address": "1 Snow Lane",
            "lines": [{"toy_id": "kite", "quantity": 2, "unit_price_cents": 100}],
            "total_cents": 200,
        })
    }

    #[test]
    fn a_v1_letter_without_a_country_is_upcast() {
        let envelope = decode(&recorded(Event::LETTER_SUBMITTED, 1, v1_letter())).unwrap();
        let Event::LetterSubmitted(letter) = envelope.event else {
            panic!("a letter")
        };
        assert_eq!(letter.country, None);
        assert_eq!(letter.total_cents.get(), 200);
    }

    #[test]
    fn current_events_round_trip_at_their_version() {
        let Event::LetterSubmitted(old) =
            decode(&recorded(Event::LETTER_SUBMITTED, 1, v1_letter()))
                .unwrap()
                .event
        else {
            panic!("a letter")
        };
        let event = Event::LetterSubmitted(old);
        let stored = encode(&event);
        assert_eq!(stored.schema_version, 2);
        let mut again = recorded(Event::LETTER_SUBMITTED, 2, json!(null));
        again.data = stored.data;
        assert_eq!(decode(&again).unwrap().event, event);
    }

    #[test]
    fn every_event_is_written_at_the_version_decoded_without_upcasting() {
        // `Event::schema_version` (what encode writes) and `Event::current_schema_version`
        // (what decode reads straight from the bytes) must agree for every kind.
        let toy = json!({"toy_id": "kite", "name": "Kite", "description": "", "price_cents": 100});
        let events = [
            recorded(Event::LETTER_SUBMITTED, 1, v1_letter()),
            recorded(Event::TOY_UPSERTED, 1, toy),
            recorded(Event::LETTER_CANCELLED, 1, json!({"letter_id": "old"})),
        ]
        .map(|r| decode(&r).unwrap().event);
        for event in events {
            assert_eq!(
                Event::current_schema_version(event.event_type()),
                Some(event.schema_version()),
                "{}",
                event.event_type()
            );
        }
    }

    #[test]
    fn unknown_versions_and_types_are_refused_by_name() {
        let error = decode(&recorded(Event::LETTER_SUBMITTED, 3, v1_letter())).unwrap_err();
        assert!(error.reason.contains("schema version 3"), "{error}");
        let error = decode(&recorded("LetterEaten", 1, json!({}))).unwrap_err();
        assert!(error.reason.contains("unknown event type"), "{error}");
    }
}
