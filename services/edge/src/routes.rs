//! Partnership lookup with a local cache.
//!
//! Every inbound message needs its partnership, so the edge keeps the partnerships it has
//! resolved in memory. A cached entry is dropped when the routing service's watch stream
//! reports a change to it (every entry on a `RESET` event, or when the stream breaks),
//! and after a short TTL in any case, as a backstop should an event be lost.
//!
//! A lookup that races with an invalidation does not put stale data back into the
//! cache: every invalidation bumps a generation counter, and a lookup only stores its
//! answer when the generation is the one it started with.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use as2_rpc::routing::v1::routing_service_client::RoutingServiceClient;
use as2_rpc::routing::v1::{Partnership, PartnershipEventKind};
use as2_rpc::tonic::Status;
use futures::TryStreamExt as _;
use openssl::x509::X509;
use tokio_util::sync::CancellationToken;

use crate::clients::PartnershipRegistry;
use crate::metrics::EdgeMetrics;

/// The pair an inbound message is routed by: (AS2-From, AS2-To).
type Pair = (String, String);

struct CachedRoute {
    route: Arc<Route>,
    fetched_at: Instant,
}

/// A partnership prepared for the inbound path: its certificates parsed once.
#[derive(Debug)]
pub struct Route {
    /// The partnership as the routing service returned it.
    pub partnership: Partnership,
    /// The partner's certificates that verify its signatures.
    pub signing_certificates: Vec<X509>,
}

impl Route {
    /// Days this partnership's messages are archived (its own retention, else
    /// `default_days`); `None` when it turned the archive off or no retention is set.
    pub fn archive_retention_days(&self, default_days: u32) -> Option<u32> {
        as2_partner::archive::retention_days(&self.partnership, default_days)
    }

    /// The partnership's own limit on message and document size, when it has one.
    pub fn max_message_bytes(&self) -> Option<u64> {
        self.partnership
            .security_policy
            .as_ref()
            .and_then(|policy| policy.max_message_bytes)
            .filter(|limit| *limit > 0)
    }

    /// Parses the partnership's signing certificates
    /// ([`as2_partner::certificates::signing_certificates`]: one that does not parse is
    /// skipped with a warning).
    pub fn new(partnership: Partnership) -> Self {
        let signing_certificates = as2_partner::certificates::signing_certificates(&partnership);
        Self {
            partnership,
            signing_certificates,
        }
    }
}

/// Why a partnership could not be looked up.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The routing service is unreachable or failed; the message should be retried.
    #[error("routing service unavailable: {0}")]
    Unavailable(#[source] Box<Status>),
}

/// Resolves (AS2-From, AS2-To) pairs to partnerships through the routing service.
pub struct RouteCache {
    registry: Arc<dyn PartnershipRegistry>,
    entries: RwLock<HashMap<Pair, CachedRoute>>,
    generation: AtomicU64,
    ttl: Duration,
    metrics: Arc<EdgeMetrics>,
}

impl RouteCache {
    /// A cache in front of the routing service at `routing_url` (connected lazily, with
    /// `security`),
    /// counting hits and misses in `metrics`.
    pub fn new(
        routing_url: &str,
        security: &as2_common::grpc::GrpcSecurity,
        ttl: Duration,
        metrics: Arc<EdgeMetrics>,
    ) -> Result<Arc<Self>, as2_common::grpc::ChannelError> {
        let channel = as2_common::grpc::channel(
            "routing",
            routing_url,
            as2_common::grpc::ChannelSettings::default(),
            security,
        )?;
        Ok(Self::with_registry(
            Arc::new(RoutingServiceClient::new(channel)),
            ttl,
            metrics,
        ))
    }

    /// A cache in front of `registry` (the routing service or a stand-in for it),
    /// counting hits and misses in `metrics`.
    pub fn with_registry(
        registry: Arc<dyn PartnershipRegistry>,
        ttl: Duration,
        metrics: Arc<EdgeMetrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            registry,
            entries: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            ttl,
            metrics,
        })
    }

    /// The partnership for `(as2_from, as2_to)`, or `None` when there is none.
    pub async fn resolve(
        &self,
        as2_from: &str,
        as2_to: &str,
    ) -> Result<Option<Arc<Route>>, RouteError> {
        let pair = (as2_from.to_owned(), as2_to.to_owned());
        if let Some(route) = self.cached(&pair) {
            self.metrics.route_cache_lookup(true);
            return Ok(Some(route));
        }
        self.metrics.route_cache_lookup(false);
        let generation = self.generation.load(Ordering::SeqCst);
        let route = self
            .registry
            .resolve(&pair.0, &pair.1)
            .await
            .map_err(|status| RouteError::Unavailable(Box::new(status)))?
            .map(|partnership| Arc::new(Route::new(partnership)));
        if let Some(route) = &route {
            self.store(pair, route.clone(), generation);
        }
        Ok(route)
    }

    fn cached(&self, pair: &Pair) -> Option<Arc<Route>> {
        let entries = self
            .entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let cached = entries.get(pair)?;
        (cached.fetched_at.elapsed() < self.ttl).then(|| cached.route.clone())
    }

    fn store(&self, pair: Pair, route: Arc<Route>, generation: u64) {
        let mut entries = self
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.generation.load(Ordering::SeqCst) == generation {
            entries.insert(
                pair,
                CachedRoute {
                    route,
                    fetched_at: Instant::now(),
                },
            );
        }
    }

    /// Drops every cached partnership.
    pub fn clear(&self) {
        let mut entries = self
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::SeqCst);
        entries.clear();
    }

    fn forget(&self, id: &str, pairs: &[Pair]) {
        let mut entries = self
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::SeqCst);
        for pair in pairs {
            entries.remove(pair);
        }
        entries.retain(|_, cached| cached.route.partnership.id != id);
    }

    /// Number of cached partnerships (for tests and metrics).
    pub fn len(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Follows the routing service's change stream until `shutdown` is cancelled,
    /// reconnecting with a growing delay when the stream breaks. While no stream is
    /// established the cache is kept empty, so lookups go to the routing service.
    pub async fn follow_changes(self: Arc<Self>, shutdown: CancellationToken) {
        let mut retry_delay = Duration::from_millis(100);
        loop {
            let outcome = tokio::select! {
                () = shutdown.cancelled() => return,
                outcome = self.watch_once(&mut retry_delay) => outcome,
            };
            self.clear();
            if let Err(status) = outcome {
                tracing::warn!(code = ?status.code(), message = status.message(), "partnership watch stream broke");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(retry_delay) => {}
            }
            retry_delay = (retry_delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn watch_once(&self, retry_delay: &mut Duration) -> Result<(), Status> {
        let mut stream = self.registry.watch().await?;
        while let Some(event) = stream.try_next().await? {
            *retry_delay = Duration::from_millis(100);
            match event.kind() {
                PartnershipEventKind::Reset | PartnershipEventKind::Unspecified => self.clear(),
                PartnershipEventKind::Upserted | PartnershipEventKind::Deleted => {
                    let mut pairs = vec![(event.as2_from.clone(), event.as2_to.clone())];
                    if !event.previous_as2_from.is_empty() || !event.previous_as2_to.is_empty() {
                        pairs.push((
                            event.previous_as2_from.clone(),
                            event.previous_as2_to.clone(),
                        ));
                    }
                    self.forget(&event.id, &pairs);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use as2_rpc::routing::v1::PartnershipEvent;
    use futures::StreamExt as _;
    use futures::future::BoxFuture;
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::clients::PartnershipEvents;

    /// A routing service with two partnerships and one scripted change stream.
    struct FakeRegistry {
        lookups: AtomicUsize,
        events: Mutex<Option<Vec<PartnershipEvent>>>,
    }

    impl PartnershipRegistry for FakeRegistry {
        fn resolve(
            &self,
            as2_from: &str,
            as2_to: &str,
        ) -> BoxFuture<'_, Result<Option<Partnership>, Status>> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            let partnership = (as2_to == "us").then(|| Partnership {
                id: format!("p-{as2_from}"),
                as2_from: as2_from.to_owned(),
                as2_to: as2_to.to_owned(),
                ..Partnership::default()
            });
            Box::pin(async move { Ok(partnership) })
        }

        fn watch(&self) -> BoxFuture<'_, Result<PartnershipEvents, Status>> {
            let events = self
                .events
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
                .unwrap_or_default();
            // The scripted events, then a stream that stays open.
            let stream = futures::stream::iter(events.into_iter().map(Ok))
                .chain(futures::stream::pending())
                .boxed();
            Box::pin(async move { Ok(stream) })
        }
    }

    fn cache(events: Vec<PartnershipEvent>) -> (Arc<RouteCache>, Arc<FakeRegistry>) {
        let registry = Arc::new(FakeRegistry {
            lookups: AtomicUsize::new(0),
            events: Mutex::new(Some(events)),
        });
        let metrics = Arc::new(EdgeMetrics::register(&mut Registry::default()));
        let cache = RouteCache::with_registry(registry.clone(), Duration::from_secs(600), metrics);
        (cache, registry)
    }

    #[tokio::test]
    async fn lookups_are_cached_and_unknown_pairs_are_not() {
        let (cache, registry) = cache(Vec::new());
        let first = cache.resolve("a", "us").await.expect("resolved");
        let again = cache.resolve("a", "us").await.expect("resolved");
        assert_eq!(
            first.map(|route| route.partnership.id.clone()).as_deref(),
            Some("p-a")
        );
        assert_eq!(
            again.map(|route| route.partnership.id.clone()).as_deref(),
            Some("p-a")
        );
        assert_eq!(registry.lookups.load(Ordering::SeqCst), 1);
        assert!(
            cache
                .resolve("a", "them")
                .await
                .expect("answered")
                .is_none()
        );
        assert!(
            cache
                .resolve("a", "them")
                .await
                .expect("answered")
                .is_none()
        );
        assert_eq!(registry.lookups.load(Ordering::SeqCst), 3);
        assert_eq!(cache.len(), 1);
    }

    #[tokio::test]
    async fn a_change_event_drops_only_the_changed_partnership() {
        let event = PartnershipEvent {
            kind: PartnershipEventKind::Upserted as i32,
            id: "p-a".to_owned(),
            as2_from: "a".to_owned(),
            as2_to: "us".to_owned(),
            ..PartnershipEvent::default()
        };
        let (cache, registry) = cache(vec![event]);
        cache.resolve("a", "us").await.expect("resolved");
        cache.resolve("b", "us").await.expect("resolved");
        assert_eq!(cache.len(), 2);

        let shutdown = CancellationToken::new();
        let watch = tokio::spawn(cache.clone().follow_changes(shutdown.clone()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while cache.len() != 1 {
            assert!(Instant::now() < deadline, "the event was not applied");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cache.resolve("b", "us").await.expect("resolved");
        assert_eq!(
            registry.lookups.load(Ordering::SeqCst),
            2,
            "b is still cached"
        );
        cache.resolve("a", "us").await.expect("resolved");
        assert_eq!(
            registry.lookups.load(Ordering::SeqCst),
            3,
            "a was asked again"
        );
        shutdown.cancel();
        watch.await.expect("the watch task ends");
    }
}
