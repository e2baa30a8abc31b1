use std::fmt;
use std::str::FromStr;

/// A place in the event log. Clients treat it as an opaque token they pass back verbatim
/// (`?after=`); on logs with a global sequence (SQLite, JetStream) it is that sequence
/// number, and `Position::ZERO` is "before the first event".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(u64);

impl Position {
    pub const ZERO: Position = Position(0);

    pub fn new(sequence: u64) -> Self {
        Self(sequence)
    }

    pub fn get(self) -> u64 {
        self.0
    }

    /// The position right after this one.
    pub fn next(self) -> Position {
        Position(self.0 + 1)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A position token that this log did not issue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a position this service issued (expected a non-negative integer)")]
pub struct InvalidPosition(pub String);

impl FromStr for Position {
    type Err = InvalidPosition;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        if raw.is_empty() || raw.len() > 20 || !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidPosition(raw.chars().take(40).collect()));
        }
        raw.parse()
            .map(Position)
            .map_err(|_| InvalidPosition(raw.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_only_from_plain_integers() {
        assert_eq!("42".parse::<Position>(), Ok(Position::new(42)));
        assert!("-1".parse::<Position>().is_err());
        assert!("".parse::<Position>().is_err());
        assert!("4x".parse::<Position>().is_err());
        assert!("99999999999999999999999".parse::<Position>().is_err());
    }
}
