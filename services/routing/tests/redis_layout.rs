//! The partnership registry's Redis key layout: its scripts on a real Redis Cluster
//! (with the audit stream), and the upgrade of a deployment whose keys were written
//! before the hash tags.

#![allow(clippy::unwrap_used)]

mod support;

use as2_common::config::RedisConfig;
use as2_common::redis::{KeyGroup, layout};
use as2_routing::store::{PartnershipStore, layout_migration};
use support::{Replica, create, delete, get, list_page, partnership, resolve, update};

async fn store(url: &str, prefix: &str) -> (as2_common::redis::Redis, PartnershipStore) {
    let redis = as2_common::redis::connect(&RedisConfig::new(url, prefix))
        .await
        .unwrap();
    let store = PartnershipStore::new(redis.connection.clone(), redis.namespace.clone());
    (redis, store)
}

#[tokio::test]
async fn create_update_and_delete_run_with_their_audit_entries_on_a_redis_cluster() {
    let cluster = as2_testkit::RedisCluster::start();
    let replica = Replica::start(&cluster.url(), "as2").await;
    let mut client = replica.client().await;
    let acme = create(&mut client, partnership("acme", "us", "acme.in"))
        .await
        .unwrap();
    let globex = create(&mut client, partnership("globex", "us", "globex.in"))
        .await
        .unwrap();
    let mut moved = acme.clone();
    moved.as2_from = "acme-2".to_owned();
    let moved = update(&mut client, moved, acme.revision).await.unwrap();
    assert_eq!(moved.revision, 2);
    assert_eq!(
        resolve(&mut client, "acme-2", "us").await.unwrap().id,
        acme.id
    );
    assert!(resolve(&mut client, "acme", "us").await.is_err());
    delete(&mut client, &globex.id, globex.revision)
        .await
        .unwrap();
    assert_eq!(list_page(&mut client).await.partnerships.len(), 1);

    let (redis, store) = store(&cluster.url(), "as2").await;
    assert!(redis.is_cluster());
    let audit = store.audit_log(10).await.unwrap();
    let actions: Vec<(&str, &str, u64)> = audit
        .iter()
        .map(|entry| {
            (
                entry.action.as_str(),
                entry.partnership.as_str(),
                entry.revision,
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("delete", globex.id.as_str(), 1),
            ("update", acme.id.as_str(), 2),
            ("create", globex.id.as_str(), 1),
            ("create", acme.id.as_str(), 1),
        ]
    );
    assert!(
        store
            .audit_key()
            .starts_with(&KeyGroup::Partnerships.key(&redis.namespace, ""))
    );
    replica.stop().await;
}

#[tokio::test]
async fn partnerships_written_in_the_old_layout_are_found_after_the_upgrade() {
    let redis_server = as2_testkit::RedisServer::start();
    let url = redis_server.url();

    // State as a version before hash tags left it: written through the service, then
    // put back under the old names (the only thing that changed).
    let before = Replica::start(&url, "as2").await;
    let mut client = before.client().await;
    let mut created = Vec::new();
    for index in 0..5 {
        let from = format!("partner-{index}");
        created.push(
            create(&mut client, partnership(&from, "us", "in"))
                .await
                .unwrap(),
        );
    }
    let mut renamed = created[0].clone();
    renamed.kafka_topic = "renamed.in".to_owned();
    let renamed = update(&mut client, renamed, 1).await.unwrap();
    delete(&mut client, &created[4].id, 1).await.unwrap();
    before.stop().await;
    let (redis, store) = store(&url, "as2").await;
    let moved_back = layout::rename_to_legacy_layout(&redis, KeyGroup::Partnerships)
        .await
        .unwrap();
    assert_eq!(
        moved_back,
        4 + 3,
        "four partnerships, the pair index, ids, audit"
    );
    let mut connection = redis.connection.clone();
    let old_keys: u64 = redis::cmd("EXISTS")
        .arg(layout_migration(&redis.namespace).old_fixed_keys())
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(old_keys, 3);
    assert!(
        store.get(&created[1].id).await.is_err(),
        "not under the new name"
    );

    // Three replicas of the new version start at once.
    let (first, second, third) = tokio::join!(
        Replica::start(&url, "as2"),
        Replica::start(&url, "as2"),
        Replica::start(&url, "as2"),
    );
    for replica in [&first, &second, &third] {
        let mut client = replica.client().await;
        assert_eq!(
            get(&mut client, &renamed.id).await.unwrap().kafka_topic,
            "renamed.in"
        );
        for partnership in &created[1..4] {
            let found = resolve(&mut client, &partnership.as2_from, "us")
                .await
                .unwrap();
            assert_eq!(found.id, partnership.id);
        }
        assert!(get(&mut client, &created[4].id).await.is_err());
        assert_eq!(list_page(&mut client).await.partnerships.len(), 4);
    }
    let audit = store.audit_log(100).await.unwrap();
    assert_eq!(audit.len(), 7, "five creates, an update and a delete");
    let old_keys: u64 = redis::cmd("EXISTS")
        .arg(layout_migration(&redis.namespace).old_fixed_keys())
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(old_keys, 0);
    let version: u32 = redis::cmd("GET")
        .arg(KeyGroup::Partnerships.key(&redis.namespace, "-layout"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(version, layout::LAYOUT_VERSION);

    // Started again, nothing is left to move.
    let again = layout_migration(&redis.namespace)
        .run(&redis)
        .await
        .unwrap();
    assert!(again.up_to_date, "{again:?}");
    for replica in [first, second, third] {
        replica.stop().await;
    }
}

#[tokio::test]
async fn a_record_under_both_names_keeps_the_higher_revision_and_indexes_are_merged() {
    let redis_server = as2_testkit::RedisServer::start();
    let (redis, _store) = store(&redis_server.url(), "as2").await;
    let mut connection = redis.connection.clone();
    let commands = [
        // Under the new names: revision 3 of a, the index with a.
        vec![
            "HSET",
            "as2:{partnership}:a",
            "doc",
            "new-a",
            "revision",
            "3",
        ],
        vec!["HSET", "as2:{partnership}-pairs", "a\nus", "a"],
        vec!["ZADD", "as2:{partnership}-ids", "0", "a"],
        vec!["XADD", "as2:{partnership}-audit", "*", "action", "update"],
        // Under the old names: revision 2 of a, revision 5 of b, the index with b.
        vec!["HSET", "as2:partnership:a", "doc", "old-a", "revision", "2"],
        vec!["HSET", "as2:partnership:b", "doc", "old-b", "revision", "5"],
        vec!["HSET", "as2:partnership-pairs", "b\nus", "b"],
        vec!["ZADD", "as2:partnership-ids", "0", "b"],
        vec!["XADD", "as2:partnership-audit", "1-1", "action", "create"],
    ];
    for command in commands {
        let mut cmd = redis::cmd(command[0]);
        for arg in &command[1..] {
            cmd.arg(*arg);
        }
        let _: redis::Value = cmd.query_async(&mut connection).await.unwrap();
    }
    let report = layout_migration(&redis.namespace)
        .run(&redis)
        .await
        .unwrap();
    assert_eq!(report.moved, 1, "b");
    assert_eq!(report.merged, 3, "pairs, ids, audit");
    assert_eq!(report.dropped, 1, "the older a");
    let doc = |key: &'static str| {
        let mut connection = redis.connection.clone();
        async move {
            let doc: String = redis::cmd("HGET")
                .arg(key)
                .arg("doc")
                .query_async(&mut connection)
                .await
                .unwrap();
            doc
        }
    };
    assert_eq!(doc("as2:{partnership}:a").await, "new-a");
    assert_eq!(doc("as2:{partnership}:b").await, "old-b");
    let pairs: u64 = redis::cmd("HLEN")
        .arg("as2:{partnership}-pairs")
        .query_async(&mut connection)
        .await
        .unwrap();
    let ids: u64 = redis::cmd("ZCARD")
        .arg("as2:{partnership}-ids")
        .query_async(&mut connection)
        .await
        .unwrap();
    let audit: u64 = redis::cmd("XLEN")
        .arg("as2:{partnership}-audit")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!((pairs, ids, audit), (2, 2, 2));
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("as2:partnership*")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}
