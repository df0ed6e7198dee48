//! The embedded Kafka cluster of the quick start.
//!
//! librdkafka's mock cluster: a Kafka-protocol broker inside this process, listening on
//! a loopback port, so the edge's producer and any Kafka client (`as2ctl consume`,
//! kcat, a Java consumer) talk to it as to a real cluster. It keeps records in memory
//! only, and only the last few MiB of each partition (librdkafka's mock log segments),
//! so it is for trying things out, never for documents that matter.

use anyhow::Context as _;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// Partitions of each topic created up front.
const PARTITIONS: i32 = 1;

/// A running embedded cluster; stops when dropped.
pub struct EmbeddedKafka {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl EmbeddedKafka {
    /// Starts a one-broker cluster with `topics` created.
    pub fn start(topics: &[&str]) -> anyhow::Result<Self> {
        let cluster = MockCluster::new(1).context("cannot start the embedded kafka cluster")?;
        for topic in topics {
            cluster
                .create_topic(topic, PARTITIONS, 1)
                .with_context(|| format!("cannot create topic {topic} in the embedded cluster"))?;
        }
        tracing::info!(
            bootstrap_servers = %cluster.bootstrap_servers(),
            "embedded kafka cluster started (in memory)"
        );
        Ok(Self { cluster })
    }

    /// The `host:port` list clients connect to.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }
}
