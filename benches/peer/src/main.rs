//! The benchmark's peer: the workshop's letter command written with the `cqrs-es`
//! framework and its `postgres-es` event store, as a user would otherwise build it. Views
//! are updated inside the command (`cqrs-es` runs its queries before `execute` returns):
//! a letter view per letter (`GenericQuery` over `PostgresViewRepository`) and the demand
//! per toy. It serves the part of the HTTP contract `santa bench` uses: `PUT /toys/{id}`,
//! `POST /letters`, `GET /readyz`.
//!
//! Usage: `santa-peer <address> <postgres URL>`; the tables are made if missing.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::GenericQuery;
use cqrs_es::{Aggregate, AggregateError, DomainEvent, EventEnvelope, Query, View};
use postgres_es::{PostgresCqrs, PostgresViewRepository, postgres_cqrs};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{Pool, Postgres};

/// Toy prices, as the catalogue commands set them.
#[derive(Debug, Default, Clone)]
struct Catalogue(Arc<RwLock<HashMap<String, i64>>>);

impl Catalogue {
    fn price(&self, toy: &str) -> Option<i64> {
        self.0.read().ok()?.get(toy).copied()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Line {
    toy_id: String,
    quantity: u32,
    unit_price_cents: i64,
}

#[derive(Debug)]
enum LetterCommand {
    Submit {
        child: String,
        address: String,
        country: Option<String>,
        toys: Vec<(String, u32)>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
enum LetterEvent {
    LetterSubmitted {
        child: String,
        address: String,
        country: Option<String>,
        lines: Vec<Line>,
        total_cents: i64,
    },
}

impl DomainEvent for LetterEvent {
    fn event_type(&self) -> String {
        "LetterSubmitted".into()
    }

    fn event_version(&self) -> String {
        "1".into()
    }
}

#[derive(Debug)]
enum LetterError {
    AlreadySubmitted,
    UnknownToy(String),
    Invalid(&'static str),
}

impl fmt::Display for LetterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadySubmitted => write!(f, "the letter was submitted already"),
            Self::UnknownToy(toy) => write!(f, "toy `{toy}` is not in the catalogue"),
            Self::Invalid(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for LetterError {}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Letter {
    submitted: bool,
}

impl Aggregate for Letter {
    const TYPE: &'static str = "letter";
    type Command = LetterCommand;
    type Event = LetterEvent;
    type Error = LetterError;
    type Services = Catalogue;

    async fn handle(
        &mut self,
        command: Self::Command,
        catalogue: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let LetterCommand::Submit {
            child,
            address,
            country,
            toys,
        } = command;
        if self.submitted {
            return Err(LetterError::AlreadySubmitted);
        }
        if child.trim().is_empty() || address.trim().is_empty() {
            return Err(LetterError::Invalid("child and address are required"));
        }
        if toys.is_empty() || toys.iter().any(|(_, q)| !(1..=1000).contains(q)) {
            return Err(LetterError::Invalid("one to many toys, 1 to 1000 each"));
        }
        let lines = toys
            .into_iter()
            .map(|(toy_id, quantity)| match catalogue.price(&toy_id) {
                Some(unit_price_cents) => Ok(Line {
                    toy_id,
                    quantity,
                    unit_price_cents,
                }),
                None => Err(LetterError::UnknownToy(toy_id)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let total_cents = lines
            .iter()
            .map(|l| l.unit_price_cents * i64::from(l.quantity))
            .sum();
        let event = LetterEvent::LetterSubmitted {
            child,
            address,
            country,
            lines,
            total_cents,
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            LetterEvent::LetterSubmitted { .. } => self.submitted = true,
        }
    }
}

/// The letter as Santa reads it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct LetterView {
    id: String,
    child: String,
    country: Option<String>,
    lines: Vec<Line>,
    total_cents: i64,
}

impl View<Letter> for LetterView {
    fn update(&mut self, event: &EventEnvelope<Letter>) {
        let LetterEvent::LetterSubmitted {
            child,
            country,
            lines,
            total_cents,
            ..
        } = &event.payload;
        self.id.clone_from(&event.aggregate_id);
        self.child.clone_from(child);
        self.country.clone_from(country);
        self.lines.clone_from(lines);
        self.total_cents = *total_cents;
    }
}

/// The demand per toy, kept inside the command like the letter view.
struct ToyDemand(Pool<Postgres>);

#[async_trait]
impl Query<Letter> for ToyDemand {
    async fn dispatch(&self, _letter: &str, events: &[EventEnvelope<Letter>]) {
        for event in events {
            let LetterEvent::LetterSubmitted { lines, .. } = &event.payload;
            for line in lines {
                let _ = sqlx::query(
                    "INSERT INTO peer_toy_demand (toy_id, quantity, letters) VALUES ($1, $2, 1)
                     ON CONFLICT (toy_id) DO UPDATE SET quantity = peer_toy_demand.quantity + $2,
                     letters = peer_toy_demand.letters + 1",
                )
                .bind(&line.toy_id)
                .bind(i64::from(line.quantity))
                .execute(&self.0)
                .await;
            }
        }
    }
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS events (
        aggregate_type text NOT NULL, aggregate_id text NOT NULL,
        sequence bigint CHECK (sequence >= 0) NOT NULL, event_type text NOT NULL,
        event_version text NOT NULL, payload json NOT NULL, metadata json NOT NULL,
        PRIMARY KEY (aggregate_type, aggregate_id, sequence))",
    "CREATE TABLE IF NOT EXISTS peer_letter_view (
        view_id text NOT NULL, version bigint CHECK (version >= 0) NOT NULL,
        payload json NOT NULL, PRIMARY KEY (view_id))",
    "CREATE TABLE IF NOT EXISTS peer_toy_demand (
        toy_id text PRIMARY KEY, quantity bigint NOT NULL, letters bigint NOT NULL)",
];

#[derive(Clone)]
struct AppState {
    cqrs: Arc<PostgresCqrs<Letter>>,
    catalogue: Catalogue,
}

#[derive(Deserialize)]
struct ToyRequest {
    price_cents: i64,
}

#[derive(Deserialize)]
struct LetterRequest {
    id: Option<String>,
    child: String,
    address: String,
    country: Option<String>,
    toys: Vec<ToyLine>,
}

#[derive(Deserialize)]
struct ToyLine {
    toy_id: String,
    quantity: u32,
}

async fn upsert_toy(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(toy): Json<ToyRequest>,
) -> (StatusCode, Json<Value>) {
    if let Ok(mut prices) = state.catalogue.0.write() {
        prices.insert(id.clone(), toy.price_cents);
    }
    (StatusCode::ACCEPTED, Json(json!({"id": id, "position": 0})))
}

async fn submit_letter(
    State(state): State<AppState>,
    Json(letter): Json<LetterRequest>,
) -> (StatusCode, Json<Value>) {
    let Some(id) = letter.id else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"detail": "the peer needs letter ids"})),
        );
    };
    let command = LetterCommand::Submit {
        child: letter.child,
        address: letter.address,
        country: letter.country,
        toys: letter
            .toys
            .into_iter()
            .map(|t| (t.toy_id, t.quantity))
            .collect(),
    };
    match state.cqrs.execute(&id, command).await {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({"id": id, "position": 0}))),
        Err(AggregateError::UserError(error)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"detail": error.to_string()})),
        ),
        Err(AggregateError::AggregateConflict) => (
            StatusCode::CONFLICT,
            Json(json!({"detail": "concurrent update"})),
        ),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"detail": error.to_string()})),
        ),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(url)) = (args.next(), args.next()) else {
        return Err("usage: santa-peer <address> <postgres URL>".into());
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect(&url)
        .await?;
    for statement in SCHEMA {
        sqlx::query(statement).execute(&pool).await?;
    }
    let letters = Arc::new(PostgresViewRepository::<LetterView, Letter>::new(
        "peer_letter_view",
        pool.clone(),
    ));
    let queries: Vec<Box<dyn Query<Letter>>> = vec![
        Box::new(GenericQuery::new(letters)),
        Box::new(ToyDemand(pool.clone())),
    ];
    let catalogue = Catalogue::default();
    let state = AppState {
        cqrs: Arc::new(postgres_cqrs(pool, queries, catalogue.clone())),
        catalogue,
    };
    let app = Router::new()
        .route("/readyz", get(|| async { "ready" }))
        .route("/toys/{id}", put(upsert_toy))
        .route("/letters", post(submit_letter))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
