//! The command side: load the aggregate's stream, decide, append with the version it was
//! decided on. A command is acknowledged only with the position of a durable event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use santa_cqrs::{
    DecideError, Decider, EventLog, LogError, Position, RecordedEvent, Refusal, Verdict,
};
use santa_domain::{
    CancelLetter, Cents, Decision, DomainError, Event, LetterState, SubmitLetter, ToyState,
    UpsertToy,
};

use crate::codec::{self, DecodeError};

/// A command the log made durable (or an idempotent repeat of one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub id: String,
    pub position: Position,
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

/// A stream's decoded events with their positions.
type History = Vec<(Position, Event)>;

/// Handles the workshop's commands against any [`EventLog`].
#[derive(Debug, Clone)]
pub struct CommandService {
    log: Arc<dyn EventLog>,
    prices: Arc<Prices>,
}

/// The price each toy event left its toy at, by the event's position (a logged event never
/// changes): a letter's toys are decoded once per catalogue change, not once per letter.
#[derive(Debug, Default)]
struct Prices(Mutex<HashMap<Position, Option<Cents>>>);

/// Toy events [`Prices`] holds at most; past that it starts over (a catalogue's toys are
/// far fewer).
const PRICED_EVENTS: usize = 4096;

impl Prices {
    /// The price of the toy whose newest event is `last` (`None`: not in the catalogue).
    fn of(&self, last: Option<&RecordedEvent>) -> Result<Option<Cents>, DecodeError> {
        let Some(last) = last else {
            return Ok(None);
        };
        let held = self.lock().get(&last.position).copied();
        if let Some(price) = held {
            return Ok(price);
        }
        let history = decode_all(std::slice::from_ref(last))?;
        let price = fold(ToyState::default(), ToyState::apply, &history).price();
        let mut prices = self.lock();
        if prices.len() >= PRICED_EVENTS {
            prices.clear();
        }
        prices.insert(last.position, price);
        Ok(price)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Position, Option<Cents>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl CommandService {
    pub fn new(log: Arc<dyn EventLog>) -> Self {
        Self {
            log,
            prices: Arc::default(),
        }
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    #[tracing::instrument(skip_all, fields(toy = %cmd.id))]
    pub async fn upsert_toy(&self, cmd: UpsertToy) -> Result<Accepted, CommandError> {
        let (id, stream) = (cmd.id.to_string(), cmd.stream());
        self.decide_and_append(&stream, &[], Expect::Any, id, move |history, _| {
            let state = fold(ToyState::default(), ToyState::apply, &history);
            Ok((state.decide(cmd.clone()), history.last().map(|e| e.0)))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(letter = %cmd.id()))]
    pub async fn submit_letter(&self, cmd: SubmitLetter) -> Result<Accepted, CommandError> {
        let (id, stream) = (cmd.id().to_string(), cmd.stream());
        // A toy's newest event is its whole state (every upsert carries the full toy).
        let toy_streams: Vec<String> = cmd
            .toys()
            .iter()
            .map(|(toy, _)| format!("toy-{toy}"))
            .collect();
        // Letters are new far more often than repeated: decided without reading the stream
        // first, unless it turns out to exist.
        let prices = self.prices.clone();
        self.decide_and_append(
            &stream,
            &toy_streams,
            Expect::New,
            id,
            move |history, toys| {
                let state = fold(LetterState::default(), LetterState::apply, &history);
                let catalogue = toys
                    .iter()
                    .map(|last| prices.of(last.as_ref()))
                    .collect::<Result<Vec<_>, _>>()?;
                let decision = state.decide_submit(cmd.clone(), |toy| {
                    let i = cmd.toys().iter().position(|(t, _)| t == toy)?;
                    catalogue.get(i).copied().flatten()
                })?;
                Ok((decision, history.first().map(|e| e.0)))
            },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(letter = %cmd.id))]
    pub async fn cancel_letter(&self, cmd: CancelLetter) -> Result<Accepted, CommandError> {
        let (id, stream) = (cmd.id.to_string(), cmd.stream());
        self.decide_and_append(&stream, &[], Expect::Any, id, move |history, _| {
            let state = fold(LetterState::default(), LetterState::apply, &history);
            Ok((state.decide_cancel(cmd.clone())?, None))
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

    /// Loads `stream` (and, read-only, the newest event of each `context` stream), lets
    /// `decide` choose, and appends at the loaded version, all through the log's
    /// [`EventLog::decide_and_append`]. `decide` returns the decision and, for an
    /// idempotent repeat, the position to acknowledge again.
    async fn decide_and_append<F>(
        &self,
        stream: &str,
        context: &[String],
        expect: Expect,
        id: String,
        decide: F,
    ) -> Result<Accepted, CommandError>
    where
        F: Fn(
                History,
                &[Option<RecordedEvent>],
            ) -> Result<(Decision, Option<Position>), CommandError>
            + Send
            + 'static,
    {
        let decider: Decider = Box::new(move |recorded, context| {
            let verdict = decode_all(recorded)
                .map_err(CommandError::from)
                .and_then(|history| decide(history, context))
                .map(|(decision, repeat)| match decision {
                    Decision::Unchanged => Verdict::Nothing(
                        repeat
                            .or(recorded.last().map(|e| e.position))
                            .unwrap_or(Position::ZERO),
                    ),
                    Decision::Append(event) => Verdict::Append(vec![codec::encode(&event)]),
                });
            verdict.map_err(|error| Box::new(error) as Refusal)
        });
        let decided = match expect {
            Expect::Any => self.log.decide_and_append(stream, context, decider).await,
            Expect::New => self.log.decide_and_start(stream, context, decider).await,
        };
        match decided {
            Ok(position) => Ok(Accepted { id, position }),
            Err(DecideError::Log(error)) => Err(error.into()),
            Err(DecideError::Refused(refusal)) => Err(match refusal.downcast::<CommandError>() {
                Ok(error) => *error,
                Err(other) => CommandError::Log(LogError::Unavailable(other.to_string())),
            }),
        }
    }
}

/// What a command expects of its stream.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Anything: read it, then decide.
    Any,
    /// Most likely nothing yet (see [`EventLog::decide_and_start`]).
    New,
}

fn fold<S>(mut state: S, apply: fn(&mut S, &Event), history: &History) -> S {
    history.iter().for_each(|(_, e)| apply(&mut state, e));
    state
}

fn decode_all(recorded: &[RecordedEvent]) -> Result<History, DecodeError> {
    recorded
        .iter()
        .map(|r| codec::decode(r).map(|e| (e.position, e.event)))
        .collect()
}
