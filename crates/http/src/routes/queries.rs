//! Query endpoints: read the read stores (never the log, except a letter's history).

use axum::Json;
use axum::extract::State;
use santa_domain::{Event, LetterId, ToyId};
use santa_workshop::{analytics, letters};
use serde_json::json;

use super::limit;
use crate::AppState;
use crate::extract::{Params, PathId};
use crate::problem::{ApiError, Problem};
use crate::wire::{
    ConsistencyParams, CountryReport, CountryRow, DayReport, DayRow, HistoryEvent, HistoryResponse,
    LetterPage, LetterResponse, PageParams, ReportParams, ToyDemandReport, ToyDemandRow,
    ToyLettersResponse, ToyPage, ToyResponse, rfc3339,
};

type Answer<T> = Result<Json<T>, ApiError>;

/// The catalogue, with demand per toy.
#[utoipa::path(get, path = "/toys", tag = "queries", params(PageParams),
    responses((status = 200, body = ToyPage), (status = "4XX", body = Problem, content_type = "application/problem+json"), (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["read"])))]
pub(crate) async fn list_toys(
    State(state): State<AppState>,
    Params(p): Params<PageParams>,
) -> Answer<ToyPage> {
    state.consistent(letters::NAME, p.after.as_deref()).await?;
    let page = state
        .letters
        .toys(p.cursor.as_deref(), limit(p.limit)?)
        .await?;
    Ok(Json(ToyPage {
        toys: page.items.into_iter().map(Into::into).collect(),
        next: page.next,
    }))
}

/// One toy and the demand for it.
#[utoipa::path(get, path = "/toys/{id}", tag = "queries",
    params(("id" = String, Path, description = "Toy slug", max_length = 64, pattern = "^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$"), ConsistencyParams),
    responses((status = 200, body = ToyResponse), (status = 404, body = Problem, content_type = "application/problem+json"), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["read"])))]
pub(crate) async fn get_toy(
    State(state): State<AppState>,
    PathId(id): PathId,
    Params(p): Params<ConsistencyParams>,
) -> Answer<ToyResponse> {
    let id = ToyId::parse(id)?;
    state.consistent(letters::NAME, p.after.as_deref()).await?;
    let toy = state
        .letters
        .toy(id.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("toy `{id}` does not exist")))?;
    Ok(Json(toy.into()))
}

/// The letters asking for a toy, with quantities and the total over all of them.
#[utoipa::path(get, path = "/toys/{id}/letters", tag = "queries",
    params(("id" = String, Path, description = "Toy slug", max_length = 64, pattern = "^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$"), PageParams),
    responses((status = 200, body = ToyLettersResponse), (status = 404, body = Problem, content_type = "application/problem+json"), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["read"])))]
pub(crate) async fn toy_letters(
    State(state): State<AppState>,
    PathId(id): PathId,
    Params(p): Params<PageParams>,
) -> Answer<ToyLettersResponse> {
    let id = ToyId::parse(id)?;
    state.consistent(letters::NAME, p.after.as_deref()).await?;
    let (toy, page) = state
        .letters
        .toy_letters(id.as_str(), p.cursor.as_deref(), limit(p.limit)?)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("toy `{id}` does not exist")))?;
    Ok(Json(ToyLettersResponse {
        toy_id: toy.id,
        total_quantity: toy.requested_quantity,
        letter_count: toy.letter_count,
        letters: page.items.into_iter().map(Into::into).collect(),
        next: page.next,
    }))
}

/// Letters, a page at a time, in id order.
#[utoipa::path(get, path = "/letters", tag = "queries", params(PageParams),
    responses((status = 200, body = LetterPage), (status = "4XX", body = Problem, content_type = "application/problem+json"), (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["read"])))]
pub(crate) async fn list_letters(
    State(state): State<AppState>,
    Params(p): Params<PageParams>,
) -> Answer<LetterPage> {
    state.consistent(letters::NAME, p.after.as_deref()).await?;
    let page = state
        .letters
        .letters(p.cursor.as_deref(), limit(p.limit)?)
        .await?;
    Ok(Json(LetterPage {
        letters: page.items.into_iter().map(Into::into).collect(),
        next: page.next,
    }))
}

/// One letter: lines, unit prices, total and status.
#[utoipa::path(get, path = "/letters/{id}", tag = "queries",
    params(("id" = String, Path, description = "Letter id", max_length = 64, pattern = "^[A-Za-z0-9._-]{1,64}$"), ConsistencyParams),
    responses((status = 200, body = LetterResponse), (status = 404, body = Problem, content_type = "application/problem+json"), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["read"])))]
pub(crate) async fn get_letter(
    State(state): State<AppState>,
    PathId(id): PathId,
    Params(p): Params<ConsistencyParams>,
) -> Answer<LetterResponse> {
    let id = LetterId::parse(id)?;
    state.consistent(letters::NAME, p.after.as_deref()).await?;
    let letter = state
        .letters
        .letter(id.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("letter `{id}` does not exist")))?;
    Ok(Json(letter.into()))
}

/// The letter's events in order, read from the log.
#[utoipa::path(get, path = "/letters/{id}/history", tag = "queries",
    params(("id" = String, Path, description = "Letter id", max_length = 64, pattern = "^[A-Za-z0-9._-]{1,64}$"), ConsistencyParams),
    responses((status = 200, body = HistoryResponse), (status = 404, body = Problem, content_type = "application/problem+json"), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["read"])))]
pub(crate) async fn letter_history(
    State(state): State<AppState>,
    PathId(id): PathId,
    Params(p): Params<ConsistencyParams>,
) -> Answer<HistoryResponse> {
    let id = LetterId::parse(id)?;
    if let Some(raw) = p.after.as_deref() {
        // The log is always at least as new as any position it issued; only the format matters.
        raw.parse::<santa_cqrs::Position>().map_err(|e| {
            ApiError::bad_request("invalid-position", e.to_string()).with_field("after")
        })?;
    }
    let history = state.commands.history(&format!("letter-{id}")).await?;
    if history.is_empty() {
        return Err(ApiError::not_found(format!("letter `{id}` does not exist")));
    }
    let events = history
        .into_iter()
        .map(|e| HistoryEvent {
            position: e.position.get(),
            version: e.version,
            kind: e.event.event_type(),
            recorded_at: rfc3339(e.recorded_at_ms),
            data: event_data(&e.event),
        })
        .collect();
    Ok(Json(HistoryResponse {
        letter_id: id.to_string(),
        events,
    }))
}

/// The wire form of an event in a history.
fn event_data(event: &Event) -> serde_json::Value {
    match event {
        Event::LetterSubmitted(e) => json!({
            "child": e.child.as_str(),
            "address": e.address.as_str(),
            "country": e.country.as_ref().map(|c| c.as_str()),
            "lines": e.lines.iter().map(|l| json!({
                "toy_id": l.toy_id.as_str(),
                "quantity": l.quantity.get(),
                "unit_price_cents": l.unit_price_cents.get(),
            })).collect::<Vec<_>>(),
            "total_cents": e.total_cents.get(),
        }),
        Event::LetterCancelled(_) => json!({}),
        Event::ToyUpserted(e) => json!({
            "toy_id": e.toy_id.as_str(),
            "name": e.name.as_str(),
            "price_cents": e.price_cents.get(),
        }),
    }
}

/// Toys by quantity requested, most wanted first (SQL analytics store).
#[utoipa::path(get, path = "/analytics/toys", tag = "analytics", params(ReportParams),
    responses((status = 200, body = ToyDemandReport), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["read"])))]
pub(crate) async fn toy_demand(
    State(state): State<AppState>,
    Params(p): Params<ReportParams>,
) -> Answer<ToyDemandReport> {
    state
        .consistent(analytics::NAME, p.after.as_deref())
        .await?;
    let rows = state.analytics.toy_demand(limit(p.limit)?).await?;
    Ok(Json(ToyDemandReport {
        toys: rows
            .into_iter()
            .map(|r| ToyDemandRow {
                toy_id: r.toy_id,
                name: r.name,
                total_quantity: r.quantity,
                letter_count: r.letters,
                value_cents: r.value_cents,
            })
            .collect(),
    }))
}

/// Letters, quantities and value by country (SQL analytics store).
#[utoipa::path(get, path = "/analytics/countries", tag = "analytics", params(ConsistencyParams),
    responses((status = 200, body = CountryReport), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["read"])))]
pub(crate) async fn totals_by_country(
    State(state): State<AppState>,
    Params(p): Params<ConsistencyParams>,
) -> Answer<CountryReport> {
    state
        .consistent(analytics::NAME, p.after.as_deref())
        .await?;
    let rows = state.analytics.totals_by_country().await?;
    Ok(Json(CountryReport {
        countries: rows
            .into_iter()
            .map(|r| CountryRow {
                country: r.key,
                letter_count: r.letters,
                total_quantity: r.quantity,
                total_cents: r.total_cents,
            })
            .collect(),
    }))
}

/// Letters, quantities and value by UTC day of submission (SQL analytics store).
#[utoipa::path(get, path = "/analytics/days", tag = "analytics", params(ConsistencyParams),
    responses((status = 200, body = DayReport), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["read"])))]
pub(crate) async fn totals_by_day(
    State(state): State<AppState>,
    Params(p): Params<ConsistencyParams>,
) -> Answer<DayReport> {
    state
        .consistent(analytics::NAME, p.after.as_deref())
        .await?;
    let rows = state.analytics.totals_by_day().await?;
    Ok(Json(DayReport {
        days: rows
            .into_iter()
            .map(|r| DayRow {
                day: r.key,
                letter_count: r.letters,
                total_quantity: r.quantity,
                total_cents: r.total_cents,
            })
            .collect(),
    }))
}
