//! Idempotency keys in a JetStream stream of their own: one subject per key, at most one
//! message per subject, messages expire after the window (`max_age`). The first answer
//! wins through `Nats-Expected-Last-Subject-Sequence: 0`.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{Config, DirectGetErrorKind, StorageType, Stream};
use async_trait::async_trait;
use santa_workshop::idempotency::{IdempotencyStore, IdempotentAnswer};
use santa_workshop::kv::StoreError;

use crate::NatsEventLog;
use crate::log::NatsError;

/// Idempotency keys beside a JetStream event log.
#[derive(Debug, Clone)]
pub struct NatsIdempotencyStore {
    jetstream: async_nats::jetstream::Context,
    stream: Stream,
    prefix: String,
    window: Duration,
}

impl NatsIdempotencyStore {
    /// Opens (or creates) the stream `<log stream>_IDEMPOTENCY` beside `log`'s stream.
    pub async fn open(log: &NatsEventLog, window: Duration) -> Result<Self, NatsError> {
        let name = format!("{}_IDEMPOTENCY", log.stream_name());
        // A sibling of the events' subjects (`santa.events_keys.>` beside `santa.events.>`):
        // JetStream streams may not share subjects.
        let prefix = format!("{}_keys", log.prefix());
        let config = Config {
            name: name.clone(),
            description: Some(
                "Santa's Workshop: answers to commands sent with an Idempotency-Key".into(),
            ),
            subjects: vec![format!("{prefix}.>")],
            max_messages_per_subject: 1,
            // A zero window keeps nothing; JetStream reads zero as "forever".
            max_age: window.max(Duration::from_millis(1)),
            storage: StorageType::File,
            allow_direct: true,
            ..Config::default()
        };
        let jetstream = log.jetstream().clone();
        let stream =
            jetstream
                .get_or_create_stream(config)
                .await
                .map_err(|e| NatsError::Conflict {
                    stream: name,
                    reason: e.to_string(),
                })?;
        Ok(Self {
            jetstream,
            stream,
            prefix,
            window,
        })
    }

    /// Subject tokens allow few characters: the key's bytes in hex.
    fn subject(&self, key: &str) -> String {
        let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
        format!("{}.{hex}", self.prefix)
    }

    async fn kept(&self, subject: &str) -> Result<Option<IdempotentAnswer>, StoreError> {
        match self.stream.direct_get_last_for_subject(subject).await {
            Ok(message) if self.fresh(&message.time) => decode(&message.payload).map(Some),
            Ok(_) => Ok(None),
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Whether a message stored at `time` is inside the window (the server expires it
    /// shortly after, not exactly at, the window's end).
    fn fresh(&self, stored: &time::OffsetDateTime) -> bool {
        let age_ms = (time::OffsetDateTime::now_utc() - *stored).whole_milliseconds();
        age_ms < i128::try_from(self.window.as_millis()).unwrap_or(i128::MAX)
    }
}

fn encode(answer: &IdempotentAnswer) -> Vec<u8> {
    format!("{}\n{}\n{}", answer.fingerprint, answer.position, answer.id).into_bytes()
}

fn decode(value: &[u8]) -> Result<IdempotentAnswer, StoreError> {
    let text = std::str::from_utf8(value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mut parts = text.splitn(3, '\n');
    let corrupt = || StoreError::Corrupt("unreadable idempotency entry".into());
    let fingerprint = parts.next().ok_or_else(corrupt)?.to_owned();
    let position = parts
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(corrupt)?;
    let id = parts.next().ok_or_else(corrupt)?.to_owned();
    Ok(IdempotentAnswer {
        fingerprint,
        id,
        position,
    })
}

fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

#[async_trait]
impl IdempotencyStore for NatsIdempotencyStore {
    async fn get(&self, key: &str) -> Result<Option<IdempotentAnswer>, StoreError> {
        self.kept(&self.subject(key)).await
    }

    async fn put(
        &self,
        key: &str,
        answer: IdempotentAnswer,
    ) -> Result<IdempotentAnswer, StoreError> {
        let subject = self.subject(key);
        let expected = match self
            .stream
            .direct_get_last_for_subject(subject.as_str())
            .await
        {
            Ok(message) if self.fresh(&message.time) => return decode(&message.payload),
            // An expired answer the server has not removed yet is replaced.
            Ok(message) => message.sequence,
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => 0,
            Err(e) => return Err(unavailable(e)),
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            expected.to_string().as_str(),
        );
        let ack = self
            .jetstream
            .publish_with_headers(subject.clone(), headers, encode(&answer).into())
            .await
            .map_err(unavailable)?
            .await;
        match ack {
            Ok(_) => Ok(answer),
            // Another request with the same key got there first: its answer is kept.
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                Ok(self.kept(&subject).await?.unwrap_or(answer))
            }
            Err(e) => Err(unavailable(e)),
        }
    }
}
