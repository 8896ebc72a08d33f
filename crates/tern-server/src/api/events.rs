//! The event stream (server-sent events with catch-up from the log).

use super::*;

#[derive(Deserialize)]
pub(super) struct EventsQuery {
    device: Option<String>,
    since: Option<i64>,
}

/// How many stored events one catch-up read returns.
pub(super) const CATCH_UP: u32 = 1000;

pub(super) struct Feed {
    hub: EventHub,
    live: broadcast::Receiver<Event>,
    pending: VecDeque<Event>,
    last: i64,
    device: Option<String>,
}

/// `GET /api/events`: stored events after `since` (or `Last-Event-ID`), then live ones.
pub(super) async fn events(
    State(state): State<AppState>,
    events: Result<Query<EventsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    // Subscribe before reading the store, so nothing published in between is missed; the
    // id check below drops what both deliver.
    let query = super::query(events)?;
    let live = state.hub.subscribe();
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let since = query.since.or(resume);
    let mut pending = VecDeque::new();
    if let Some(since) = since {
        pending.extend(state.store.events_after(since, query.device.as_deref(), CATCH_UP).await?);
    }
    let feed = Feed { hub: state.hub.clone(), live, pending, last: since.unwrap_or(0), device: query.device };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        loop {
            if let Some(event) = feed.pending.pop_front() {
                let wanted = feed.device.as_ref().is_none_or(|device| event.device.as_ref() == Some(device));
                if event.id > feed.last && wanted {
                    feed.last = event.id;
                    let data = serde_json::to_string(&event).unwrap_or_default();
                    let sse = SseEvent::default().id(event.id.to_string()).event(event.kind.clone()).data(data);
                    return Some((Ok(sse), feed));
                }
                continue;
            }
            match feed.live.recv().await {
                Ok(event) => feed.pending.push_back(event),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Fell behind the live buffer: catch up from the store.
                    match feed.hub.store().events_after(feed.last, feed.device.as_deref(), CATCH_UP).await {
                        Ok(events) => feed.pending.extend(events),
                        Err(_) => return None,
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
