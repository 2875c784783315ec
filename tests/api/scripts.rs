//! The Lua scripts' own guarantees, called directly against Redis.

use seckill::redis::{PurchaseOutcome, SaleParams};
use uuid::Uuid;

use crate::helpers::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchase_is_idempotent_per_order_no_and_release_happens_once() {
    let app = spawn_app().await;
    let redis = &app.redis;
    let now = chrono::Utc::now().timestamp_millis();
    let event = 4242;
    let sale = SaleParams {
        price: 150,
        per_user_limit: 2,
        starts_ms: now - 1_000,
        ends_ms: now + 60_000,
        stock_total: 3,
        paused: false,
    };
    assert!(redis.preheat(event, sale).await.unwrap());
    assert!(
        !redis.preheat(event, sale).await.unwrap(),
        "second preheat is a no-op"
    );

    let order = Uuid::now_v7();
    let first = redis.purchase(event, 7, 2, order).await.unwrap();
    let PurchaseOutcome::Accepted {
        amount: 300,
        replay: false,
        accepted_ms,
    } = first
    else {
        panic!("{first:?}")
    };
    // The client re-sends after a dropped connection: same acceptance, no second take.
    let again = redis.purchase(event, 7, 2, order).await.unwrap();
    assert_eq!(
        again,
        PurchaseOutcome::Accepted {
            amount: 300,
            accepted_ms,
            replay: true,
        }
    );
    assert_eq!(redis.stock_left(event).await.unwrap(), Some(1));
    assert!(matches!(
        redis.purchase(event, 7, 1, Uuid::now_v7()).await.unwrap(),
        PurchaseOutcome::LimitExceeded { .. }
    ));
    assert_eq!(
        redis.purchase(event, 8, 2, Uuid::now_v7()).await.unwrap(),
        PurchaseOutcome::SoldOut { stock_left: 1 }
    );

    assert_eq!(redis.release(event, &[order]).await.unwrap(), 2);
    assert_eq!(
        redis.release(event, &[order]).await.unwrap(),
        0,
        "a second release returns nothing"
    );
    assert_eq!(redis.stock_left(event).await.unwrap(), Some(3));
    assert!(redis.buyers(event).await.unwrap().is_empty());
    assert_eq!(
        redis.buyer_orders(event, 7).await.unwrap(),
        vec![(order, true)],
        "the failed order is kept, marked"
    );
    // A re-sent purchase of the released order does not take stock again.
    assert!(matches!(
        redis.purchase(event, 7, 2, order).await.unwrap(),
        PurchaseOutcome::Accepted { replay: true, .. }
    ));
    assert_eq!(redis.stock_left(event).await.unwrap(), Some(3));
    app.cleanup().await;
}
