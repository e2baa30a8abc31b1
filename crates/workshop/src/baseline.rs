//! The design CQRS replaces, kept only as the benchmark's baseline: a letter decided
//! against the read store's catalogue and written, inside the request, into every read
//! store, with no event log. `santa bench` compares the durable command path with it.

use std::sync::Arc;

use santa_cqrs::{Position, Progress, Projection, ProjectionError, RecordedEvent};
use santa_domain::{Cents, Decision, DomainError, LetterState, SubmitLetter};

use crate::codec;
use crate::letters::LettersQueries;

/// Why a synchronous write failed.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error(transparent)]
    Rejected(#[from] DomainError),
    #[error(transparent)]
    Store(#[from] ProjectionError),
}

/// Decides `cmd` against the toys in the read store and writes the letter into every
/// store of `projections` before returning. A letter id already present is a conflict.
pub async fn submit_letter_synchronously(
    letters: &LettersQueries,
    projections: &[Arc<dyn Projection>],
    cmd: SubmitLetter,
    now_ms: i64,
) -> Result<(), BaselineError> {
    let id = cmd.id().clone();
    if letters
        .letter(id.as_str())
        .await
        .map_err(ProjectionError::from)?
        .is_some()
    {
        return Err(DomainError::LetterConflict(id).into());
    }
    let mut prices = Vec::with_capacity(cmd.toys().len());
    for (toy, _) in cmd.toys() {
        let price = letters
            .toy(toy.as_str())
            .await
            .map_err(ProjectionError::from)?
            .and_then(|t| Cents::price(t.price_cents).ok());
        prices.push((toy.clone(), price));
    }
    let decision = LetterState::default().decide_submit(cmd, |toy| {
        prices.iter().find(|(t, _)| t == toy).and_then(|(_, p)| *p)
    })?;
    let Decision::Append(event) = decision else {
        return Ok(());
    };
    let new = codec::encode(&event);
    let recorded = [RecordedEvent {
        // Not in any log: a position past "nothing applied", so the stores apply it.
        position: Position::new(1),
        stream: event.stream(),
        version: 1,
        event_id: new.event_id,
        event_type: new.event_type,
        schema_version: new.schema_version,
        recorded_at_ms: now_ms,
        data: new.data,
    }];
    for projection in projections {
        projection.apply_batch(Progress::Redrive, &recorded).await?;
    }
    Ok(())
}
