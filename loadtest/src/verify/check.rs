//! The vocabulary of the verdict: one [`Check`] per line, what the run set up
//! ([`Setup`]), and how a line shows a few examples of what went wrong.

use serde::Serialize;

use crate::plan::Plan;

/// What a check concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
}

/// One line of the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    /// `engine` (its invariant checker) or `client` (this program).
    pub source: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

impl Check {
    /// A check that passed when `ok`.
    pub(super) fn new(name: &str, source: &'static str, ok: bool, detail: String) -> Self {
        Self {
            name: name.to_owned(),
            source,
            verdict: if ok { Verdict::Pass } else { Verdict::Fail },
            detail,
        }
    }

    /// A check of this program.
    pub(super) fn client(name: &str, ok: bool, detail: String) -> Self {
        Self::new(name, "client", ok, detail)
    }

    /// A check that could not be judged in this run, and why.
    pub(super) fn skip(name: &str, source: &'static str, detail: String) -> Self {
        Self {
            name: name.to_owned(),
            source,
            verdict: Verdict::Skip,
            detail,
        }
    }
}

/// What the run set up, needed to judge it.
pub struct Setup<'a> {
    pub plan: &'a Plan,
    pub event_id: i64,
    pub first_user_id: i64,
    /// Wallets were created by this run (none existed), so their initial
    /// balances are known.
    pub fresh_wallets: bool,
}

/// ` (e.g. a, b, c)` for the first few items of a non-empty list.
pub(super) fn sample_list<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = items.iter().take(3).map(ToString::to_string).collect();
    format!(
        " (e.g. {}{})",
        shown.join(", "),
        if items.len() > 3 { ", ..." } else { "" }
    )
}
