//! Who is calling: shoppers by HS256 JWT (`sub` = user id, `exp` required,
//! algorithm pinned), operators by a static token compared in constant time.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    /// Optional: only `sub` and `exp` are required of a shopper token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// Verifies shopper tokens and operator tokens.
pub struct Auth {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    admin_token: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token")]
    Invalid,
}

impl Auth {
    pub fn new(jwt_secret: &[u8], admin_token: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        Self {
            decoding: DecodingKey::from_secret(jwt_secret),
            encoding: EncodingKey::from_secret(jwt_secret),
            validation,
            admin_token: admin_token.as_bytes().to_vec(),
        }
    }

    /// The shopper's user id from a bearer token.
    pub fn shopper(&self, token: &str) -> Result<i64, AuthError> {
        let data = decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| AuthError::Invalid)?;
        match data.claims.sub.parse::<i64>() {
            Ok(id) if id > 0 => Ok(id),
            _ => Err(AuthError::Invalid),
        }
    }

    /// Whether a bearer token is the operator token (constant time).
    pub fn is_admin(&self, token: &str) -> bool {
        let given = token.as_bytes();
        // Length is not secret; contents are.
        given.len() == self.admin_token.len() && bool::from(given.ct_eq(&self.admin_token))
    }

    /// Signs a shopper token (the `token` subcommand, tests, load tests).
    pub fn issue(&self, user_id: i64, ttl_secs: u64) -> String {
        let now = chrono::Utc::now().timestamp() as u64;
        let claims = Claims {
            sub: user_id.to_string(),
            exp: now + ttl_secs,
            iat: Some(now),
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with an in-memory key cannot fail")
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, AuthError> {
    let value = header.ok_or(AuthError::Missing)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Invalid)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Invalid);
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn round_trip_and_rejections() {
        let auth = Auth::new(SECRET, "admin-token-0123456");
        assert_eq!(auth.shopper(&auth.issue(42, 60)), Ok(42));
        let other = Auth::new(b"another-secret-another-secret-xx", "x");
        assert_eq!(auth.shopper(&other.issue(42, 60)), Err(AuthError::Invalid));
        // alg: none, unsigned
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiI0MiIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert_eq!(auth.shopper(none), Err(AuthError::Invalid));
        let minimal = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "9", "exp": 9_999_999_999u64}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(
            auth.shopper(&minimal),
            Ok(9),
            "sub and exp are all a token needs"
        );
        assert!(auth.is_admin("admin-token-0123456"));
        assert!(!auth.is_admin("admin-token-0123457"));
        assert!(!auth.is_admin("admin"));
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some("bearer abc")), Ok("abc"));
        assert_eq!(bearer(None), Err(AuthError::Missing));
        assert_eq!(bearer(Some("Basic abc")), Err(AuthError::Invalid));
        assert_eq!(bearer(Some("Bearer ")), Err(AuthError::Invalid));
    }
}
