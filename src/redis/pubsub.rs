//! "Stock came back for event N", told to every engine process over Redis
//! pub/sub, so each clears its local sold-out flag.

use fred::{clients::SubscriberClient, prelude::*};
use tokio::{sync::broadcast, task::JoinHandle};

use super::{reconnect_policy, Redis, RedisError};

/// A subscription to the stock-back channel (resubscribed after reconnects).
pub struct StockBack {
    subscriber: SubscriberClient,
    messages: broadcast::Receiver<fred::types::Message>,
    resubscribe: JoinHandle<()>,
}

impl Redis {
    /// Tells every engine process that an event has stock again.
    pub async fn publish_stock_back(&self, event_id: i64) -> Result<(), RedisError> {
        let _: i64 = self
            .client()
            .publish(self.keys.stock_back_channel(), event_id)
            .await?;
        Ok(())
    }

    /// Subscribes, on a connection of its own, to the stock-back channel.
    pub async fn subscribe_stock_back(&self) -> Result<StockBack, RedisError> {
        let subscriber = Builder::from_config(self.config.clone())
            .set_policy(reconnect_policy())
            .build_subscriber_client()?;
        let messages = subscriber.message_rx();
        subscriber.init().await?;
        subscriber.subscribe(self.keys.stock_back_channel()).await?;
        let resubscribe = subscriber.manage_subscriptions();
        Ok(StockBack {
            subscriber,
            messages,
            resubscribe,
        })
    }
}

impl StockBack {
    /// The next event id announced; `None` once the subscription is closed.
    pub async fn next(&mut self) -> Option<i64> {
        loop {
            match self.messages.recv().await {
                Ok(message) => {
                    if let Some(id) = message.value.as_i64() {
                        return Some(id);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    pub async fn close(self) {
        self.resubscribe.abort();
        let _ = self.subscriber.quit().await;
    }
}
