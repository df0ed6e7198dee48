//! Change events: one Redis pub/sub subscription per process, fanned out to
//! every WatchPartnerships stream.
//!
//! Every write publishes its event from inside the same Lua script that stores
//! the change, so a watcher on any replica sees every change made through any
//! replica. Pub/sub does not buffer for a subscriber that is away: whenever the
//! subscription (re)starts, and whenever a slow watcher falls behind, the
//! watcher gets a RESET event telling it to drop its whole cache.
//!
//! With the in-memory store the events come from the store's in-process
//! channel instead ([`EventHub::start_in_process`]): the hub is live at once,
//! sends one RESET when it starts, and a RESET whenever it or a watcher falls
//! behind, so watchers see the same sequence as with Redis.

use std::future::Future;
use std::time::Duration;

use as2_rpc::prost::Message as _;
use as2_rpc::routing::v1::{PartnershipEvent, PartnershipEventKind};
use futures::StreamExt as _;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::RoutingMetrics;

/// Events buffered per watcher before it is considered lagging.
const BROADCAST_CAPACITY: usize = 1_024;
/// Events buffered between the fan-out and one gRPC stream.
const WATCHER_BUFFER: usize = 64;
/// Longest wait between attempts to re-subscribe.
const MAX_RESUBSCRIBE_DELAY: Duration = Duration::from_secs(5);
/// Timeout of one attempt to open the pub/sub connection.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The RESET event.
pub fn reset_event() -> PartnershipEvent {
    PartnershipEvent {
        kind: PartnershipEventKind::Reset as i32,
        ..PartnershipEvent::default()
    }
}

/// Receives change events from Redis, or from an in-memory store, and hands
/// them to watchers.
#[derive(Clone)]
pub struct EventHub {
    sender: broadcast::Sender<PartnershipEvent>,
    live: watch::Receiver<bool>,
    metrics: RoutingMetrics,
}

impl EventHub {
    /// Starts the subscription task; it runs until `stop` is cancelled. `clients` are
    /// tried in turn, one after each lost or failed subscription: the server, or the
    /// nodes of a Redis Cluster (whose pub/sub reaches the subscribers of every node).
    pub fn start(
        clients: Vec<redis::Client>,
        channel: String,
        metrics: RoutingMetrics,
        stop: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        Self::spawn_feed(false, metrics, |sender, live, metrics| {
            subscribe_forever(clients, channel, sender, live, metrics, stop)
        })
    }

    /// Starts fanning out the events of an in-memory store (`changes`, from
    /// [`PartnershipStore::subscribe_in_process`]) until `stop` is cancelled
    /// or the store is gone. The hub is live at once and starts with a RESET,
    /// as the Redis hub does on every subscribe.
    ///
    /// [`PartnershipStore::subscribe_in_process`]: crate::store::PartnershipStore::subscribe_in_process
    pub fn start_in_process(
        changes: broadcast::Receiver<PartnershipEvent>,
        metrics: RoutingMetrics,
        stop: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        Self::spawn_feed(true, metrics, |sender, live, metrics| {
            metrics.event_subscription_up.set(1);
            tracing::info!("following in-process partnership events");
            let _ = sender.send(reset_event());
            forward_in_process(changes, sender, live, metrics, stop)
        })
    }

    /// The hub, and the task that `feed` makes to send it events and report
    /// whether it is live (`initially_live` until it says otherwise).
    fn spawn_feed<Feed>(
        initially_live: bool,
        metrics: RoutingMetrics,
        feed: impl FnOnce(
            broadcast::Sender<PartnershipEvent>,
            watch::Sender<bool>,
            RoutingMetrics,
        ) -> Feed,
    ) -> (Self, JoinHandle<()>)
    where
        Feed: Future<Output = ()> + Send + 'static,
    {
        let (sender, _) = broadcast::channel(BROADCAST_CAPACITY);
        let (live_sender, live) = watch::channel(initially_live);
        let task = tokio::spawn(feed(sender.clone(), live_sender, metrics.clone()));
        (
            Self {
                sender,
                live,
                metrics,
            },
            task,
        )
    }

    /// Waits until the Redis subscription is live, or `timeout` passes.
    /// Returns whether it is live.
    pub async fn wait_until_live(&self, timeout: Duration) -> bool {
        let mut live = self.live.clone();
        tokio::time::timeout(timeout, live.wait_for(|is_live| *is_live))
            .await
            .is_ok_and(|result| result.is_ok())
    }

    /// Every change event received from now on, for in-process followers (not
    /// counted as a watcher).
    pub fn subscribe_changes(&self) -> broadcast::Receiver<PartnershipEvent> {
        self.sender.subscribe()
    }

    /// A stream of events for one watcher, starting with RESET once the
    /// subscription is live. Ends when the watcher goes away or `stop` is
    /// cancelled.
    pub fn watch(&self, stop: CancellationToken) -> mpsc::Receiver<PartnershipEvent> {
        let mut events = self.sender.subscribe();
        let already_live = *self.live.borrow();
        let (sender, receiver) = mpsc::channel(WATCHER_BUFFER);
        let active_watchers = self.metrics.active_watchers.clone();
        active_watchers.inc();
        tokio::spawn(async move {
            let mut next = already_live.then(reset_event);
            loop {
                if let Some(event) = next.take() {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        sent = sender.send(event) => if sent.is_err() { break },
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = sender.closed() => break,
                    received = events.recv() => match received {
                        Ok(event) => next = Some(event),
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::warn!(missed, "partnership watcher fell behind, sending reset");
                            next = Some(reset_event());
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
            active_watchers.dec();
        });
        receiver
    }
}

async fn subscribe_forever(
    clients: Vec<redis::Client>,
    channel: String,
    sender: broadcast::Sender<PartnershipEvent>,
    live: watch::Sender<bool>,
    metrics: RoutingMetrics,
    stop: CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    let mut turn = 0_usize;
    while !stop.is_cancelled() {
        let Some(client) = clients.get(turn % clients.len().max(1)) else {
            tracing::warn!("no redis client to subscribe to partnership events with");
            return;
        };
        turn = turn.wrapping_add(1);
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribe(client, &channel)).await {
            Ok(Ok(pubsub)) => {
                delay = Duration::from_millis(100);
                live.send_replace(true);
                metrics.event_subscription_up.set(1);
                tracing::info!(%channel, "subscribed to partnership events");
                let _ = sender.send(reset_event());
                let mut messages = pubsub.into_on_message();
                loop {
                    let message = tokio::select! {
                        () = stop.cancelled() => break,
                        message = messages.next() => message,
                    };
                    let Some(message) = message else {
                        tracing::warn!(%channel, "partnership event subscription lost, resubscribing");
                        break;
                    };
                    metrics.events_received.inc();
                    match PartnershipEvent::decode(message.get_payload_bytes()) {
                        Ok(event) => {
                            let _ = sender.send(event);
                        }
                        Err(error) => {
                            tracing::warn!(%error, "undecodable partnership event, sending reset");
                            let _ = sender.send(reset_event());
                        }
                    }
                }
                live.send_replace(false);
                metrics.event_subscription_up.set(0);
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot subscribe to partnership events");
            }
            Err(_elapsed) => tracing::warn!("subscribing to partnership events timed out"),
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_RESUBSCRIBE_DELAY);
    }
}

async fn forward_in_process(
    mut changes: broadcast::Receiver<PartnershipEvent>,
    sender: broadcast::Sender<PartnershipEvent>,
    live: watch::Sender<bool>,
    metrics: RoutingMetrics,
    stop: CancellationToken,
) {
    loop {
        let received = tokio::select! {
            () = stop.cancelled() => break,
            received = changes.recv() => received,
        };
        match received {
            Ok(event) => {
                metrics.events_received.inc();
                let _ = sender.send(event);
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "partnership event hub fell behind, sending reset");
                let _ = sender.send(reset_event());
            }
            Err(broadcast::error::RecvError::Closed) => {
                tracing::info!("in-memory partnership store is gone, no more events");
                break;
            }
        }
    }
    live.send_replace(false);
    metrics.event_subscription_up.set(0);
}

async fn subscribe(
    client: &redis::Client,
    channel: &str,
) -> Result<redis::aio::PubSub, redis::RedisError> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

#[cfg(test)]
mod tests {
    use as2_common::prometheus_client::registry::Registry;
    use as2_common::redis::KeyNamespace;
    use as2_rpc::routing::v1::Partnership;

    use super::*;
    use crate::store::PartnershipStore;

    fn in_memory() -> (PartnershipStore, RoutingMetrics) {
        let store = PartnershipStore::in_memory(KeyNamespace::new("events").unwrap());
        let metrics = RoutingMetrics::register(&mut Registry::default());
        (store, metrics)
    }

    fn partnership(id: &str) -> Partnership {
        Partnership {
            id: id.to_owned(),
            as2_from: id.to_owned(),
            as2_to: "us".to_owned(),
            kafka_topic: "topic".to_owned(),
            ..Partnership::default()
        }
    }

    async fn next(events: &mut mpsc::Receiver<PartnershipEvent>) -> PartnershipEvent {
        tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("an event within 10 s")
            .expect("the watch has not ended")
    }

    #[tokio::test]
    async fn an_in_process_hub_is_live_at_once_and_watchers_start_with_reset() {
        let (store, metrics) = in_memory();
        let stop = CancellationToken::new();
        let (hub, task) = EventHub::start_in_process(
            store.subscribe_in_process().unwrap(),
            metrics.clone(),
            stop.clone(),
        );
        assert!(hub.wait_until_live(Duration::ZERO).await);
        assert_eq!(metrics.event_subscription_up.get(), 1);

        let mut watcher = hub.watch(stop.child_token());
        let mut changes = hub.subscribe_changes();
        assert_eq!(next(&mut watcher).await.kind(), PartnershipEventKind::Reset);

        store.create(partnership("a"), "test").await.unwrap();
        store.delete("a", 1, "test").await.unwrap();
        let created = next(&mut watcher).await;
        assert_eq!(
            (created.kind(), created.id.as_str()),
            (PartnershipEventKind::Upserted, "a")
        );
        let deleted = next(&mut watcher).await;
        assert_eq!(
            (deleted.kind(), deleted.id.as_str()),
            (PartnershipEventKind::Deleted, "a")
        );
        assert_eq!(
            changes.recv().await.unwrap().kind(),
            PartnershipEventKind::Upserted
        );
        assert_eq!(metrics.events_received.get(), 2);
        assert_eq!(metrics.active_watchers.get(), 1);

        stop.cancel();
        task.await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_secs(10), watcher.recv())
                .await
                .expect("the watch ends on stop")
                .is_none()
        );
        assert_eq!(metrics.event_subscription_up.get(), 0);
    }

    #[tokio::test]
    async fn a_hub_that_falls_behind_the_store_sends_reset() {
        let (store, metrics) = in_memory();
        let stop = CancellationToken::new();
        let (hub, task) = EventHub::start_in_process(
            store.subscribe_in_process().unwrap(),
            metrics,
            stop.clone(),
        );
        let mut watcher = hub.watch(stop.child_token());
        // On this single-threaded runtime the hub's task cannot run before the
        // first await that waits, so these changes overflow its buffer.
        let count = BROADCAST_CAPACITY + 10;
        for index in 0..count {
            store
                .create(partnership(&format!("p{index:05}")), "test")
                .await
                .unwrap();
        }
        assert_eq!(next(&mut watcher).await.kind(), PartnershipEventKind::Reset);
        assert_eq!(
            next(&mut watcher).await.kind(),
            PartnershipEventKind::Reset,
            "the missed changes are announced by a reset"
        );
        // The changes that were kept still arrive, the last one included.
        let last = format!("p{:05}", count - 1);
        loop {
            let event = next(&mut watcher).await;
            if event.id == last {
                break;
            }
        }
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn the_hub_stops_when_the_store_is_gone() {
        let (store, metrics) = in_memory();
        let (_hub, task) = EventHub::start_in_process(
            store.subscribe_in_process().unwrap(),
            metrics,
            CancellationToken::new(),
        );
        drop(store);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the hub's task ends without a store")
            .unwrap();
    }
}
