//! The event stream: every event is stored first (so history survives restarts and a
//! client can resume with `Last-Event-ID`), then broadcast to live subscribers.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::auth::now_millis;
use crate::store::{Event, Store, StoreResult, Writes};

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

    /// Stores an event and sends it to live subscribers (an event that records no change
    /// of its own, such as a device connecting; a change and its event go in one
    /// [`Change`]).
    pub async fn publish(&self, device: Option<&str>, kind: &str, data: serde_json::Value) -> StoreResult<Event> {
        let mut change = self.begin().await?;
        let event = change.publish(device, kind, data).await?;
        change.commit().await?;
        Ok(event)
    }

    /// Opens a change: writes to the store and the events that record them, stored in one
    /// transaction when it commits (never a change without its event, nor an event
    /// without its change), and sent to live subscribers after. Changes are made one at a
    /// time; do not wait for anything slow while holding one.
    pub async fn begin(&self) -> StoreResult<Change<'_>> {
        let order = self.order.lock().await;
        let writes = self.store.begin().await?;
        Ok(Change { hub: self, _order: order, writes, events: Vec::new() })
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

/// Writes and their events in one transaction (see [`EventHub::begin`]); the writes are
/// [`Writes`]' methods, called on the change itself. Dropped without
/// [`Change::commit`], it stores nothing and sends nothing.
pub struct Change<'h> {
    hub: &'h EventHub,
    /// Held until the events are sent, so live subscribers see ids in order.
    _order: tokio::sync::MutexGuard<'h, ()>,
    writes: Box<dyn Writes>,
    events: Vec<Event>,
}

impl Change<'_> {
    /// Stores an event in this change (named after the operator whose API call runs, if
    /// one does); it is sent to live subscribers once the change commits.
    pub async fn publish(&mut self, device: Option<&str>, kind: &str, data: serde_json::Value) -> StoreResult<Event> {
        let actor = ACTOR.try_with(String::clone).ok();
        let event =
            Event { id: 0, at: now_millis(), device: device.map(str::to_owned), kind: kind.to_owned(), data, actor };
        let event = self.writes.append_event(&event).await?;
        self.events.push(event.clone());
        Ok(event)
    }

    /// Commits the writes and their events, then sends the events to live subscribers.
    pub async fn commit(self) -> StoreResult<()> {
        let Change { hub, _order, writes, events } = self;
        writes.commit().await?;
        for event in events {
            // No receiver is not an error: nobody is watching right now.
            let _ = hub.live.send(event);
        }
        Ok(())
    }
}

impl std::ops::Deref for Change<'_> {
    type Target = dyn Writes;

    fn deref(&self) -> &Self::Target {
        &*self.writes
    }
}

impl std::ops::DerefMut for Change<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut *self.writes
    }
}
