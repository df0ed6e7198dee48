//! One suite, run against both backends: the local filesystem (a temporary directory) and
//! a real S3-protocol server (s3s-fs on a loopback port, started by the test kit).

use std::time::Duration;

use as2_store::{
    DEFAULT_PART_SIZE, ObjectAttributes, ObjectInfo, S3Config, Secret, Store, StoreConfig,
    StoreError,
};
use as2_testkit::S3Server;
use bytes::Bytes;
use futures::TryStreamExt;

/// The store under test and what keeps its backend alive.
struct TestStore {
    store: Store,
    /// The directory the objects are in, for the local filesystem.
    local_root: Option<tempfile::TempDir>,
    /// The server, for S3.
    s3: Option<S3Server>,
}

fn local_store() -> TestStore {
    let root = tempfile::tempdir().expect("a temporary directory");
    let config = StoreConfig::local(root.path());
    TestStore {
        store: Store::open(&config).expect("the local store opens"),
        local_root: Some(root),
        s3: None,
    }
}

fn s3_config(server: &S3Server, prefix: &str) -> StoreConfig {
    let url = format!("s3://{}/{prefix}", server.bucket());
    let mut config = StoreConfig::from_url(&url).expect("the s3 URL parses");
    let as2_store::Backend::S3(s3) = &mut config.backend else {
        panic!("an s3 URL gives an s3 backend");
    };
    *s3 = S3Config {
        endpoint: Some(server.endpoint()),
        region: Some(server.region().to_owned()),
        access_key_id: Some(Secret::new(server.access_key_id())),
        secret_access_key: Some(Secret::new(server.secret_access_key())),
        allow_http: true,
        ..s3.clone()
    };
    config
}

fn s3_store() -> TestStore {
    let server = S3Server::start();
    let config = s3_config(&server, "archive/test-run");
    TestStore {
        store: Store::open(&config).expect("the s3 store opens"),
        local_root: None,
        s3: Some(server),
    }
}

/// Deterministic bytes that do not repeat with any period a part size could hide.
fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

fn sha256(data: &[u8]) -> [u8; 32] {
    openssl::sha::sha256(data)
}

async fn list_keys(store: &Store, prefix: &str) -> Vec<String> {
    let listed: Vec<ObjectInfo> = store
        .list(prefix)
        .try_collect()
        .await
        .expect("listing works");
    let mut keys: Vec<String> = listed.into_iter().map(|info| info.key).collect();
    keys.sort();
    keys
}

/// A 64 MiB object written in uneven chunks (copied and zero-copy writes, some bigger
/// than a part) becomes one object with the same SHA-256, sent as a multipart upload,
/// and the upload never holds more than its documented bound.
async fn streamed_upload_of_64_mib(test: TestStore) {
    const SIZE: usize = 64 * 1024 * 1024;
    let store = &test.store;
    let data = Bytes::from(pseudo_random_bytes(SIZE, 0x5eed));
    let mut upload = store
        .upload("inbound/big.edi", ObjectAttributes::default())
        .expect("upload starts");
    let bound = upload.memory_bound();
    assert_eq!(bound, store.upload_memory_bound());
    let chunk_sizes = [
        1,
        7,
        4096,
        65_537,
        1_000_003,
        3 * 1024 * 1024 + 5,
        9 * 1024 * 1024 + 1,
        333,
    ];
    let mut offset = 0;
    let mut turn = 0;
    while offset < SIZE {
        let len = chunk_sizes[turn % chunk_sizes.len()].min(SIZE - offset);
        let chunk = data.slice(offset..offset + len);
        if turn % 2 == 0 {
            upload.write(&chunk).await.expect("write");
        } else {
            upload.write_bytes(chunk).await.expect("write_bytes");
        }
        assert!(
            upload.buffered_bytes() <= bound,
            "{} bytes buffered, over the bound of {bound}",
            upload.buffered_bytes()
        );
        offset += len;
        turn += 1;
    }
    assert_eq!(upload.bytes_written(), SIZE as u64);
    let peak = upload.peak_buffered_bytes();
    assert!(peak <= bound, "peak {peak} over the bound {bound}");
    assert!(
        peak > DEFAULT_PART_SIZE,
        "parts were sent while the next one filled (peak {peak})"
    );
    let stored = upload.complete().await.expect("complete");
    assert_eq!(stored.size, SIZE as u64);
    assert_eq!(
        stored.parts,
        SIZE / DEFAULT_PART_SIZE,
        "sent as a multipart upload"
    );
    if test.s3.is_some() {
        // An S3 multipart object's entity tag ends in its part count.
        let e_tag = stored.e_tag.as_deref().unwrap_or_default();
        assert!(e_tag.trim_matches('"').ends_with("-8"), "e_tag {e_tag}");
    }

    assert_eq!(
        store.head("inbound/big.edi").await.expect("head").size,
        SIZE as u64
    );
    let mut hasher = openssl::sha::Sha256::new();
    let mut read = 0;
    let mut body = store
        .get("inbound/big.edi")
        .await
        .expect("get")
        .into_stream();
    while let Some(chunk) = body.try_next().await.expect("read a chunk") {
        read += chunk.len();
        hasher.update(&chunk);
    }
    assert_eq!(read, SIZE);
    assert_eq!(
        hasher.finish(),
        sha256(&data),
        "the stored bytes are the written ones"
    );
    assert_eq!(list_keys(store, "inbound").await, ["inbound/big.edi"]);
}

/// An object below one part goes as a single PUT, through an upload or `put`.
async fn small_object_is_a_single_put(test: TestStore) {
    let store = &test.store;
    let mut upload = store
        .upload("small/one", ObjectAttributes::default())
        .expect("upload starts");
    upload.write(b"hello ").await.expect("write");
    upload
        .write_bytes(Bytes::from_static(b"world"))
        .await
        .expect("write");
    let stored = upload.complete().await.expect("complete");
    assert_eq!(stored.parts, 0, "no multipart upload for a small object");
    assert_eq!(stored.size, 11);
    let body = store.get("small/one").await.expect("get");
    assert_eq!(body.info().size, 11);
    assert_eq!(body.bytes().await.expect("read"), "hello world");

    let put = store
        .put("small/two", Bytes::from_static(b"put body"))
        .await
        .expect("put");
    assert_eq!((put.size, put.parts), (8, 0));
    let body = store.get("small/two").await.expect("get");
    assert_eq!(body.bytes().await.expect("read"), "put body");

    let empty = store
        .upload("small/empty", ObjectAttributes::default())
        .expect("upload starts")
        .complete()
        .await
        .expect("an empty object is stored");
    assert_eq!(empty.size, 0);
    assert_eq!(store.head("small/empty").await.expect("head").size, 0);
}

/// A range read returns those bytes; the metadata still tells the whole size.
async fn get_with_a_range(test: TestStore) {
    let store = &test.store;
    let data = pseudo_random_bytes(100_000, 7);
    store
        .put("ranged", Bytes::from(data.clone()))
        .await
        .expect("put");
    let body = store
        .get_range("ranged", 1_000..1_100)
        .await
        .expect("range");
    assert_eq!(body.range(), 1_000..1_100);
    assert_eq!(body.info().size, 100_000);
    assert_eq!(body.bytes().await.expect("read"), &data[1_000..1_100]);
    let tail = store
        .get_range("ranged", 99_990..200_000)
        .await
        .expect("a range past the end is cut");
    assert_eq!(tail.bytes().await.expect("read"), &data[99_990..]);
    let empty = store.get_range("ranged", 5..5).await;
    assert!(empty.is_err(), "an empty range is refused");
}

/// `head` tells the size of an object without reading it.
async fn head_reports_the_size(test: TestStore) {
    let store = &test.store;
    store
        .put("sized", Bytes::from(vec![b'x'; 12_345]))
        .await
        .expect("put");
    let info = store.head("sized").await.expect("head");
    assert_eq!(info.key, "sized");
    assert_eq!(info.size, 12_345);
}

/// Listing a prefix gives the objects under it, by whole path segments, with their
/// keys as the caller wrote them.
async fn list_by_prefix(test: TestStore) {
    let store = &test.store;
    for key in [
        "inbound/partner-a/1",
        "inbound/partner-a/2",
        "inbound/partner-ab/3",
        "inbound/partner-b/4",
        "outbound/partner-a/5",
    ] {
        store
            .put(key, Bytes::from(key.to_owned()))
            .await
            .expect("put");
    }
    assert_eq!(
        list_keys(store, "inbound/partner-a").await,
        ["inbound/partner-a/1", "inbound/partner-a/2"]
    );
    assert_eq!(
        list_keys(store, "inbound/partner-a/").await,
        ["inbound/partner-a/1", "inbound/partner-a/2"]
    );
    assert_eq!(list_keys(store, "inbound").await.len(), 4);
    assert_eq!(list_keys(store, "").await.len(), 5);
    assert!(list_keys(store, "nothing-here").await.is_empty());
    let listed: Vec<ObjectInfo> = store
        .list("outbound")
        .try_collect()
        .await
        .expect("listing works");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].size, "outbound/partner-a/5".len() as u64);
}

/// A deleted object is gone; deleting a missing one is not an error.
async fn delete_removes_the_object(test: TestStore) {
    let store = &test.store;
    store
        .put("doomed", Bytes::from_static(b"bye"))
        .await
        .expect("put");
    store.delete("doomed").await.expect("delete");
    let error = store.head("doomed").await.expect_err("deleted");
    assert!(error.is_not_found(), "{error}");
    store
        .delete("doomed")
        .await
        .expect("deleting a missing object is fine");
    assert!(list_keys(store, "").await.is_empty());
}

/// A missing key is `NotFound`, told apart from other failures, for get, range and head.
async fn missing_objects_are_not_found(test: TestStore) {
    let store = &test.store;
    let get = store.get("no/such/object").await.expect_err("missing");
    assert!(
        matches!(&get, StoreError::NotFound { key } if key == "no/such/object"),
        "{get}"
    );
    let range = store
        .get_range("no/such/object", 0..10)
        .await
        .expect_err("missing");
    assert!(range.is_not_found(), "{range}");
    let head = store.head("no/such/object").await.expect_err("missing");
    assert!(head.is_not_found(), "{head}");
    assert_eq!(head.to_string(), "object \"no/such/object\" not found");
    let invalid = store.head("a/../b").await.expect_err("invalid");
    assert!(
        matches!(invalid, StoreError::InvalidKey { .. }),
        "{invalid}"
    );
}

/// Writes a bit more than two parts, so that a multipart upload has begun.
async fn start_big_upload(store: &Store, key: &str) -> as2_store::Upload {
    let mut upload = store
        .upload(key, ObjectAttributes::default())
        .expect("upload starts");
    let data = pseudo_random_bytes(2 * DEFAULT_PART_SIZE + 1_000, 3);
    upload.write(&data).await.expect("write");
    upload
}

/// An aborted upload leaves no object.
async fn abort_leaves_no_object(test: TestStore) {
    let store = &test.store;
    let upload = start_big_upload(store, "aborted/object").await;
    upload.abort().await.expect("abort");
    let error = store.head("aborted/object").await.expect_err("no object");
    assert!(error.is_not_found(), "{error}");
    assert!(list_keys(store, "").await.is_empty());
    assert_no_files_left(&test).await;
}

/// An upload dropped without completing leaves no object.
async fn dropped_upload_leaves_no_object(test: TestStore) {
    let store = &test.store;
    let upload = start_big_upload(store, "dropped/object").await;
    drop(upload);
    assert!(list_keys(store, "").await.is_empty());
    let error = store.head("dropped/object").await.expect_err("no object");
    assert!(error.is_not_found(), "{error}");
    assert_no_files_left(&test).await;

    let small = store
        .upload("dropped/small", ObjectAttributes::default())
        .expect("upload starts");
    drop(small);
    assert!(list_keys(store, "").await.is_empty());
}

/// The abandoned upload was aborted in the backend too (soon: a dropped upload cleans up
/// from a task): on the local filesystem its staged file is gone, on s3s-fs the state of
/// the multipart upload (`.upload-<id>...` files beside the buckets) and its parts.
async fn assert_no_files_left(test: &TestStore) {
    let (root, is_upload_state): (&std::path::Path, fn(&str) -> bool) =
        match (&test.local_root, &test.s3) {
            (Some(root), _) => (root.path(), |_| true),
            (None, Some(server)) => (server.root(), |name| name.contains(".upload-")),
            (None, None) => unreachable!("a test store has a backend"),
        };
    let mut left = Vec::new();
    for _ in 0..100 {
        left = files_under(root)
            .into_iter()
            .filter(|path| is_upload_state(&path.to_string_lossy()))
            .collect();
        if left.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("upload state left behind: {left:?}");
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read a directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// Content type and user metadata are kept where the backend keeps them (S3); the
/// local filesystem drops them and still stores the object.
async fn attributes_are_kept_where_supported(test: TestStore) {
    let store = &test.store;
    let attributes = ObjectAttributes::content_type("application/edi-x12")
        .with_metadata("as2-message-id", "<abc@partner>");
    store
        .put_with_attributes(
            "with/attributes",
            Bytes::from_static(b"ISA*00"),
            attributes.clone(),
        )
        .await
        .expect("put");
    let mut upload = store
        .upload("with/attributes-streamed", attributes.clone())
        .expect("upload starts");
    upload
        .write(&pseudo_random_bytes(DEFAULT_PART_SIZE + 10, 9))
        .await
        .expect("write");
    assert!(upload.complete().await.expect("complete").parts > 1);
    for key in ["with/attributes", "with/attributes-streamed"] {
        let body = store.get(key).await.expect("get");
        if store.keeps_attributes() {
            assert_eq!(body.attributes(), &attributes, "{key}");
        } else {
            assert_eq!(body.attributes(), &ObjectAttributes::default(), "{key}");
        }
    }
    assert_eq!(test.s3.is_some(), store.keeps_attributes());
}

/// Generates one `#[tokio::test]` per backend for each suite function.
macro_rules! on_both_backends {
    ($($suite:ident),* $(,)?) => {
        mod local_filesystem {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $suite() {
                    super::$suite(super::local_store()).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $suite() {
                    super::$suite(super::s3_store()).await;
                }
            )*
        }
    };
}

on_both_backends!(
    streamed_upload_of_64_mib,
    small_object_is_a_single_put,
    get_with_a_range,
    head_reports_the_size,
    list_by_prefix,
    delete_removes_the_object,
    missing_objects_are_not_found,
    abort_leaves_no_object,
    dropped_upload_leaves_no_object,
    attributes_are_kept_where_supported,
);

/// The URL's key prefix applies to every key and is not seen by the caller: a store over
/// the whole bucket finds the objects under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_key_prefix_applies_to_every_key() {
    let server = S3Server::start();
    let prefixed = Store::open(&s3_config(&server, "tenant/a")).expect("opens");
    let whole_bucket = Store::open(&s3_config(&server, "")).expect("opens");
    prefixed
        .put("doc/1", Bytes::from_static(b"one"))
        .await
        .expect("put");
    assert_eq!(list_keys(&prefixed, "").await, ["doc/1"]);
    assert_eq!(list_keys(&whole_bucket, "").await, ["tenant/a/doc/1"]);
    let body = whole_bucket.get("tenant/a/doc/1").await.expect("get");
    assert_eq!(body.bytes().await.expect("read"), "one");
}

/// Wrong credentials are a failure that is not "not found".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_wrong_credentials_fail_clearly() {
    let server = S3Server::start();
    let mut config = s3_config(&server, "");
    if let as2_store::Backend::S3(s3) = &mut config.backend {
        s3.secret_access_key = Some(Secret::new("not-the-secret"));
    }
    let store = Store::open(&config).expect("opens");
    let error = store.head("anything").await.expect_err("refused");
    assert!(!error.is_not_found(), "{error}");
    assert!(
        matches!(
            error,
            StoreError::Backend {
                operation: "head",
                ..
            }
        ),
        "{error}"
    );
}

/// What an upload killed mid-way leaves on a local directory (object_store's staging file
/// `{key}#{n}`, which listings never show) is removed once it is old enough; objects,
/// fresh staging files and other prefixes stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_uploads_on_a_local_directory_are_removed() {
    let test = local_store();
    let store = &test.store;
    let root = test.local_root.as_ref().unwrap().path().to_path_buf();
    store
        .put(
            "documents/2026-12-03/acme/kept",
            Bytes::from_static(b"object"),
        )
        .await
        .unwrap();
    let write = |relative: &str, age: Duration| {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let file = std::fs::File::create(&path).unwrap();
        std::io::Write::write_all(&mut &file, b"partial upload").unwrap();
        file.set_modified(std::time::SystemTime::now() - age)
            .unwrap();
        path
    };
    let old = write(
        "documents/2026-12-03/acme/killed#1",
        Duration::from_secs(7200),
    );
    let fresh = write("documents/2026-12-03/acme/in-progress#2", Duration::ZERO);
    let elsewhere = write(
        "archive/keep-1/2026-12-03/x/entry.message#3",
        Duration::from_secs(7200),
    );
    let not_staging = write(
        "documents/2026-12-03/acme/name#x",
        Duration::from_secs(7200),
    );
    // Listings show neither staging file (so the retention sweeps cannot see them).
    assert_eq!(
        list_keys(store, "documents").await,
        vec![
            "documents/2026-12-03/acme/kept".to_owned(),
            "documents/2026-12-03/acme/name#x".to_owned()
        ]
    );

    let removed = store
        .remove_interrupted_uploads("documents", Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert!(!old.exists());
    assert!(fresh.exists() && elsewhere.exists() && not_staging.exists());
    assert_eq!(
        store
            .remove_interrupted_uploads("documents", Duration::ZERO)
            .await
            .unwrap(),
        1
    );
    assert!(!fresh.exists());
    let kept = store.get("documents/2026-12-03/acme/kept").await.unwrap();
    assert_eq!(kept.bytes().await.unwrap(), Bytes::from_static(b"object"));
    assert_eq!(
        store
            .remove_interrupted_uploads("nothing-here", Duration::ZERO)
            .await
            .unwrap(),
        0
    );
}

/// Other backends keep nothing of an interrupted upload in the key space: nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_uploads_elsewhere_are_the_backends_business() {
    let test = s3_store();
    assert_eq!(
        test.store
            .remove_interrupted_uploads("documents", Duration::ZERO)
            .await
            .unwrap(),
        0
    );
}
