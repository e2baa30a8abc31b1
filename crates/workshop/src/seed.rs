//! A small demo catalogue and a few letters, sent through the command path like any
//! client's, so a new user has something to query at once.

use santa_domain::{
    Address, Cents, ChildName, Country, Description, InvalidValue, LetterId, Quantity,
    SubmitLetter, ToyId, ToyName, UpsertToy,
};

use crate::{Accepted, CommandError, CommandService};

const TOYS: &[(&str, &str, &str, i64)] = &[
    (
        "rubiks-cube",
        "Rubik's Cube",
        "The classic 3×3 puzzle.",
        1299,
    ),
    (
        "wooden-train",
        "Wooden train set",
        "Forty pieces of track, two engines.",
        4999,
    ),
    ("teddy-bear", "Teddy bear", "Soft, brown, huggable.", 2450),
    (
        "lego-castle",
        "LEGO castle",
        "A fortress with a drawbridge.",
        8999,
    ),
    (
        "skipping-rope",
        "Skipping rope",
        "Wooden handles, adjustable length.",
        799,
    ),
    (
        "telescope",
        "Telescope",
        "70 mm refractor for young astronomers.",
        12900,
    ),
];

/// (id, child, address, country, [(toy, quantity)])
type DemoLetter = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static [(&'static str, i64)],
);

const LETTERS: &[DemoLetter] = &[
    (
        "demo-ada",
        "Ada",
        "12 Analytical Way, London",
        Some("GB"),
        &[("telescope", 1), ("rubiks-cube", 2)],
    ),
    (
        "demo-linus",
        "Linus",
        "3 Penguin Road, Helsinki",
        Some("FI"),
        &[("lego-castle", 1), ("teddy-bear", 1)],
    ),
    (
        "demo-grace",
        "Grace",
        "1 Compiler Court, Arlington",
        Some("US"),
        &[("wooden-train", 1)],
    ),
    (
        "demo-alan",
        "Alan",
        "7 Enigma Lane, Wilmslow",
        Some("GB"),
        &[("rubiks-cube", 1), ("skipping-rope", 3)],
    ),
    (
        "demo-rosalind",
        "Rosalind",
        "51 Helix Street, London",
        None,
        &[("telescope", 1), ("teddy-bear", 2)],
    ),
];

/// What seeding did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seeded {
    pub toys: Vec<Accepted>,
    pub letters: Vec<Accepted>,
}

/// Upserts the demo toys and submits the demo letters. Running it twice changes nothing:
/// every command is an idempotent repeat the second time.
pub async fn seed(commands: &CommandService) -> Result<Seeded, CommandError> {
    let mut seeded = Seeded {
        toys: Vec::new(),
        letters: Vec::new(),
    };
    for &(id, name, description, price) in TOYS {
        let cmd = UpsertToy {
            id: ToyId::parse(id).map_err(invalid)?,
            name: ToyName::parse(name).map_err(invalid)?,
            description: Description::parse(description).map_err(invalid)?,
            price: Cents::price(price).map_err(invalid)?,
        };
        seeded.toys.push(commands.upsert_toy(cmd).await?);
    }
    for &(id, child, address, country, toys) in LETTERS {
        let cmd = SubmitLetter::new(
            LetterId::parse(id).map_err(invalid)?,
            ChildName::parse(child).map_err(invalid)?,
            Address::parse(address).map_err(invalid)?,
            country.map(Country::parse).transpose().map_err(invalid)?,
            toys.iter()
                .map(|&(toy, q)| Ok((ToyId::parse(toy)?, Quantity::parse(q)?)))
                .collect::<Result<_, InvalidValue>>()
                .map_err(invalid)?,
        )
        .map_err(invalid)?;
        seeded.letters.push(commands.submit_letter(cmd).await?);
    }
    Ok(seeded)
}

fn invalid(error: InvalidValue) -> CommandError {
    CommandError::Rejected(error.into())
}
