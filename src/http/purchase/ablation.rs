//! The shopper as the lower ablation layers see it (`seckill serve
//! --ablation`, `make bench`'s cost table): what the purchase path costs
//! without the JWT check, or without the rate limits behind it.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

use axum::http::request::Parts;

use crate::{error::ApiError, http::extract::bearer_token, state::AppState};

/// `script` layer: the bearer string itself, hashed, stands for the shopper
/// (the load generator gives every shopper its own token). No signature, no
/// claims parsed.
pub(super) fn unverified_shopper(parts: &Parts) -> Result<i64, ApiError> {
    let token = bearer_token(parts)?;
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(token);
    // Positive and non-zero, like a real shopper id.
    Ok((hash >> 1).max(1) as i64)
}

/// `token` layer: the JWT verified, no rate limit spent.
pub(super) fn verified_shopper(parts: &Parts, app: &AppState) -> Result<i64, ApiError> {
    let token = bearer_token(parts)?;
    app.auth.shopper(token).map_err(|_| ApiError::Unauthorized)
}
