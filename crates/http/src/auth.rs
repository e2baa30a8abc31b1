//! Bearer tokens with scopes. The read and write sides are authorised separately.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use crate::problem::ApiError;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

/// The configured tokens; empty means authentication is off (loopback-only servers).
#[derive(Clone, Default)]
pub struct Tokens(Arc<Vec<(Vec<u8>, Vec<Scope>)>>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret.
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

/// A malformed `SANTA_TOKENS` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid token list: {0} (expected `token:scope+scope,token:scope`, scopes read, write, admin)"
)]
pub struct TokensError(String);

impl Tokens {
    /// Parses `tokenA:read,tokenB:write,tokenC:admin+read+write`.
    pub fn parse(raw: &str) -> Result<Self, TokensError> {
        let mut tokens = Vec::new();
        for (i, entry) in raw
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let (token, scopes) = entry
                .rsplit_once(':')
                .ok_or_else(|| TokensError(format!("entry {} has no `:scope`", i + 1)))?;
            if token.len() < 8 {
                return Err(TokensError(format!(
                    "entry {}: a token must be at least 8 characters",
                    i + 1
                )));
            }
            let scopes = scopes
                .split('+')
                .map(|s| {
                    Scope::parse(s.trim())
                        .ok_or_else(|| TokensError(format!("entry {}: unknown scope `{s}`", i + 1)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            tokens.push((token.as_bytes().to_vec(), scopes));
        }
        Ok(Self(Arc::new(tokens)))
    }

    pub fn is_enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// The scopes of a presented token; every configured token is compared, in constant
    /// time, so timing reveals nothing about which one nearly matched.
    fn scopes_of(&self, presented: &[u8]) -> Option<&[Scope]> {
        let mut found = None;
        for (token, scopes) in self.0.iter() {
            if bool::from(token.as_slice().ct_eq(presented)) {
                found = Some(scopes.as_slice());
            }
        }
        found
    }

    /// Checks a request's `Authorization` header against a required scope.
    pub fn authorize(&self, authorization: Option<&str>, required: Scope) -> Result<(), ApiError> {
        if !self.is_enabled() {
            return Ok(());
        }
        let unauthorized =
            |detail: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail);
        let Some(value) = authorization else {
            return Err(unauthorized(
                "send a bearer token: `Authorization: Bearer <token>`",
            ));
        };
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| unauthorized("the Authorization header must use the Bearer scheme"))?;
        let scopes = self
            .scopes_of(token.trim().as_bytes())
            .ok_or_else(|| unauthorized("unknown token"))?;
        if scopes.contains(&required) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this token lacks the `{}` scope", required.as_str()),
            ))
        }
    }
}

/// Middleware state: the tokens and the scope a router requires.
#[derive(Debug, Clone)]
pub struct Guard {
    pub tokens: Tokens,
    pub scope: Scope,
}

pub async fn require(
    State(guard): State<Guard>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    guard.tokens.authorize(authorization, guard.scope)?;
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lists_parse_with_several_scopes() {
        let tokens = Tokens::parse("reader-123:read, admin-1234:admin+read+write").unwrap();
        assert!(
            tokens
                .authorize(Some("Bearer reader-123"), Scope::Read)
                .is_ok()
        );
        assert_eq!(
            tokens
                .authorize(Some("Bearer reader-123"), Scope::Write)
                .unwrap_err()
                .status(),
            StatusCode::FORBIDDEN
        );
        assert!(
            tokens
                .authorize(Some("Bearer admin-1234"), Scope::Write)
                .is_ok()
        );
        assert_eq!(
            tokens.authorize(None, Scope::Read).unwrap_err().status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            tokens
                .authorize(Some("Bearer nope-nope"), Scope::Read)
                .unwrap_err()
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn bad_token_lists_are_refused_with_a_reason() {
        assert!(Tokens::parse("abcdefgh").is_err());
        assert!(Tokens::parse("abcdefgh:superuser").is_err());
        assert!(Tokens::parse("short:read").is_err());
        assert!(!Tokens::parse("").unwrap().is_enabled());
    }

    #[test]
    fn tokens_are_never_printed() {
        let tokens = Tokens::parse("secret-token:read").unwrap();
        assert!(!format!("{tokens:?}").contains("secret"));
    }
}
