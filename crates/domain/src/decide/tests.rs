//! Given events, when a command, then events or an error.

use std::collections::HashMap;

use super::*;

fn toy(id: &str, price: i64) -> Event {
    Event::ToyUpserted(ToyUpserted {
        toy_id: ToyId::parse(id).unwrap(),
        name: ToyName::parse(id).unwrap(),
        description: Description::parse("").unwrap(),
        price_cents: Cents::price(price).unwrap(),
    })
}

fn letter(id: &str, toys: &[(&str, i64)]) -> SubmitLetter {
    SubmitLetter::new(
        LetterId::parse(id).unwrap(),
        ChildName::parse("Ada").unwrap(),
        Address::parse("1 Snow Lane").unwrap(),
        Some(Country::parse("FI").unwrap()),
        toys.iter()
            .map(|(t, q)| (ToyId::parse(*t).unwrap(), Quantity::parse(*q).unwrap()))
            .collect(),
    )
    .unwrap()
}

/// The catalogue as the given toy events leave it.
fn catalogue(given: &[Event]) -> HashMap<ToyId, ToyState> {
    let mut toys: HashMap<ToyId, ToyState> = HashMap::new();
    for event in given {
        if let Event::ToyUpserted(e) = event {
            toys.entry(e.toy_id.clone()).or_default().apply(event);
        }
    }
    toys
}

fn given_letter(events: &[Event]) -> LetterState {
    let mut state = LetterState::default();
    events.iter().for_each(|e| state.apply(e));
    state
}

fn when_submitted(
    toys: &[Event],
    history: &[Event],
    cmd: SubmitLetter,
) -> Result<Decision, DomainError> {
    let cat = catalogue(toys);
    given_letter(history).decide_submit(cmd, |id| cat.get(id).and_then(ToyState::price))
}

#[test]
fn a_letter_records_unit_prices_and_the_total() {
    let then = when_submitted(
        &[toy("kite", 1250), toy("yo-yo", 300)],
        &[],
        letter("l1", &[("kite", 2), ("yo-yo", 3)]),
    );
    let Ok(Decision::Append(Event::LetterSubmitted(e))) = then else {
        panic!("expected a submission, got {then:?}")
    };
    assert_eq!(e.total_cents.get(), 2 * 1250 + 3 * 300);
    assert_eq!(e.lines[0].unit_price_cents.get(), 1250);
    assert_eq!(e.lines[1].quantity.get(), 3);
}

#[test]
fn a_letter_with_an_unknown_toy_is_rejected() {
    let then = when_submitted(
        &[toy("kite", 100)],
        &[],
        letter("l1", &[("kite", 1), ("pony", 1)]),
    );
    assert_eq!(
        then,
        Err(DomainError::UnknownToy(ToyId::parse("pony").unwrap()))
    );
}

#[test]
fn resubmitting_identical_content_is_an_idempotent_repeat() {
    let toys = [toy("kite", 100), toy("yo-yo", 5)];
    let Ok(Decision::Append(first)) =
        when_submitted(&toys, &[], letter("l1", &[("kite", 1), ("yo-yo", 2)]))
    else {
        panic!("first submission must be recorded")
    };
    let again = when_submitted(&toys, &[first], letter("l1", &[("yo-yo", 2), ("kite", 1)]));
    assert_eq!(again, Ok(Decision::Unchanged));
}

#[test]
fn different_content_under_a_used_id_is_a_conflict() {
    let toys = [toy("kite", 100)];
    let Ok(Decision::Append(first)) = when_submitted(&toys, &[], letter("l1", &[("kite", 1)]))
    else {
        panic!("first submission must be recorded")
    };
    let then = when_submitted(&toys, &[first], letter("l1", &[("kite", 2)]));
    assert_eq!(
        then,
        Err(DomainError::LetterConflict(LetterId::parse("l1").unwrap()))
    );
}

#[test]
fn a_letter_can_be_cancelled_once() {
    let toys = [toy("kite", 100)];
    let Ok(Decision::Append(submitted)) = when_submitted(&toys, &[], letter("l1", &[("kite", 1)]))
    else {
        panic!("submission must be recorded")
    };
    let id = LetterId::parse("l1").unwrap();
    let cancel = || CancelLetter { id: id.clone() };
    let then = given_letter(std::slice::from_ref(&submitted)).decide_cancel(cancel());
    let Ok(Decision::Append(cancelled)) = then else {
        panic!("cancel must be recorded, got {then:?}")
    };
    assert_eq!(
        cancelled,
        Event::LetterCancelled(LetterCancelled {
            letter_id: id.clone()
        })
    );
    let again = given_letter(&[submitted, cancelled]).decide_cancel(cancel());
    assert_eq!(again, Err(DomainError::AlreadyCancelled(id)));
}

#[test]
fn cancelling_a_letter_that_does_not_exist_is_not_found() {
    let id = LetterId::parse("nope").unwrap();
    assert_eq!(
        given_letter(&[]).decide_cancel(CancelLetter { id: id.clone() }),
        Err(DomainError::LetterNotFound(id))
    );
}

#[test]
fn a_letter_must_list_toys_once_each_and_at_least_one() {
    let make = |toys: Vec<(&str, i64)>| {
        SubmitLetter::new(
            LetterId::parse("l").unwrap(),
            ChildName::parse("Ada").unwrap(),
            Address::parse("x").unwrap(),
            None,
            toys.into_iter()
                .map(|(t, q)| (ToyId::parse(t).unwrap(), Quantity::parse(q).unwrap()))
                .collect(),
        )
    };
    assert_eq!(make(vec![]).unwrap_err().field, "toys");
    assert!(
        make(vec![("kite", 1), ("kite", 2)])
            .unwrap_err()
            .reason
            .contains("more than once")
    );
    let many: Vec<String> = (0..=MAX_LINES_PER_LETTER)
        .map(|i| format!("t{i}"))
        .collect();
    assert!(make(many.iter().map(|t| (t.as_str(), 1)).collect()).is_err());
}

#[test]
fn upserting_an_unchanged_toy_records_nothing() {
    let mut state = ToyState::default();
    let cmd = || UpsertToy {
        id: ToyId::parse("kite").unwrap(),
        name: ToyName::parse("kite").unwrap(),
        description: Description::parse("").unwrap(),
        price: Cents::price(100).unwrap(),
    };
    let Decision::Append(event) = state.decide(cmd()) else {
        panic!("a new toy must be recorded")
    };
    state.apply(&event);
    assert_eq!(state.decide(cmd()), Decision::Unchanged);
    assert_eq!(state.price(), Some(Cents::price(100).unwrap()));
}

#[test]
fn a_price_change_does_not_alter_a_submitted_letter() {
    let toys = [toy("kite", 100), toy("kite", 900)];
    let Ok(Decision::Append(Event::LetterSubmitted(e))) =
        when_submitted(&toys[..1], &[], letter("l1", &[("kite", 1)]))
    else {
        panic!("submission must be recorded")
    };
    let later = given_letter(&[Event::LetterSubmitted(e.clone()), toys[1].clone()]);
    assert_eq!(
        later.decide_submit(letter("l1", &[("kite", 1)]), |_| Some(
            Cents::price(900).unwrap()
        )),
        Ok(Decision::Unchanged)
    );
    assert_eq!(e.total_cents.get(), 100);
}
