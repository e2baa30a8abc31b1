//! The command side: load the aggregate's stream, decide, append with the version it was
//! decided on. A command is acknowledged only with the position of a durable event.

use std::sync::Arc;

use santa_cqrs::{EventLog, ExpectedVersion, LogError, Position, RecordedEvent};
use santa_domain::{
    CancelLetter, Cents, Decision, DomainError, Event, LetterState, SubmitLetter, ToyId, ToyState,
    UpsertToy,
};

use crate::codec::{self, DecodeError};

/// A command the log made durable (or an idempotent repeat of one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub id: String,
    pub position: Position,
    /// `false` when the command repeated one already recorded and nothing was appended.
    pub created: bool,
}

/// Why a command was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Rejected(#[from] DomainError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Corrupt(#[from] DecodeError),
}

/// How often a command is decided again after losing an optimistic-concurrency race.
const MAX_ATTEMPTS: usize = 5;

/// Handles the workshop's commands against any [`EventLog`].
#[derive(Debug, Clone)]
pub struct CommandService {
    log: Arc<dyn EventLog>,
}

impl CommandService {
    pub fn new(log: Arc<dyn EventLog>) -> Self {
        Self { log }
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    #[tracing::instrument(skip_all, fields(toy = %cmd.id))]
    pub async fn upsert_toy(&self, cmd: UpsertToy) -> Result<Accepted, CommandError> {
        let id = cmd.id.to_string();
        let stream = cmd.stream();
        self.decide_and_append(&stream, id, |events| {
            let mut state = ToyState::default();
            events.iter().for_each(|e| state.apply(&e.1));
            let last = events.last().map(|e| e.0);
            let decision = state.decide(cmd.clone());
            async move { Ok((decision, last)) }
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(letter = %cmd.id()))]
    pub async fn submit_letter(&self, cmd: SubmitLetter) -> Result<Accepted, CommandError> {
        let id = cmd.id().to_string();
        let stream = cmd.stream();
        self.decide_and_append(&stream, id, |events| {
            let cmd = cmd.clone();
            async move {
                let mut state = LetterState::default();
                events.iter().for_each(|e| state.apply(&e.1));
                let first = events.first().map(|e| e.0);
                let prices = self.prices(cmd.toys().iter().map(|(toy, _)| toy)).await?;
                let decision = state.decide_submit(cmd, |toy| {
                    prices
                        .iter()
                        .find(|(id, _)| id == toy)
                        .and_then(|(_, price)| *price)
                })?;
                Ok((decision, first))
            }
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(letter = %cmd.id))]
    pub async fn cancel_letter(&self, cmd: CancelLetter) -> Result<Accepted, CommandError> {
        let id = cmd.id.to_string();
        let stream = cmd.stream();
        self.decide_and_append(&stream, id, |events| {
            let mut state = LetterState::default();
            events.iter().for_each(|e| state.apply(&e.1));
            let decision = state.decide_cancel(cmd.clone());
            async move { Ok((decision?, None)) }
        })
        .await
    }

    /// The history of one stream, decoded.
    pub async fn history(&self, stream: &str) -> Result<Vec<codec::Envelope>, CommandError> {
        let recorded = self.log.read_stream(stream).await?;
        Ok(recorded
            .iter()
            .map(codec::decode)
            .collect::<Result<_, _>>()?)
    }

    /// Loads `stream`, lets `decide` choose, and appends at the loaded version; decides
    /// again when another writer got there first. `decide` returns the decision and, for
    /// an idempotent repeat, the position to acknowledge again.
    async fn decide_and_append<F, Fut>(
        &self,
        stream: &str,
        id: String,
        decide: F,
    ) -> Result<Accepted, CommandError>
    where
        F: Fn(Vec<(Position, Event)>) -> Fut,
        Fut: Future<Output = Result<(Decision, Option<Position>), CommandError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let recorded = self.log.read_stream(stream).await?;
            let version = recorded.last().map_or(0, |e| e.version);
            let events = decode_all(&recorded)?;
            match decide(events).await? {
                (Decision::Unchanged, repeat) => {
                    let position = repeat
                        .or(recorded.last().map(|e| e.position))
                        .unwrap_or(Position::ZERO);
                    return Ok(Accepted {
                        id,
                        position,
                        created: false,
                    });
                }
                (Decision::Append(event), _) => {
                    match self
                        .log
                        .append(
                            stream,
                            ExpectedVersion::Exactly(version),
                            vec![codec::encode(&event)],
                        )
                        .await
                    {
                        Ok(position) => {
                            return Ok(Accepted {
                                id,
                                position,
                                created: true,
                            });
                        }
                        Err(LogError::Conflict { .. }) if attempt < MAX_ATTEMPTS => continue,
                        Err(error) => return Err(error.into()),
                    }
                }
            }
        }
    }

    /// The current catalogue price of each toy (`None`: not in the catalogue).
    async fn prices<'a>(
        &self,
        toys: impl Iterator<Item = &'a ToyId>,
    ) -> Result<Vec<(ToyId, Option<Cents>)>, CommandError> {
        let mut prices = Vec::new();
        for toy in toys {
            let recorded = self.log.read_stream(&format!("toy-{toy}")).await?;
            let mut state = ToyState::default();
            decode_all(&recorded)?
                .iter()
                .for_each(|e| state.apply(&e.1));
            prices.push((toy.clone(), state.price()));
        }
        Ok(prices)
    }
}

fn decode_all(recorded: &[RecordedEvent]) -> Result<Vec<(Position, Event)>, DecodeError> {
    recorded
        .iter()
        .map(|r| codec::decode(r).map(|e| (e.position, e.event)))
        .collect()
}
