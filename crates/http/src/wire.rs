//! The JSON wire types of the HTTP contract (DESIGN.md §5). Only this crate knows them;
//! they are mapped from and to the domain and the query models, never shared with them.

use std::time::{Duration, UNIX_EPOCH};

use santa_domain::{
    Address, Cents, ChildName, Country, Description, InvalidValue, LetterId, Quantity,
    SubmitLetter, ToyId, ToyName, UpsertToy,
};
use santa_workshop::letters::{LetterStatus, LetterView, ToyLetter, ToyView};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `PUT /toys/{id}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsertToyRequest {
    #[schema(example = "Rubik's Cube", min_length = 1, max_length = 100)]
    pub name: String,
    #[serde(default)]
    #[schema(example = "The classic 3×3 puzzle.", max_length = 2000)]
    pub description: String,
    /// Unit price in cents (integer money).
    #[schema(example = 1299, minimum = 0, maximum = 100_000_000)]
    pub price_cents: i64,
}

impl UpsertToyRequest {
    pub fn into_command(self, id: String) -> Result<UpsertToy, InvalidValue> {
        Ok(UpsertToy {
            id: ToyId::parse(id)?,
            name: ToyName::parse(self.name)?,
            description: Description::parse(self.description)?,
            price: Cents::price(self.price_cents)?,
        })
    }
}

/// `POST /letters`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitLetterRequest {
    /// Client-chosen id; generated when absent.
    #[schema(
        example = "letter-0001",
        max_length = 64,
        pattern = "^[A-Za-z0-9._-]{1,64}$"
    )]
    pub id: Option<String>,
    #[schema(example = "Ada", min_length = 1, max_length = 100)]
    pub child: String,
    #[schema(
        example = "12 Analytical Way, London",
        min_length = 1,
        max_length = 500
    )]
    pub address: String,
    /// ISO 3166-1 alpha-2.
    #[schema(example = "GB", pattern = "^[A-Za-z]{2}$")]
    pub country: Option<String>,
    #[schema(min_items = 1, max_items = 100)]
    pub toys: Vec<ToyLineRequest>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToyLineRequest {
    /// A toy of the catalogue (an unknown one is refused with 422).
    #[schema(
        example = "rubiks-cube",
        max_length = 64,
        pattern = "^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$"
    )]
    pub toy_id: String,
    #[schema(example = 1, minimum = 1, maximum = 1000)]
    pub quantity: i64,
}

impl SubmitLetterRequest {
    /// Builds the command; `id` is the id to use when the body has none.
    pub fn into_command(self, id: String) -> Result<SubmitLetter, InvalidValue> {
        let toys = self
            .toys
            .into_iter()
            .map(|line| Ok((ToyId::parse(line.toy_id)?, Quantity::parse(line.quantity)?)))
            .collect::<Result<Vec<_>, InvalidValue>>()?;
        SubmitLetter::new(
            LetterId::parse(self.id.unwrap_or(id))?,
            ChildName::parse(self.child)?,
            Address::parse(self.address)?,
            self.country.map(Country::parse).transpose()?,
            toys,
        )
    }
}

/// The answer to every command: `202 Accepted`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AcceptedResponse {
    pub id: String,
    /// Pass back verbatim as `?after=` to read your own write.
    pub position: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LetterResponse {
    pub id: String,
    pub child: String,
    pub address: String,
    pub country: Option<String>,
    #[schema(example = "submitted")]
    pub status: &'static str,
    pub lines: Vec<LetterLineResponse>,
    pub total_cents: i64,
    /// RFC 3339, UTC.
    pub submitted_at: String,
    pub cancelled_at: Option<String>,
    pub position: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LetterLineResponse {
    pub toy_id: String,
    pub quantity: u32,
    pub unit_price_cents: i64,
    pub line_total_cents: i64,
}

impl From<LetterView> for LetterResponse {
    fn from(l: LetterView) -> Self {
        Self {
            status: match l.status {
                LetterStatus::Submitted => "submitted",
                LetterStatus::Cancelled => "cancelled",
            },
            lines: l
                .lines
                .into_iter()
                .map(|line| LetterLineResponse {
                    line_total_cents: line.unit_price_cents * i64::from(line.quantity),
                    toy_id: line.toy_id,
                    quantity: line.quantity,
                    unit_price_cents: line.unit_price_cents,
                })
                .collect(),
            submitted_at: rfc3339(l.submitted_at_ms),
            cancelled_at: l.cancelled_at_ms.map(rfc3339),
            id: l.id,
            child: l.child,
            address: l.address,
            country: l.country,
            total_cents: l.total_cents,
            position: l.position,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LetterPage {
    pub letters: Vec<LetterResponse>,
    /// Pass as `?cursor=` for the next page; absent on the last page.
    pub next: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ToyResponse {
    pub id: String,
    pub name: String,
    pub description: String,
    pub price_cents: i64,
    pub demand: DemandResponse,
}

/// Demand from letters that are not cancelled.
#[derive(Debug, Serialize, ToSchema)]
pub struct DemandResponse {
    pub total_quantity: u64,
    pub letter_count: u64,
}

impl From<ToyView> for ToyResponse {
    fn from(t: ToyView) -> Self {
        Self {
            id: t.id,
            name: t.name,
            description: t.description,
            price_cents: t.price_cents,
            demand: DemandResponse {
                total_quantity: t.requested_quantity,
                letter_count: t.letter_count,
            },
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ToyPage {
    pub toys: Vec<ToyResponse>,
    pub next: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ToyLettersResponse {
    pub toy_id: String,
    /// Over all letters asking for the toy, not only this page.
    pub total_quantity: u64,
    pub letter_count: u64,
    pub letters: Vec<ToyLetterResponse>,
    pub next: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ToyLetterResponse {
    pub letter_id: String,
    pub child: String,
    pub quantity: u32,
}

impl From<ToyLetter> for ToyLetterResponse {
    fn from(l: ToyLetter) -> Self {
        Self {
            letter_id: l.letter_id,
            child: l.child,
            quantity: l.quantity,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryResponse {
    pub letter_id: String,
    pub events: Vec<HistoryEvent>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryEvent {
    pub position: u64,
    pub version: u64,
    #[serde(rename = "type")]
    #[schema(example = "LetterSubmitted")]
    pub kind: &'static str,
    pub recorded_at: String,
    /// The event's content as recorded.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ToyDemandReport {
    pub toys: Vec<ToyDemandRow>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ToyDemandRow {
    pub toy_id: String,
    pub name: String,
    pub total_quantity: i64,
    pub letter_count: i64,
    pub value_cents: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CountryReport {
    pub countries: Vec<CountryRow>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CountryRow {
    /// ISO code, or `unknown` for letters without one.
    pub country: String,
    pub letter_count: i64,
    pub total_quantity: i64,
    pub total_cents: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DayReport {
    pub days: Vec<DayRow>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DayRow {
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    pub letter_count: i64,
    pub total_quantity: i64,
    pub total_cents: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectionsResponse {
    /// The newest position in the event log.
    pub head: u64,
    pub projections: Vec<ProjectionStatusResponse>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectionStatusResponse {
    pub name: &'static str,
    /// The lowest checkpoint over the log's partitions.
    pub position: u64,
    /// The checkpoint of each log partition, as stored with the projection's data.
    pub partitions: Vec<u64>,
    pub lag_events: u64,
    /// Age of the newest applied event when the projection is behind; 0 when caught up.
    pub lag_seconds: f64,
    /// `starting`, `running`, `retrying`, `stalled` (behind the log with nothing applied
    /// for 30 s), `rebuilding` (a rebuild started here is under way; the live tables
    /// still serve), `stopped`, or `elsewhere` when the projection runs in other processes.
    #[schema(example = "running")]
    pub state: &'static str,
    pub last_error: Option<String>,
    /// Events set aside as dead letters.
    pub parked: usize,
    /// The last rebuild started through this process, if any.
    pub rebuild: Option<RebuildResponse>,
}

/// A projection rebuild: the whole log replayed into fresh tables while the live ones
/// serve, then switched to atomically.
#[derive(Debug, Serialize, ToSchema)]
pub struct RebuildResponse {
    pub projection: &'static str,
    /// `replaying`, `switching` (caught up, levelling with the live tables and switching),
    /// `done` (queries read the rebuilt tables) or `failed` (the live tables are untouched).
    #[schema(example = "replaying")]
    pub state: &'static str,
    /// Events applied to the fresh tables so far.
    pub replayed: u64,
    /// The log's head when the rebuild began: what it replays before switching.
    pub target: u64,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Events replayed per second, so far or in all.
    pub events_per_second: f64,
    /// Why it failed, or the error it is retrying.
    pub error: Option<String>,
}

impl RebuildResponse {
    pub fn new(projection: &'static str, s: &santa_cqrs::RebuildStatus, now_ms: i64) -> Self {
        Self {
            projection,
            state: s.state.as_str(),
            replayed: s.replayed,
            target: s.target.get(),
            started_at: rfc3339(s.started_at_ms),
            finished_at: s.finished_at_ms.map(rfc3339),
            events_per_second: (s.rate(now_ms) * 10.0).round() / 10.0,
            error: s.error.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLettersResponse {
    pub dead_letters: Vec<DeadLetterResponse>,
}

/// An event a projection set aside.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterResponse {
    pub projection: String,
    pub partition: u32,
    pub position: u64,
    pub stream: String,
    pub event_type: String,
    /// Why it was set aside.
    pub error: String,
    pub attempts: u32,
    pub parked_at: String,
    /// Set when the event waits behind this earlier parked event of its letter.
    pub waiting_behind: Option<u64>,
}

/// `?projection=` to list one projection's dead letters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeadLettersParams {
    /// `letters` or `analytics`; all when absent.
    pub projection: Option<String>,
}

/// `POST /admin/dead-letters/redrive`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    #[schema(example = "letters")]
    pub projection: String,
    /// Re-drive only the dead letter at this position (and those waiting behind it);
    /// all of the projection's when absent.
    pub position: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RedriveResponse {
    /// Events applied and released.
    pub applied: usize,
    /// Events still parked: their cause is not fixed, or they wait behind one that is not.
    pub still_parked: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SeedResponse {
    pub toys: Vec<AcceptedResponse>,
    pub letters: Vec<AcceptedResponse>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    pub status: &'static str,
}

/// `?after=` for read-your-writes.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyParams {
    /// A `position` returned by a command: wait (bounded) until the data includes it.
    pub after: Option<String>,
}

/// Pagination and `?after=`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    pub after: Option<String>,
    /// The `next` value of the previous page.
    pub cursor: Option<String>,
    /// Items per page, 1–500 (default 50).
    pub limit: Option<u32>,
}

/// `limit` for reports, with `?after=`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {
    pub after: Option<String>,
    /// Rows to return, 1–500 (default 50).
    pub limit: Option<u32>,
}

/// Formats milliseconds since the epoch as RFC 3339 UTC.
pub fn rfc3339(ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(time).to_string()
}
