//! One wrapper per `lua/*.lua` script: the script text compiled in, its SHA1,
//! and the decoding of its reply into a value the caller matches on.
//!
//! Scripts run with EVALSHA; when Redis answers NOSCRIPT (restart, SCRIPT
//! FLUSH, failover) the script is loaded again and the call repeated, which is
//! safe because every script is idempotent for the same arguments.

use fred::types::Value;

use super::RedisError;

/// A Lua script and its SHA1 as Redis knows it.
#[derive(Debug)]
pub struct LuaScript {
    pub name: &'static str,
    pub body: &'static str,
    pub sha1: String,
}

impl LuaScript {
    fn new(name: &'static str, body: &'static str) -> Self {
        Self {
            name,
            body,
            sha1: fred::util::sha1_hash(body),
        }
    }
}

/// Every script the engine runs.
#[derive(Debug)]
pub struct Scripts {
    pub purchase: LuaScript,
    pub release: LuaScript,
    pub preheat: LuaScript,
    pub admit: LuaScript,
    pub missing: LuaScript,
    pub snapshot: LuaScript,
    pub repair: LuaScript,
    pub unlock: LuaScript,
    pub renew: LuaScript,
    pub idempotency: LuaScript,
    pub cap: LuaScript,
}

impl Default for Scripts {
    fn default() -> Self {
        Self {
            purchase: LuaScript::new("purchase", include_str!("../../lua/purchase.lua")),
            release: LuaScript::new("release", include_str!("../../lua/release.lua")),
            preheat: LuaScript::new("preheat", include_str!("../../lua/preheat.lua")),
            admit: LuaScript::new("admit", include_str!("../../lua/admit.lua")),
            missing: LuaScript::new("missing", include_str!("../../lua/missing.lua")),
            snapshot: LuaScript::new("snapshot", include_str!("../../lua/snapshot.lua")),
            repair: LuaScript::new("repair", include_str!("../../lua/repair.lua")),
            unlock: LuaScript::new("unlock", include_str!("../../lua/unlock.lua")),
            renew: LuaScript::new("renew", include_str!("../../lua/renew.lua")),
            idempotency: LuaScript::new("idempotency", include_str!("../../lua/idempotency.lua")),
            cap: LuaScript::new("cap", include_str!("../../lua/cap.lua")),
        }
    }
}

impl Scripts {
    pub fn all(&self) -> [&LuaScript; 11] {
        [
            &self.purchase,
            &self.release,
            &self.preheat,
            &self.admit,
            &self.missing,
            &self.snapshot,
            &self.repair,
            &self.unlock,
            &self.renew,
            &self.idempotency,
            &self.cap,
        ]
    }
}

/// What `purchase.lua` decided. Business outcomes are values, not errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PurchaseOutcome {
    /// Stock taken and the intent written; `replay` when this order_no had
    /// already been accepted (a re-sent command).
    Accepted {
        amount: i64,
        accepted_ms: i64,
        replay: bool,
    },
    SoldOut {
        stock_left: i64,
    },
    /// The buyer's existing order_nos, failed ones marked with a `!` suffix.
    LimitExceeded {
        order_nos: String,
    },
    NotStarted,
    Ended,
    NotPreheated,
}

impl PurchaseOutcome {
    pub(crate) fn decode(reply: Value) -> Result<Self, RedisError> {
        let items = match reply {
            Value::Array(items) => items,
            other => {
                return Err(RedisError::Protocol(format!(
                    "purchase.lua returned {other:?}"
                )))
            }
        };
        let int = |i: usize| {
            items.get(i).and_then(|v| v.as_i64()).ok_or_else(|| {
                RedisError::Protocol(format!("purchase.lua field {i} missing in {items:?}"))
            })
        };
        Ok(match int(0)? {
            1 | 2 => Self::Accepted {
                amount: int(1)?,
                accepted_ms: int(2)?,
                replay: int(0)? == 2,
            },
            3 => Self::SoldOut {
                stock_left: int(1)?,
            },
            4 => Self::LimitExceeded {
                order_nos: items.get(1).and_then(|v| v.as_string()).unwrap_or_default(),
            },
            5 => Self::NotStarted,
            6 => Self::Ended,
            7 => Self::NotPreheated,
            code => {
                return Err(RedisError::Protocol(format!(
                    "purchase.lua returned code {code}"
                )))
            }
        })
    }
}
