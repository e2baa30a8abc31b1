use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{Config, DirectGetErrorKind, StorageType, Stream};
use async_nats::jetstream::{self, Context};
use async_trait::async_trait;
use futures_util::StreamExt;
use santa_cqrs::{
    EventLog, EventSource, ExpectedVersion, LogError, NewEvent, Position, RecordedEvent,
};
use tokio::sync::watch;

use crate::message::{
    EVENT_TYPE, RECORDED_AT, SCHEMA, STREAM, VERSION, from_message, header, recorded, unavailable,
};
use crate::publisher::{DEFAULT_PUBLISH_LINGER, Publisher};
use crate::reader::PartitionReader;

/// Where and how the log lives in JetStream.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// The JetStream stream's name.
    pub stream: String,
    /// Subject prefix; events go to `<prefix>.<partition>.<stream>`.
    pub prefix: String,
    /// How many partitions events are spread over. Fixed when the stream is created.
    pub partitions: u32,
    /// How old the newest event of a command's context stream (a toy a letter asks for)
    /// may be when a command is decided on it: within this age, one read is reused by the
    /// commands that follow instead of asking JetStream again for each. A stream this
    /// process appends to is read afresh at once; one changed through another process may
    /// be seen this late (a letter may then carry a toy's price changed that long before
    /// it). Zero reads every time.
    pub context_max_age: Duration,
    /// How long the publishes of appends may gather, while JetStream has not answered
    /// those sent before them, to go together: at most a linger after the last group. A
    /// publish goes at once when everything sent was answered. Zero publishes each at once.
    pub publish_linger: Duration,
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self::named("SANTA_EVENTS", 8)
    }
}

impl NatsOptions {
    /// The stream `stream`, its subjects named after it: `SANTA_EVENTS` → `santa.events.>`.
    pub fn named(stream: &str, partitions: u32) -> Self {
        Self {
            stream: stream.to_owned(),
            prefix: stream.to_ascii_lowercase().replace('_', "."),
            partitions,
            context_max_age: DEFAULT_CONTEXT_MAX_AGE,
            publish_linger: DEFAULT_PUBLISH_LINGER,
        }
    }
}

/// See [`NatsOptions::context_max_age`]. Each letter read its toys from JetStream before
/// it was published: three requests per two-toy letter instead of one. Scaled out at 1,200
/// letters/s, two runs each in turn (`--context-max-age 0s`, then this default): the
/// API's CPU per letter 246 and 249 → 191 and 202 µs, NATS's 374 and 382 → 260 and 278 µs,
/// every process's together 980 and 986 → 786 and 836 µs.
pub const DEFAULT_CONTEXT_MAX_AGE: Duration = Duration::from_millis(250);

/// Context streams' newest events as read lately (see [`NatsOptions::context_max_age`]).
#[derive(Debug, Default)]
struct ContextCache {
    streams: std::sync::Mutex<HashMap<String, ContextEntry>>,
}

#[derive(Debug)]
struct ContextEntry {
    /// The newest event read, and when; `None` until read, or once this process appended.
    last: Option<(Instant, RecordedEvent)>,
    /// The newest sequence this process appended to the stream: an older read, finishing
    /// late, is not kept.
    floor: u64,
}

/// How many streams the cache holds before it drops those read too long ago.
const CONTEXT_STREAMS: usize = 10_000;

impl ContextCache {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, ContextEntry>> {
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The newest event of `stream` if it was read less than `max_age` ago.
    fn fresh(&self, stream: &str, max_age: Duration) -> Option<RecordedEvent> {
        let entries = self.entries();
        let (at, event) = entries.get(stream)?.last.as_ref()?;
        (at.elapsed() < max_age).then(|| event.clone())
    }

    /// `stream` is about to be read: from now on an append by this process is noted, so
    /// that the read, should it finish after it, is not kept.
    fn reading(&self, stream: &str, max_age: Duration) {
        let mut entries = self.entries();
        if entries.len() >= CONTEXT_STREAMS {
            // Only reads still fresh stay. A read under way whose entry goes is not kept
            // when it finishes (`keep` needs the entry), so nothing stale can stay.
            entries.retain(|_, e| {
                e.last
                    .as_ref()
                    .is_some_and(|(at, _)| at.elapsed() < max_age)
            });
        }
        entries.entry(stream.to_owned()).or_insert(ContextEntry {
            last: None,
            floor: 0,
        });
    }

    /// Keeps `event`, just read as the newest of `stream`, unless this process has
    /// appended past it meanwhile (or the entry was dropped while it was read).
    fn keep(&self, stream: &str, event: &RecordedEvent) {
        if let Some(entry) = self.entries().get_mut(stream)
            && event.position.get() >= entry.floor
        {
            entry.last = Some((Instant::now(), event.clone()));
        }
    }

    /// This process appended to `stream` up to `sequence`: read it afresh from now on.
    fn appended(&self, stream: &str, sequence: u64) {
        let mut entries = self.entries();
        if let Some(entry) = entries.get_mut(stream) {
            entry.last = None;
            entry.floor = entry.floor.max(sequence);
        }
    }
}

/// Failure to set the log up.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot reach NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("NATS at {url} does not offer JetStream (start nats-server with -js): {reason}")]
    NoJetStream { url: String, reason: String },
    #[error("the JetStream stream `{stream}` conflicts with this configuration: {reason}")]
    Conflict { stream: String, reason: String },
}

/// The event log on a JetStream stream.
#[derive(Debug)]
pub struct NatsEventLog {
    client: async_nats::Client,
    jetstream: Context,
    stream: Stream,
    options: NatsOptions,
    head: watch::Sender<Position>,
    context: ContextCache,
    /// Sends publishes in groups, unless `publish_linger` is zero.
    publisher: Option<Publisher>,
}

impl NatsEventLog {
    /// Connects and creates the stream, or checks that the existing one fits.
    pub async fn connect(url: &str, options: NatsOptions) -> Result<Self, NatsError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .retry_on_initial_connect()
            .connect(url);
        let client = tokio::time::timeout(Duration::from_secs(10), client)
            .await
            .map_err(|_| NatsError::Connect {
                url: url.into(),
                reason: "timed out".into(),
            })?
            .map_err(|e| NatsError::Connect {
                url: url.into(),
                reason: e.to_string(),
            })?;
        // Connecting succeeds lazily; a flush proves the server is there.
        match tokio::time::timeout(Duration::from_secs(5), client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(NatsError::Connect {
                    url: url.into(),
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                return Err(NatsError::Connect {
                    url: url.into(),
                    reason: "no answer within 5 s".into(),
                });
            }
        }
        let mut jetstream = jetstream::new(client.clone());
        // A command waits at most this long for JetStream to make it durable; then it is
        // answered 503 and the client retries, instead of hanging through an outage.
        jetstream.set_timeout(Duration::from_secs(2));
        let description = format!("Santa's Workshop events; partitions={}", options.partitions);
        let config = Config {
            name: options.stream.clone(),
            subjects: vec![format!("{}.>", options.prefix)],
            storage: StorageType::File,
            allow_direct: true,
            duplicate_window: Duration::from_secs(120),
            description: Some(description.clone()),
            ..Config::default()
        };
        let mut stream = jetstream.get_or_create_stream(config).await.map_err(|e| {
            let reason = e.to_string();
            if reason.contains("jetstream not enabled")
                || reason.contains("jetstream unavailable")
                || reason.contains("503")
                || reason.contains("no responders")
            {
                NatsError::NoJetStream {
                    url: url.into(),
                    reason,
                }
            } else {
                NatsError::Conflict {
                    stream: options.stream.clone(),
                    reason,
                }
            }
        })?;
        let info = stream.info().await.map_err(|e| NatsError::Conflict {
            stream: options.stream.clone(),
            reason: e.to_string(),
        })?;
        if info.config.description.as_deref() != Some(description.as_str()) {
            return Err(NatsError::Conflict {
                stream: options.stream.clone(),
                reason: format!(
                    "it was created as {:?}, this process expects {description:?}; partitions cannot change",
                    info.config.description
                ),
            });
        }
        if !info.config.allow_direct {
            return Err(NatsError::Conflict {
                stream: options.stream.clone(),
                reason: "direct get is disabled".into(),
            });
        }
        let head = watch::channel(Position::new(info.state.last_sequence)).0;
        let publisher = (!options.publish_linger.is_zero())
            .then(|| Publisher::start(jetstream.clone(), options.publish_linger));
        Ok(Self {
            client,
            jetstream,
            stream,
            options,
            head,
            context: ContextCache::default(),
            publisher,
        })
    }

    pub(crate) fn stream_name(&self) -> &str {
        &self.options.stream
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.options.prefix
    }

    pub(crate) fn jetstream(&self) -> &Context {
        &self.jetstream
    }

    /// Deletes the stream and its idempotency keys (test clean-up).
    pub async fn delete(self) -> Result<(), LogError> {
        // The keys' stream exists only if an idempotency store was opened.
        let _ = self
            .jetstream
            .delete_stream(format!("{}_IDEMPOTENCY", self.options.stream))
            .await;
        self.jetstream
            .delete_stream(&self.options.stream)
            .await
            .map(drop)
            .map_err(unavailable)
    }

    /// Fails at once, instead of after the request timeout, while the connection is down
    /// (the client reconnects by itself meanwhile).
    fn connected(&self) -> Result<(), LogError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(LogError::Unavailable(format!(
                "not connected to NATS ({state:?})"
            ))),
        }
    }

    fn partition_of(&self, stream: &str) -> u32 {
        let hash = stream.bytes().fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        hash % self.options.partitions
    }

    fn subject(&self, stream: &str) -> String {
        // `.` separates subject tokens; stream names never contain `~`.
        format!(
            "{}.{}.{}",
            self.options.prefix,
            self.partition_of(stream),
            stream.replace('.', "~")
        )
    }

    /// The last message of a subject: its sequence, version and message id.
    async fn last_of(&self, subject: &str) -> Result<Option<(u64, u64, Option<String>)>, LogError> {
        match self.stream.direct_get_last_for_subject(subject).await {
            Ok(message) => {
                let version = header(&message.headers, VERSION)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let id = header(&message.headers, "Nats-Msg-Id").map(str::to_owned);
                Ok(Some((message.sequence, version, id)))
            }
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// One attempt at an append, expecting the stream's last message as it is now.
    async fn append_once(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Position, LogError> {
        let subject = self.subject(stream);
        // A stream expected not to exist needs no look-up: the publish itself expects
        // subject sequence 0, and a repeated event id is answered by de-duplication.
        let (mut last_sequence, actual, last_id) = match expected {
            ExpectedVersion::Exactly(0) => (0, 0, None),
            _ => self.last_of(&subject).await?.unwrap_or((0, 0, None)),
        };
        if let ExpectedVersion::Exactly(expected) = expected
            && expected != actual
        {
            // A repeat of the stream's newest event is answered, not refused.
            if last_id.is_some() && events.last().map(|e| &e.event_id) == last_id.as_ref() {
                return Ok(Position::new(last_sequence));
            }
            return Err(LogError::Conflict {
                stream: stream.to_owned(),
                expected,
                actual,
            });
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        // JetStream has no multi-message transaction: events of one append are published in
        // order, each expecting the previous one, so a concurrent writer cannot interleave.
        for (i, event) in events.iter().enumerate() {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", event.event_id.as_str());
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence",
                last_sequence.to_string().as_str(),
            );
            headers.insert(STREAM, stream);
            headers.insert(VERSION, (actual + 1 + i as u64).to_string().as_str());
            headers.insert(EVENT_TYPE, event.event_type.as_str());
            headers.insert(SCHEMA, event.schema_version.to_string().as_str());
            headers.insert(RECORDED_AT, now.to_string().as_str());
            let ack = match &self.publisher {
                Some(publisher) => {
                    publisher
                        .publish(subject.clone(), headers, event.data.clone())
                        .await?
                }
                None => {
                    self.jetstream
                        .publish_with_headers(subject.clone(), headers, event.data.clone().into())
                        .await
                        .map_err(unavailable)?
                        .await
                }
            };
            match ack {
                Ok(ack) => last_sequence = ack.sequence,
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    let actual = self
                        .last_of(&subject)
                        .await?
                        .map_or(0, |(_, version, _)| version);
                    let expected = match expected {
                        ExpectedVersion::Exactly(v) => v,
                        ExpectedVersion::Any => actual.saturating_sub(1),
                    };
                    return Err(LogError::Conflict {
                        stream: stream.to_owned(),
                        expected,
                        actual,
                    });
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        self.note_head(last_sequence);
        self.context.appended(stream, last_sequence);
        Ok(Position::new(last_sequence))
    }

    fn note_head(&self, position: u64) {
        self.head.send_if_modified(|head| {
            let newer = position > head.get();
            if newer {
                *head = Position::new(position);
            }
            newer
        });
    }

    /// An ordered consumer over `filter` starting after `after`.
    async fn reader(&self, filter: String, after: Position) -> Result<Ordered, LogError> {
        let config = OrderedConfig {
            filter_subject: filter,
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: after.get() + 1,
            },
            ..OrderedConfig::default()
        };
        let consumer = self
            .stream
            .create_consumer(config)
            .await
            .map_err(unavailable)?;
        consumer.messages().await.map_err(unavailable)
    }
}

#[async_trait]
impl EventLog for NatsEventLog {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Position, LogError> {
        self.connected()?;
        // Versions are numbered from the last message seen, so even an unchecked append is
        // published expecting it, and tried again when another writer got there first.
        const ATTEMPTS: usize = 20;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.append_once(stream, expected, &events).await {
                Err(LogError::Conflict { .. })
                    if expected == ExpectedVersion::Any && attempt < ATTEMPTS =>
                {
                    continue;
                }
                outcome => return outcome,
            }
        }
    }

    async fn read_stream(&self, stream: &str) -> Result<Vec<RecordedEvent>, LogError> {
        self.connected()?;
        let subject = self.subject(stream);
        let mut events = Vec::new();
        let mut next = 1;
        loop {
            match self
                .stream
                .direct_get_next_for_subject(subject.as_str(), Some(next))
                .await
            {
                Ok(message) => {
                    next = message.sequence + 1;
                    events.push(recorded(
                        message.sequence,
                        Some(&message.headers),
                        &message.payload,
                    )?);
                }
                Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => return Ok(events),
                Err(e) => return Err(unavailable(e)),
            }
        }
    }

    async fn read_lasts(&self, streams: &[String]) -> Result<Vec<Option<RecordedEvent>>, LogError> {
        self.connected()?;
        let max_age = self.options.context_max_age;
        let lasts = streams.iter().map(|stream| async move {
            let cached = !max_age.is_zero();
            if cached {
                if let Some(event) = self.context.fresh(stream, max_age) {
                    return Ok(Some(event));
                }
                self.context.reading(stream, max_age);
            }
            let last = match self
                .stream
                .direct_get_last_for_subject(self.subject(stream))
                .await
            {
                Ok(m) => recorded(m.sequence, Some(&m.headers), &m.payload)?,
                // A stream not there yet is asked for again: it may be made any moment.
                Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => return Ok(None),
                Err(e) => return Err(unavailable(e)),
            };
            if cached {
                self.context.keep(stream, &last);
            }
            Ok(Some(last))
        });
        futures_util::future::try_join_all(lasts).await
    }

    async fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        let head = self.head().await?;
        if head <= after || limit == 0 {
            return Ok(Vec::new());
        }
        let mut reader = self
            .reader(format!("{}.>", self.options.prefix), after)
            .await?;
        let wanted = usize::try_from(head.get() - after.get())
            .unwrap_or(usize::MAX)
            .min(limit);
        let mut events = Vec::with_capacity(wanted);
        while events.len() < wanted {
            match tokio::time::timeout(Duration::from_secs(5), reader.next()).await {
                Ok(Some(Ok(message))) => events.push(from_message(&message)?),
                Ok(Some(Err(e))) => return Err(unavailable(e)),
                Ok(None) | Err(_) => break,
            }
        }
        Ok(events)
    }

    async fn head(&self) -> Result<Position, LogError> {
        self.connected()?;
        let info = self.stream.get_info().await.map_err(unavailable)?;
        self.note_head(info.state.last_sequence);
        Ok(Position::new(info.state.last_sequence))
    }

    fn watch_head(&self) -> watch::Receiver<Position> {
        self.head.subscribe()
    }

    fn partitions(&self) -> u32 {
        self.options.partitions
    }

    async fn partition_heads(&self) -> Result<Vec<Position>, LogError> {
        let heads = (0..self.options.partitions).map(|p| {
            let filter = format!("{}.{p}.>", self.options.prefix);
            async move {
                self.last_of(&filter)
                    .await
                    .map(|last| Position::new(last.map_or(0, |(seq, _, _)| seq)))
            }
        });
        futures_util::future::try_join_all(heads).await
    }

    async fn partition_head(&self, partition: u32) -> Result<Position, LogError> {
        let filter = format!("{}.{partition}.>", self.options.prefix);
        Ok(Position::new(
            self.last_of(&filter).await?.map_or(0, |(seq, _, _)| seq),
        ))
    }

    async fn partition_at(&self, position: Position) -> Result<u32, LogError> {
        let message = self
            .stream
            .direct_get(position.get())
            .await
            .map_err(unavailable)?;
        let token = message
            .subject
            .as_str()
            .strip_prefix(&format!("{}.", self.options.prefix))
            .and_then(|rest| rest.split('.').next());
        token.and_then(|t| t.parse().ok()).ok_or_else(|| {
            LogError::Corrupt(format!("message {position} is on an unexpected subject"))
        })
    }

    async fn subscribe(
        &self,
        reader: &str,
        partition: u32,
        after: Position,
    ) -> Result<Option<Box<dyn EventSource>>, LogError> {
        // One durable consumer per (reader, partition), made anew from the reader's own
        // checkpoint each time it starts following: its progress lives in the read store,
        // and the broker's ack floor mirrors it for operators.
        let name = format!("{reader}-{partition}");
        match self.stream.delete_consumer(&name).await {
            Ok(_) => {}
            Err(e) if e.to_string().contains("not found") => {}
            Err(e) => return Err(unavailable(e)),
        }
        let config = pull::Config {
            durable_name: Some(name),
            description: Some(format!(
                "Santa's Workshop: {reader} projection, partition {partition}"
            )),
            filter_subject: format!("{}.{partition}.>", self.options.prefix),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: after.get() + 1,
            },
            ack_policy: AckPolicy::All,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 20_000,
            // A reader that stopped for good (a finished rebuild, a removed projection)
            // does not leave its consumer behind.
            inactive_threshold: Duration::from_secs(3600),
            ..pull::Config::default()
        };
        let consumer = self
            .stream
            .create_consumer(config)
            .await
            .map_err(unavailable)?;
        let messages = consumer.messages().await.map_err(unavailable)?;
        Ok(Some(Box::new(PartitionReader {
            messages,
            last: after.get(),
            unacked: VecDeque::new(),
        })))
    }
}
