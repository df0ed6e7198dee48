//! Change events: one Redis pub/sub subscription per process, fanned out to
//! every WatchPartnerships stream.
//!
//! Every write publishes its event from inside the same Lua script that stores
//! the change, so a watcher on any replica sees every change made through any
//! replica. Pub/sub does not buffer for a subscriber that is away: whenever the
//! subscription (re)starts, and whenever a slow watcher falls behind, the
//! watcher gets a RESET event telling it to drop its whole cache.

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

/// Receives change events from Redis and hands them to watchers.
#[derive(Clone)]
pub struct EventHub {
    sender: broadcast::Sender<PartnershipEvent>,
    live: watch::Receiver<bool>,
    metrics: RoutingMetrics,
}

impl EventHub {
    /// Starts the subscription task; it runs until `stop` is cancelled.
    pub fn start(
        client: redis::Client,
        channel: String,
        metrics: RoutingMetrics,
        stop: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let (sender, _) = broadcast::channel(BROADCAST_CAPACITY);
        let (live_sender, live) = watch::channel(false);
        let task = tokio::spawn(subscribe_forever(
            client,
            channel,
            sender.clone(),
            live_sender,
            metrics.clone(),
            stop,
        ));
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
    client: redis::Client,
    channel: String,
    sender: broadcast::Sender<PartnershipEvent>,
    live: watch::Sender<bool>,
    metrics: RoutingMetrics,
    stop: CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    while !stop.is_cancelled() {
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribe(&client, &channel)).await {
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

async fn subscribe(
    client: &redis::Client,
    channel: &str,
) -> Result<redis::aio::PubSub, redis::RedisError> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}
