//! Commands and the pure decisions they lead to: `(state, command) → event | error`.
//! Applying an event to state never fails.

use std::collections::HashSet;

use crate::events::{letter_stream, toy_stream};
use crate::{
    Address, Cents, ChildName, Country, Description, DomainError, Event, InvalidValue,
    LetterCancelled, LetterId, LetterLine, LetterSubmitted, MAX_LINES_PER_LETTER, Quantity, ToyId,
    ToyName, ToyUpserted,
};

/// What a command leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Record this event.
    Append(Event),
    /// The command repeats what is already recorded: acknowledge it again, record nothing.
    Unchanged,
}

/// Add a toy to the catalogue or change it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpsertToy {
    pub id: ToyId,
    pub name: ToyName,
    pub description: Description,
    pub price: Cents,
}

/// Submit a letter. Built only through [`SubmitLetter::new`], which enforces the shape
/// rules: at least one line, at most [`MAX_LINES_PER_LETTER`], each toy at most once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitLetter {
    id: LetterId,
    child: ChildName,
    address: Address,
    country: Option<Country>,
    toys: Vec<(ToyId, Quantity)>,
}

/// Withdraw a letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelLetter {
    pub id: LetterId,
}

impl SubmitLetter {
    pub fn new(
        id: LetterId,
        child: ChildName,
        address: Address,
        country: Option<Country>,
        toys: Vec<(ToyId, Quantity)>,
    ) -> Result<Self, InvalidValue> {
        if toys.is_empty() {
            return Err(InvalidValue::new("toys", "must list at least one toy"));
        }
        if toys.len() > MAX_LINES_PER_LETTER {
            return Err(InvalidValue::new(
                "toys",
                format!(
                    "must list at most {MAX_LINES_PER_LETTER} toys, got {}",
                    toys.len()
                ),
            ));
        }
        let mut seen = HashSet::new();
        if let Some((dup, _)) = toys.iter().find(|(toy, _)| !seen.insert(toy)) {
            return Err(InvalidValue::new(
                "toys",
                format!(
                    "toy `{dup}` is listed more than once; list each toy once with its quantity"
                ),
            ));
        }
        Ok(Self {
            id,
            child,
            address,
            country,
            toys,
        })
    }

    pub fn id(&self) -> &LetterId {
        &self.id
    }

    pub fn toys(&self) -> &[(ToyId, Quantity)] {
        &self.toys
    }

    pub fn stream(&self) -> String {
        letter_stream(&self.id)
    }

    /// Whether a recorded submission carries the same content as this command
    /// (lines compared regardless of order; prices are the catalogue's, not the client's).
    fn same_content_as(&self, recorded: &LetterSubmitted) -> bool {
        let mut mine: Vec<_> = self.toys.iter().map(|(t, q)| (t, *q)).collect();
        let mut theirs: Vec<_> = recorded
            .lines
            .iter()
            .map(|l| (&l.toy_id, l.quantity))
            .collect();
        mine.sort();
        theirs.sort();
        self.child == recorded.child
            && self.address == recorded.address
            && self.country == recorded.country
            && mine == theirs
    }
}

impl UpsertToy {
    pub fn stream(&self) -> String {
        toy_stream(&self.id)
    }
}

impl CancelLetter {
    pub fn stream(&self) -> String {
        letter_stream(&self.id)
    }
}

/// A toy as its stream of events leaves it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToyState {
    current: Option<ToyUpserted>,
}

impl ToyState {
    pub fn apply(&mut self, event: &Event) {
        if let Event::ToyUpserted(e) = event {
            self.current = Some(e.clone());
        }
    }

    /// The toy's price, if it is in the catalogue.
    pub fn price(&self) -> Option<Cents> {
        self.current.as_ref().map(|t| t.price_cents)
    }

    pub fn decide(&self, cmd: UpsertToy) -> Decision {
        let event = ToyUpserted {
            toy_id: cmd.id,
            name: cmd.name,
            description: cmd.description,
            price_cents: cmd.price,
        };
        if self.current.as_ref() == Some(&event) {
            Decision::Unchanged
        } else {
            Decision::Append(Event::ToyUpserted(event))
        }
    }
}

/// A letter as its stream of events leaves it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LetterState {
    submitted: Option<LetterSubmitted>,
    cancelled: bool,
}

impl LetterState {
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::LetterSubmitted(e) => self.submitted = Some(e.clone()),
            Event::LetterCancelled(_) => self.cancelled = true,
            Event::ToyUpserted(_) => {}
        }
    }

    pub fn exists(&self) -> bool {
        self.submitted.is_some()
    }

    /// Decides a submission. `price_of` answers each toy's current catalogue price, or
    /// `None` for a toy that is not in the catalogue.
    pub fn decide_submit(
        &self,
        cmd: SubmitLetter,
        price_of: impl Fn(&ToyId) -> Option<Cents>,
    ) -> Result<Decision, DomainError> {
        if let Some(recorded) = &self.submitted {
            return if cmd.same_content_as(recorded) {
                Ok(Decision::Unchanged)
            } else {
                Err(DomainError::LetterConflict(cmd.id))
            };
        }
        let lines = cmd
            .toys
            .into_iter()
            .map(|(toy_id, quantity)| match price_of(&toy_id) {
                Some(unit_price_cents) => Ok(LetterLine {
                    toy_id,
                    quantity,
                    unit_price_cents,
                }),
                None => Err(DomainError::UnknownToy(toy_id)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let total_cents = lines
            .iter()
            .map(|l| l.unit_price_cents.times(l.quantity))
            .sum();
        Ok(Decision::Append(Event::LetterSubmitted(LetterSubmitted {
            letter_id: cmd.id,
            child: cmd.child,
            address: cmd.address,
            country: cmd.country,
            lines,
            total_cents,
        })))
    }

    pub fn decide_cancel(&self, cmd: CancelLetter) -> Result<Decision, DomainError> {
        if self.submitted.is_none() {
            return Err(DomainError::LetterNotFound(cmd.id));
        }
        if self.cancelled {
            return Err(DomainError::AlreadyCancelled(cmd.id));
        }
        Ok(Decision::Append(Event::LetterCancelled(LetterCancelled {
            letter_id: cmd.id,
        })))
    }
}

#[cfg(test)]
mod tests;
