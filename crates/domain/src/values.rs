//! Value types: each one is parsed once at the edge and cannot hold an invalid value.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::InvalidValue;

/// The most lines one letter may carry.
pub const MAX_LINES_PER_LETTER: usize = 100;

/// Defines a string newtype whose only constructor is `parse`, which applies `$check`.
macro_rules! text_value {
    ($(#[$doc:meta])* $name:ident, $field:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses a raw value, naming the field and the problem when it is invalid.
            pub fn parse(raw: impl Into<String>) -> Result<Self, InvalidValue> {
                let raw: String = raw.into();
                let check: fn(String) -> Result<String, String> = $check;
                check(raw).map(Self).map_err(|reason| InvalidValue::new($field, reason))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(raw: String) -> Result<Self, Self::Error> {
                Self::parse(raw)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
    };
}

text_value!(
    /// A toy's slug, e.g. `rubiks-cube`: 1–64 characters of `a-z`, `0-9` and `-`, not
    /// starting or ending with `-`.
    ToyId,
    "toy_id",
    |raw| {
        check_length(&raw, 1, 64)?;
        if !raw.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err("must contain only lowercase letters, digits and `-`".into());
        }
        if raw.starts_with('-') || raw.ends_with('-') {
            return Err("must not start or end with `-`".into());
        }
        Ok(raw)
    }
);

text_value!(
    /// A letter's id: 1–64 characters of ASCII letters, digits, `.`, `_` and `-`.
    LetterId,
    "id",
    |raw| {
        check_length(&raw, 1, 64)?;
        if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
            return Err("must contain only ASCII letters, digits, `.`, `_` and `-`".into());
        }
        Ok(raw)
    }
);

text_value!(
    /// The child's name: 1–100 characters, trimmed, without control characters.
    ChildName,
    "child",
    |raw| plain_text(raw, 1, 100, false)
);

text_value!(
    /// Where the presents go: 1–500 characters, trimmed; line breaks allowed.
    Address,
    "address",
    |raw| plain_text(raw, 1, 500, true)
);

text_value!(
    /// A toy's display name: 1–100 characters, trimmed, without control characters.
    ToyName,
    "name",
    |raw| plain_text(raw, 1, 100, false)
);

text_value!(
    /// A toy's description: up to 2,000 characters; line breaks allowed.
    Description,
    "description",
    |raw| plain_text(raw, 0, 2000, true)
);

text_value!(
    /// An ISO 3166-1 alpha-2 country code, stored upper-case (`fi`, `FI` → `FI`).
    Country,
    "country",
    |raw| {
        if raw.len() != 2 || !raw.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err("must be a two-letter ISO 3166-1 alpha-2 code such as `FI`".into());
        }
        Ok(raw.to_ascii_uppercase())
    }
);

/// How many of one toy a letter asks for: 1 to 1,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u32")]
pub struct Quantity(u32);

impl Quantity {
    pub const MAX: u32 = 1000;

    pub fn parse(raw: i64) -> Result<Self, InvalidValue> {
        if raw < 1 || raw > i64::from(Self::MAX) {
            return Err(InvalidValue::new(
                "quantity",
                format!("must be between 1 and {}, got {raw}", Self::MAX),
            ));
        }
        u32::try_from(raw)
            .map(Self)
            .map_err(|_| InvalidValue::new("quantity", "out of range"))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<i64> for Quantity {
    type Error = InvalidValue;
    fn try_from(raw: i64) -> Result<Self, Self::Error> {
        Self::parse(raw)
    }
}

impl From<Quantity> for u32 {
    fn from(q: Quantity) -> u32 {
        q.0
    }
}

/// Money as an integer number of cents; never floating point. Prices are 0 to
/// 100,000,000 cents; totals are sums of `quantity × price` and stay far inside `i64`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Cents(i64);

impl Cents {
    pub const MAX_PRICE: i64 = 100_000_000;

    /// Parses a unit price.
    pub fn price(raw: i64) -> Result<Self, InvalidValue> {
        if !(0..=Self::MAX_PRICE).contains(&raw) {
            return Err(InvalidValue::new(
                "price_cents",
                format!("must be between 0 and {}, got {raw}", Self::MAX_PRICE),
            ));
        }
        Ok(Self(raw))
    }

    pub fn get(self) -> i64 {
        self.0
    }

    /// `self × quantity`; cannot overflow for a valid price and quantity.
    pub fn times(self, quantity: Quantity) -> Cents {
        Cents(self.0 * i64::from(quantity.get()))
    }
}

impl std::iter::Sum for Cents {
    fn sum<I: Iterator<Item = Cents>>(iter: I) -> Cents {
        Cents(iter.map(|c| c.0).sum())
    }
}

fn check_length(raw: &str, min: usize, max: usize) -> Result<(), String> {
    let chars = raw.chars().count();
    if chars < min {
        return Err(if min == 1 {
            "must not be empty".into()
        } else {
            format!("must be at least {min} characters")
        });
    }
    if chars > max {
        return Err(format!("must be at most {max} characters, got {chars}"));
    }
    Ok(())
}

fn plain_text(raw: String, min: usize, max: usize, line_breaks: bool) -> Result<String, String> {
    let trimmed = raw.trim();
    check_length(trimmed, min, max)?;
    if trimmed
        .chars()
        .any(|c| c.is_control() && !(line_breaks && c == '\n'))
    {
        return Err("must not contain control characters".into());
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_toy_id_is_a_lowercase_slug() {
        assert!(ToyId::parse("rubiks-cube").is_ok());
        assert_eq!(ToyId::parse("Rubiks").unwrap_err().field, "toy_id");
        assert!(ToyId::parse("-cube").is_err());
        assert!(ToyId::parse("").is_err());
        assert!(ToyId::parse("a".repeat(65)).is_err());
    }

    #[test]
    fn a_country_is_normalised_to_upper_case() {
        assert_eq!(Country::parse("fi").unwrap().as_str(), "FI");
        assert!(Country::parse("FIN").is_err());
        assert!(Country::parse("F1").is_err());
    }

    #[test]
    fn names_are_trimmed_and_control_characters_rejected() {
        assert_eq!(ChildName::parse("  Ada ").unwrap().as_str(), "Ada");
        assert!(ChildName::parse("   ").is_err());
        assert!(ChildName::parse("A\u{0}da").is_err());
        assert!(Address::parse("1 Elm St\nSpringfield").is_ok());
        assert!(ChildName::parse("Ada\nLovelace").is_err());
    }

    #[test]
    fn quantities_outside_one_to_a_thousand_are_rejected() {
        assert!(Quantity::parse(0).is_err());
        assert!(Quantity::parse(-3).is_err());
        assert!(Quantity::parse(1001).is_err());
        assert_eq!(Quantity::parse(1000).unwrap().get(), 1000);
    }

    proptest! {
        #[test]
        fn every_parsed_toy_id_round_trips(raw in "[a-z0-9][a-z0-9-]{0,62}[a-z0-9]") {
            let id = ToyId::parse(raw.clone()).unwrap();
            prop_assert_eq!(id.as_str(), raw.as_str());
        }

        #[test]
        fn toy_id_parsing_never_accepts_what_it_should_not(raw in "\\PC{0,80}") {
            if let Ok(id) = ToyId::parse(raw) {
                let s = id.as_str();
                prop_assert!(!s.is_empty() && s.len() <= 64);
                prop_assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
            }
        }

        #[test]
        fn letter_ids_never_contain_control_characters(raw in "\\PC{0,80}|[\\x00-\\x1f]{1,3}") {
            if let Ok(id) = LetterId::parse(raw) {
                prop_assert!(id.as_str().chars().all(|c| !c.is_control()));
                prop_assert!(id.as_str().len() <= 64);
            }
        }

        #[test]
        fn quantity_parses_exactly_the_allowed_range(raw in any::<i64>()) {
            prop_assert_eq!(Quantity::parse(raw).is_ok(), (1..=1000).contains(&raw));
        }

        #[test]
        fn price_parses_exactly_the_allowed_range(raw in any::<i64>()) {
            prop_assert_eq!(Cents::price(raw).is_ok(), (0..=Cents::MAX_PRICE).contains(&raw));
        }
    }
}
