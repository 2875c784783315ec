//! The `lua/*.lua` scripts as Redis runs them: the text compiled in, with
//! `lua/prelude.lua` in front of the scripts that use its shared functions
//! (as BullMQ's includes do), and the SHA1 of that text for EVALSHA.
//!
//! When Redis answers NOSCRIPT (restart, SCRIPT FLUSH, failover) the wrapper
//! runs the script with EVAL instead, which is safe because every script is
//! idempotent for the same arguments.

/// Functions the sale scripts share.
const PRELUDE: &str = include_str!("../../lua/prelude.lua");

/// A Lua script and its SHA1 as Redis knows it.
#[derive(Debug)]
pub struct LuaScript {
    name: &'static str,
    body: String,
    sha1: String,
}

impl LuaScript {
    fn new(name: &'static str, body: &str) -> Self {
        Self {
            name,
            sha1: fred::util::sha1_hash(body),
            body: body.to_owned(),
        }
    }

    /// A script that calls the prelude's functions.
    fn with_prelude(name: &'static str, body: &str) -> Self {
        Self::new(name, &format!("{PRELUDE}\n{body}"))
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The full text Redis runs.
    pub fn body(&self) -> &str {
        &self.body
    }

    pub fn sha1(&self) -> &str {
        &self.sha1
    }
}

/// Every script the engine runs.
#[derive(Debug)]
pub struct Scripts {
    pub purchase: LuaScript,
    pub release: LuaScript,
    pub refund: LuaScript,
    pub preheat: LuaScript,
    pub rebuild: LuaScript,
    pub admit: LuaScript,
    pub missing: LuaScript,
    pub ack: LuaScript,
    pub state: LuaScript,
    pub buyers: LuaScript,
    pub repair: LuaScript,
    pub cap: LuaScript,
    pub idempotency: LuaScript,
    pub renew: LuaScript,
    pub unlock: LuaScript,
    pub sale: LuaScript,
    pub adjust: LuaScript,
    pub transfer: LuaScript,
    pub balance: LuaScript,
}

impl Default for Scripts {
    fn default() -> Self {
        Self {
            purchase: LuaScript::with_prelude("purchase", include_str!("../../lua/purchase.lua")),
            release: LuaScript::with_prelude("release", include_str!("../../lua/release.lua")),
            refund: LuaScript::with_prelude("refund", include_str!("../../lua/refund.lua")),
            preheat: LuaScript::new("preheat", include_str!("../../lua/preheat.lua")),
            rebuild: LuaScript::with_prelude("rebuild", include_str!("../../lua/rebuild.lua")),
            admit: LuaScript::with_prelude("admit", include_str!("../../lua/admit.lua")),
            missing: LuaScript::new("missing", include_str!("../../lua/missing.lua")),
            ack: LuaScript::with_prelude("ack", include_str!("../../lua/ack.lua")),
            state: LuaScript::with_prelude("state", include_str!("../../lua/state.lua")),
            buyers: LuaScript::with_prelude("buyers", include_str!("../../lua/buyers.lua")),
            repair: LuaScript::new("repair", include_str!("../../lua/repair.lua")),
            cap: LuaScript::new("cap", include_str!("../../lua/cap.lua")),
            idempotency: LuaScript::with_prelude(
                "idempotency",
                include_str!("../../lua/idempotency.lua"),
            ),
            renew: LuaScript::new("renew", include_str!("../../lua/renew.lua")),
            unlock: LuaScript::new("unlock", include_str!("../../lua/unlock.lua")),
            sale: LuaScript::with_prelude("sale", include_str!("../../lua/sale.lua")),
            adjust: LuaScript::new("adjust", include_str!("../../lua/adjust.lua")),
            transfer: LuaScript::new("transfer", include_str!("../../lua/transfer.lua")),
            balance: LuaScript::new("balance", include_str!("../../lua/balance.lua")),
        }
    }
}

impl Scripts {
    pub fn all(&self) -> [&LuaScript; 19] {
        [
            &self.purchase,
            &self.release,
            &self.refund,
            &self.preheat,
            &self.rebuild,
            &self.admit,
            &self.missing,
            &self.ack,
            &self.state,
            &self.buyers,
            &self.repair,
            &self.cap,
            &self.idempotency,
            &self.renew,
            &self.unlock,
            &self.sale,
            &self.adjust,
            &self.transfer,
            &self.balance,
        ]
    }
}
