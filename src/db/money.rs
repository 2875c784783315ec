//! `payments` and the wallet ledger's `purchase` rows (`wallet_debits` is a
//! view of them): the immutable money rows of confirmed orders (append-only
//! by trigger; a correction is a new row).

use sqlx::PgConnection;
use uuid::Uuid;

use super::DbError;

/// A debit applied by a writer batch, with what it left in the wallet.
pub struct Debit {
    pub order_no: Uuid,
    pub event_id: i64,
    pub user_id: i64,
    pub amount: i64,
    pub balance_after: i64,
    pub version_after: i64,
}

/// One payment row and one `purchase` wallet ledger row (the debit, with
/// the balance and version it left) per confirmed order: two statements for
/// the whole batch.
pub async fn insert(conn: &mut PgConnection, debits: &[Debit]) -> Result<(), DbError> {
    if debits.is_empty() {
        return Ok(());
    }
    let order_nos: Vec<Uuid> = debits.iter().map(|d| d.order_no).collect();
    let users: Vec<i64> = debits.iter().map(|d| d.user_id).collect();
    let amounts: Vec<i64> = debits.iter().map(|d| d.amount).collect();
    sqlx::query(
        "INSERT INTO payments (order_no, event_id, user_id, amount)
         SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::int8[], $4::int8[])",
    )
    .bind(&order_nos)
    .bind(debits.iter().map(|d| d.event_id).collect::<Vec<_>>())
    .bind(&users)
    .bind(&amounts)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO wallet_ledger (user_id, delta, kind, reason, order_no, balance_after, version_after)
         SELECT u, -a, 'purchase', 'purchase', o, b, v
         FROM UNNEST($1::int8[], $2::int8[], $3::uuid[], $4::int8[], $5::int8[]) AS t(u, a, o, b, v)",
    )
    .bind(&users)
    .bind(&amounts)
    .bind(&order_nos)
    .bind(debits.iter().map(|d| d.balance_after).collect::<Vec<_>>())
    .bind(debits.iter().map(|d| d.version_after).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Marks an order's payment refunded (the one change its row may take);
/// false when it was not captured.
pub async fn mark_payment_refunded(
    db: impl sqlx::PgExecutor<'_>,
    order_no: Uuid,
) -> Result<bool, DbError> {
    Ok(sqlx::query(
        "UPDATE payments SET state = 'refunded' WHERE order_no = $1 AND state = 'captured'",
    )
    .bind(order_no)
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}
