//! How an event is carried in a JetStream message: headers for the metadata, the payload
//! as is.

use async_nats::HeaderMap;
use async_nats::jetstream;
use santa_cqrs::{LogError, Position, RecordedEvent};

pub(crate) const VERSION: &str = "Santa-Version";
pub(crate) const STREAM: &str = "Santa-Stream";
pub(crate) const EVENT_TYPE: &str = "Santa-Event-Type";
pub(crate) const SCHEMA: &str = "Santa-Schema-Version";
pub(crate) const RECORDED_AT: &str = "Santa-Recorded-At";

pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.as_str())
}

pub(crate) fn unavailable(error: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(error.to_string())
}

/// Rebuilds a recorded event from a JetStream message's sequence, headers and payload.
pub(crate) fn recorded(
    sequence: u64,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<RecordedEvent, LogError> {
    let headers =
        headers.ok_or_else(|| LogError::Corrupt(format!("message {sequence} has no headers")))?;
    let get = |name: &str| {
        header(headers, name)
            .ok_or_else(|| LogError::Corrupt(format!("message {sequence} lacks {name}")))
    };
    let number = |name: &str| {
        get(name)?
            .parse::<i64>()
            .map_err(|e| LogError::Corrupt(format!("message {sequence}: {name}: {e}")))
    };
    Ok(RecordedEvent {
        position: Position::new(sequence),
        stream: get(STREAM)?.to_owned(),
        version: u64::try_from(number(VERSION)?).unwrap_or(0),
        event_id: get("Nats-Msg-Id")?.to_owned(),
        event_type: get(EVENT_TYPE)?.to_owned(),
        schema_version: u32::try_from(number(SCHEMA)?).unwrap_or(0),
        recorded_at_ms: number(RECORDED_AT)?,
        data: payload.to_vec(),
    })
}

pub(crate) fn from_message(message: &jetstream::Message) -> Result<RecordedEvent, LogError> {
    let sequence = message
        .info()
        .map_err(|e| LogError::Corrupt(e.to_string()))?
        .stream_sequence;
    recorded(sequence, message.headers.as_ref(), &message.payload)
}
