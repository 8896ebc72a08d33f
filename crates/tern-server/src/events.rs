//! The event stream: every event is stored first (so history survives restarts and a
//! client can resume with `Last-Event-ID`), then broadcast to live subscribers.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::auth::now_millis;
use crate::store::{Event, Store, StoreResult};

tokio::task_local! {
    /// The operator token an API call runs for; events published while it runs name it
    /// (the audit trail). Set by the API's authentication layer.
    pub static ACTOR: String;
}

/// How many events a slow live subscriber may fall behind before it must re-read the store.
const LIVE_BUFFER: usize = 1024;

/// Publishes events to the store and to live subscribers.
#[derive(Clone)]
pub struct EventHub {
    store: Arc<dyn Store>,
    live: broadcast::Sender<Event>,
    /// Held while storing and broadcasting, so live subscribers see ids in order.
    order: Arc<tokio::sync::Mutex<()>>,
}

impl EventHub {
    /// A hub writing to `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        EventHub { store, live: broadcast::channel(LIVE_BUFFER).0, order: Arc::default() }
    }

    /// Stores an event and sends it to live subscribers.
    pub async fn publish(&self, device: Option<&str>, kind: &str, data: serde_json::Value) -> StoreResult<Event> {
        let actor = ACTOR.try_with(String::clone).ok();
        let event =
            Event { id: 0, at: now_millis(), device: device.map(str::to_owned), kind: kind.to_owned(), data, actor };
        let _order = self.order.lock().await;
        let event = self.store.append_event(&event).await?;
        // No receiver is not an error: nobody is watching right now.
        let _ = self.live.send(event.clone());
        Ok(event)
    }

    /// Publishes an event that `write` stores together with the change it records, in one
    /// transaction (so there is never the change without its event, nor the event without
    /// the change). `write` gets the event to store and returns the result with the stored
    /// event, or `None` when it changed nothing (and stored no event).
    pub async fn publish_with<T, F, Fut>(
        &self,
        device: Option<&str>,
        kind: &str,
        data: serde_json::Value,
        write: F,
    ) -> StoreResult<T>
    where
        F: FnOnce(Event) -> Fut,
        Fut: std::future::Future<Output = StoreResult<(T, Option<Event>)>>,
    {
        let actor = ACTOR.try_with(String::clone).ok();
        let event =
            Event { id: 0, at: now_millis(), device: device.map(str::to_owned), kind: kind.to_owned(), data, actor };
        let _order = self.order.lock().await;
        let (result, stored) = write(event).await?;
        if let Some(event) = stored {
            let _ = self.live.send(event);
        }
        Ok(result)
    }

    /// A receiver of events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }

    /// The store events are kept in.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}
