//! Who is calling: shoppers by HS256 JWT (`sub` = user id, `exp` required,
//! algorithm pinned), operators by a static token compared in constant time.
//!
//! Every purchase verifies a token, so verification is done here directly
//! with an HMAC key prepared once (the inner and outer hash states of the
//! secret): about a third of the instructions of `jsonwebtoken::decode`, which
//! prepares the key and encodes the expected signature again for every token.
//! The rules are `jsonwebtoken`'s as configured before: header `alg` HS256,
//! `sub` and `exp` required, expired when `exp < now - 5 s`, and a token
//! carrying an audience refused (none is expected). A test holds the two
//! verifiers to the same answers.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use ring::hmac;
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

/// Seconds an expired token is still accepted (clock skew between issuers).
const LEEWAY_SECS: u64 = 5;

/// A token's header: only `alg` is read.
#[derive(Deserialize)]
struct TokenHeader<'a> {
    #[serde(borrow)]
    alg: std::borrow::Cow<'a, str>,
}

/// A token's claims as verification reads them.
#[derive(Deserialize)]
struct TokenClaims<'a> {
    #[serde(borrow)]
    sub: Option<std::borrow::Cow<'a, str>>,
    /// Seconds; a fraction is rounded, as `jsonwebtoken` does.
    exp: Option<serde_json::Number>,
    /// An audience (a string or a list of strings): refused, none is expected.
    aud: Option<serde_json::Value>,
}

impl TokenClaims<'_> {
    fn exp(&self) -> Option<u64> {
        let exp = self.exp.as_ref()?;
        exp.as_u64().or_else(|| {
            let f = exp.as_f64()?;
            (f.is_finite() && f >= 0.0 && f < u64::MAX as f64).then(|| f.round() as u64)
        })
    }

    fn names_an_audience(&self) -> bool {
        match &self.aud {
            Some(serde_json::Value::String(_)) => true,
            Some(serde_json::Value::Array(all)) => all.iter().all(serde_json::Value::is_string),
            _ => false,
        }
    }
}

/// Verifies shopper tokens and operator tokens.
pub struct Auth {
    hmac: hmac::Key,
    encoding: EncodingKey,
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
        Self {
            hmac: hmac::Key::new(hmac::HMAC_SHA256, jwt_secret),
            encoding: EncodingKey::from_secret(jwt_secret),
            admin_token: admin_token.as_bytes().to_vec(),
        }
    }

    /// The shopper's user id from a bearer token.
    pub fn shopper(&self, token: &str) -> Result<i64, AuthError> {
        self.verified_subject(token, now_secs())
            .ok_or(AuthError::Invalid)
    }

    /// `header.claims.signature`, each part base64url without padding: the
    /// signature checked (constant time) before anything else is trusted.
    fn verified_subject(&self, token: &str, now: u64) -> Option<i64> {
        let (signed, signature) = token.rsplit_once('.')?;
        let (header, claims) = signed.split_once('.')?;
        let mut buf = [0u8; 64];
        let n = URL_SAFE_NO_PAD.decode_slice(signature, &mut buf).ok()?;
        hmac::verify(&self.hmac, signed.as_bytes(), &buf[..n]).ok()?;
        let header = URL_SAFE_NO_PAD.decode(header).ok()?;
        if serde_json::from_slice::<TokenHeader>(&header).ok()?.alg != "HS256" {
            return None;
        }
        let claims = URL_SAFE_NO_PAD.decode(claims).ok()?;
        let claims: TokenClaims = serde_json::from_slice(&claims).ok()?;
        if claims.names_an_audience() || claims.exp()? < now.saturating_sub(LEEWAY_SECS) {
            return None;
        }
        match claims.sub?.parse::<i64>() {
            Ok(id) if id > 0 => Some(id),
            _ => None,
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

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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

    /// What `jsonwebtoken` says of a token under the rules this module keeps.
    fn reference(token: &str) -> Option<i64> {
        let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = LEEWAY_SECS;
        let data = jsonwebtoken::decode::<serde_json::Value>(
            token,
            &jsonwebtoken::DecodingKey::from_secret(SECRET),
            &validation,
        )
        .ok()?;
        match data.claims["sub"].as_str()?.parse::<i64>() {
            Ok(id) if id > 0 => Some(id),
            _ => None,
        }
    }

    #[test]
    fn verification_agrees_with_jsonwebtoken() {
        let auth = Auth::new(SECRET, "admin-token-0123456");
        let now = now_secs();
        let sign = |alg: Algorithm, claims: serde_json::Value, secret: &[u8]| {
            encode(
                &Header::new(alg),
                &claims,
                &EncodingKey::from_secret(secret),
            )
            .unwrap()
        };
        let good = sign(
            Algorithm::HS256,
            serde_json::json!({"sub": "42", "exp": now + 60}),
            SECRET,
        );
        let (head, rest) = good.split_once('.').unwrap();
        let b64 = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let mut tokens = vec![
            good.clone(),
            auth.issue(7, 60),
            format!("{good}="),
            format!("{good}.x"),
            format!("{head}.{rest}"),
            good.replace('.', ""),
            String::new(),
            "..".into(),
            format!("{}.{}", b64(serde_json::json!({"alg": "none"})), rest),
            format!(
                "{}.{}",
                b64(serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": "k"})),
                rest
            ),
        ];
        for claims in [
            serde_json::json!({"sub": "42", "exp": now - 2}),
            serde_json::json!({"sub": "42", "exp": now - 60}),
            serde_json::json!({"sub": "42", "exp": now + 60, "aud": "shop"}),
            serde_json::json!({"sub": "42", "exp": now + 60, "iss": "x", "nbf": now + 999}),
            serde_json::json!({"sub": "42"}),
            serde_json::json!({"exp": now + 60}),
            serde_json::json!({"sub": 42, "exp": now + 60}),
            serde_json::json!({"sub": "-3", "exp": now + 60}),
            serde_json::json!({"sub": "0", "exp": now + 60}),
            serde_json::json!({"sub": "9223372036854775807", "exp": now + 60}),
            serde_json::json!({"sub": "9223372036854775808", "exp": now + 60}),
            serde_json::json!({"sub": " 5", "exp": now + 60}),
            serde_json::json!({"sub": "5", "exp": (now + 60) as f64 + 0.5}),
            serde_json::json!({"sub": "5", "exp": "soon"}),
            serde_json::json!({"sub": "5", "exp": -1}),
            serde_json::json!({"sub": "5", "exp": null}),
            serde_json::json!({"sub": "5", "exp": now + 60, "aud": ["a", "b"]}),
            serde_json::json!({"sub": "5", "exp": now + 60, "aud": 5}),
            serde_json::json!({"sub": "5", "exp": now + 60, "aud": null}),
        ] {
            tokens.push(sign(Algorithm::HS256, claims.clone(), SECRET));
            tokens.push(sign(Algorithm::HS384, claims.clone(), SECRET));
            tokens.push(sign(
                Algorithm::HS256,
                claims,
                b"another-secret-another-secret-xx",
            ));
        }
        for token in &tokens {
            assert_eq!(auth.shopper(token).ok(), reference(token), "{token}");
        }
        assert_eq!(auth.shopper(&good), Ok(42));
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
