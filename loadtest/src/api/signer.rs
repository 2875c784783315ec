//! Shopper tokens: HS256 JWTs signed here with the engine's secret, each
//! signed once and cached, since signing costs more than a request.

use std::sync::OnceLock;

use chrono::Utc;
use jsonwebtoken::{EncodingKey, Header};
use reqwest::header::HeaderValue;
use serde::Serialize;

#[derive(Serialize)]
struct Claims {
    sub: String,
    exp: i64,
    iat: i64,
}

const MAX_CACHED_TOKENS: u64 = 2_000_000;

/// Signs shopper tokens once per shopper, on first use.
pub struct Signer {
    key: EncodingKey,
    first_user_id: i64,
    iat: i64,
    exp: i64,
    tokens: Vec<OnceLock<HeaderValue>>,
}

impl Signer {
    /// Tokens for shoppers `first_user_id ..first_user_id + users`, valid one hour.
    pub fn new(secret: &str, first_user_id: i64, users: u64) -> Self {
        Self {
            key: EncodingKey::from_secret(secret.as_bytes()),
            first_user_id,
            iat: Utc::now().timestamp(),
            exp: Utc::now().timestamp() + 3_600,
            // Cache up to a few million tokens (~100 bytes each); beyond
            // that, sign on every request.
            tokens: (0..users.min(MAX_CACHED_TOKENS))
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// `Authorization` header value for a shopper of the run's range.
    pub fn bearer(&self, user_id: i64) -> HeaderValue {
        let slot = usize::try_from(user_id - self.first_user_id)
            .ok()
            .and_then(|i| self.tokens.get(i));
        match slot {
            Some(slot) => slot.get_or_init(|| self.sign(user_id)).clone(),
            None => self.sign(user_id),
        }
    }

    fn sign(&self, user_id: i64) -> HeaderValue {
        let claims = Claims {
            sub: user_id.to_string(),
            exp: self.exp,
            iat: self.iat,
        };
        let token = jsonwebtoken::encode(&Header::default(), &claims, &self.key)
            .expect("HS256 signing with an in-memory key cannot fail");
        HeaderValue::from_str(&format!("Bearer {token}")).expect("a JWT is a valid header value")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signer_caches_per_user() {
        let s = Signer::new("0123456789abcdef0123456789abcdef", 100, 10);
        assert_eq!(s.bearer(105), s.bearer(105));
        assert_ne!(s.bearer(105), s.bearer(106));
        // Outside the range still signs.
        assert!(s.bearer(5).to_str().unwrap().starts_with("Bearer "));
    }
}
