//! The binary's operator commands: parse what the operator typed, call the
//! admin API through [`seckill::operator::AdminClient`], print the answer
//! (JSON for one object, a table for lists) and show progress for long work.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use seckill::operator::{parse_when, AdminClient, NewSale};
use serde_json::Value;

use crate::{EngineArgs, EventCommand};

/// Events asked for per page when listing.
const LIST_PAGE: u32 = 200;

fn client(engine: &EngineArgs) -> anyhow::Result<AdminClient> {
    AdminClient::new(&engine.url, &engine.admin_token)
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// A spinner on stderr while one long request runs (stdout stays the answer).
fn spinner(message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_message(message);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

pub async fn event(command: EventCommand) -> anyhow::Result<()> {
    match command {
        EventCommand::Create {
            engine,
            name,
            price,
            stock,
            limit,
            starts_at,
            ends_at,
            buckets,
            preheat,
        } => {
            let api = client(&engine)?;
            let sale = NewSale {
                name,
                price,
                stock,
                per_user_limit: limit,
                starts_at: parse_when(&starts_at)?,
                ends_at: parse_when(&ends_at)?,
                stock_buckets: buckets,
            };
            let created = api.create_event(&sale).await?;
            if preheat {
                let id = created["id"].as_i64().unwrap_or_default();
                api.preheat(id, false).await?;
                print_json(&api.show_event(id).await?);
            } else {
                print_json(&created);
            }
        }
        EventCommand::Preheat { engine, id, force } => {
            let api = client(&engine)?;
            let bar = spinner(if force {
                "rebuilding from Postgres"
            } else {
                "preheating"
            });
            let answer = api.preheat(id, force).await;
            bar.finish_and_clear();
            print_json(&answer?);
        }
        EventCommand::List {
            engine,
            status,
            json,
        } => {
            let api = client(&engine)?;
            if !json {
                println!(
                    "{:>8}  {:<10} {:>10} {:>10} {:>8} {:>8}  {:<25} name",
                    "id", "lifecycle", "left", "total", "sold", "pending", "starts_at"
                );
            }
            let mut after = None;
            loop {
                let page = api.list_events(status.as_deref(), after, LIST_PAGE).await?;
                for event in &page.events {
                    if json {
                        println!("{event}");
                    } else {
                        println!("{}", table_row(event));
                    }
                }
                // A filtered page may hold fewer events than asked, even
                // none, with more to come: follow `next` until it ends.
                match page.next {
                    Some(next) if after.is_none_or(|a| next > a) => after = Some(next),
                    _ => break,
                }
            }
        }
        EventCommand::Show { engine, id } => {
            print_json(&client(&engine)?.show_event(id).await?);
        }
    }
    Ok(())
}

fn table_row(event: &Value) -> String {
    let number = |key: &str| event[key].as_i64().map_or("-".into(), |n| n.to_string());
    format!(
        "{:>8}  {:<10} {:>10} {:>10} {:>8} {:>8}  {:<25} {}",
        number("id"),
        event["lifecycle"].as_str().unwrap_or("-"),
        number("stock_left"),
        number("stock_total"),
        number("sold"),
        number("pending"),
        event["starts_at"].as_str().unwrap_or("-"),
        event["name"].as_str().unwrap_or("")
    )
}

pub async fn seed_wallets(
    engine: &EngineArgs,
    first: i64,
    count: i64,
    balance: i64,
) -> anyhow::Result<()> {
    let api = client(engine)?;
    let bar = ProgressBar::new(count.max(0) as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} wallets  {per_sec}  eta {eta}")
            .expect("progress template"),
    );
    let created = api
        .seed_wallets(first, count, balance, |done| bar.set_position(done as u64))
        .await;
    bar.finish_and_clear();
    let set = created?;
    println!(
        "{set} wallets set to {balance} (users {first}..={})",
        first + count - 1
    );
    Ok(())
}

pub async fn reconcile(engine: &EngineArgs) -> anyhow::Result<()> {
    let api = client(engine)?;
    let bar = spinner("reconciling");
    let report = api.reconcile().await;
    bar.finish_and_clear();
    print_json(&report?);
    Ok(())
}
