//! The archive's key layout, shared by the services that write it and the tools that
//! read it.
//!
//! | key | holds |
//! |---|---|
//! | `archive/keep-{days}/{day}/{partnership}/{hash}/{time}.message` | the request: header fields as received (`Name: value` lines), a blank line, the body |
//! | `archive/keep-{days}/{day}/{partnership}/{hash}/{time}.answer` | the answer: `HTTP/1.1 {status}`, header fields, a blank line, the body |
//! | `archive/keep-{days}/{day}/{partnership}/{hash}/{time}.mdn` | outbound only: the asynchronous MDN the partner POSTed later, header fields, a blank line, the body |
//! | `archive/index/{hash}/{day}.{time}` | the entry's name (finding a message by its ids without listing the bucket) |
//!
//! Inbound (the edge), `.message` is the request as received and `.answer` our answer
//! with its MDN; outbound (the sender), `.message` is the request as we sent it and
//! `.answer` the partner's answer (a synchronous MDN in its body).
//!
//! An entry is named by the common part of its keys (`…/{hash}/{time}`); the layout
//! keeps directories few (one per message and day on a filesystem store), since each
//! costs a write of its own.
//!
//! `{hash}` is the first 128 bits (hex) of the SHA-256 of `AS2-From`, `AS2-To` and
//! `Message-ID` (each followed by a newline), so a resend of the same message lands
//! beside the first. The retention
//! is in the key (`keep-{days}`): [`sweep_archive`] lists `archive/` one level deep for
//! the retention classes in use, then only the days that have expired in each, and
//! removes their index entries with them.

use bytes::Bytes;
use futures::StreamExt as _;
use time::{Date, OffsetDateTime};

use crate::keys::{hex, random_name, segment as safe_segment};
use crate::{Result, Store};

/// The archive's key prefix.
pub const ARCHIVE_PREFIX: &str = "archive";
/// The prefix of the index by message.
pub const INDEX_PREFIX: &str = "archive/index";

/// Days before the first expired one that a sweep still looks at (catching up after the
/// sweeper was down); older days are left to the store's lifecycle rules.
const CATCH_UP_DAYS: i64 = 31;

/// The name of a message in the archive: the first 128 bits (32 hex digits) of the
/// SHA-256 of its ids (keys stay short: some stores limit their length).
pub fn message_hash(as2_from: &str, as2_to: &str, message_id: &str) -> String {
    let text = format!("{as2_from}\n{as2_to}\n{message_id}\n");
    let digest = openssl::sha::sha256(text.as_bytes());
    hex(digest.get(..16).unwrap_or_default())
}

/// Where one attempt of one message is archived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveEntry {
    /// `archive/keep-{days}/{day}/{partnership}/{hash}/{time}`: the entry's name, the
    /// keys of its objects without their extension.
    pub prefix: String,
    /// `archive/index/{hash}/{day}.{time}`.
    pub index_key: String,
}

impl ArchiveEntry {
    /// The entry of a message received `now`, kept `retention_days`.
    pub fn new(retention_days: u32, partnership_id: &str, hash: &str, now: OffsetDateTime) -> Self {
        let day = now.date();
        let time = format!(
            "{:02}{:02}{:02}{:03}-{}",
            now.hour(),
            now.minute(),
            now.second(),
            now.millisecond(),
            random_name(4)
        );
        Self {
            prefix: format!(
                "{ARCHIVE_PREFIX}/keep-{retention_days}/{day}/{}/{hash}/{time}",
                safe_segment(partnership_id)
            ),
            index_key: format!("{INDEX_PREFIX}/{hash}/{day}.{time}"),
        }
    }

    /// The key of the request as received.
    pub fn message_key(&self) -> String {
        message_key(&self.prefix)
    }

    /// The key of our answer.
    pub fn answer_key(&self) -> String {
        answer_key(&self.prefix)
    }

    /// The index key of the entry an archived object belongs to.
    fn index_key_of(object_key: &str) -> Option<String> {
        let parts: Vec<&str> = object_key.split('/').collect();
        match parts.as_slice() {
            [_, _, day, _, hash, name] => {
                let time = name.strip_suffix(".message")?;
                Some(format!("{INDEX_PREFIX}/{hash}/{day}.{time}"))
            }
            _ => None,
        }
    }
}

/// Deletes the objects under `prefix/{day}/` for the days from `retention_days` before
/// `today` back 31 more; returns the keys deleted. Keys must start with their day.
pub async fn sweep_expired(
    store: &Store,
    prefix: &str,
    retention_days: u32,
    today: Date,
) -> Result<Vec<String>> {
    let mut deleted = Vec::new();
    let newest_expired = i64::from(retention_days) + 1;
    for age in newest_expired..newest_expired + CATCH_UP_DAYS {
        let Some(day) = today.checked_sub(time::Duration::days(age)) else {
            break;
        };
        let keys: Vec<String> = store
            .list(&format!("{prefix}/{day}"))
            .filter_map(|info| async move { info.ok().map(|info| info.key) })
            .collect()
            .await;
        for key in keys {
            store.delete(&key).await?;
            deleted.push(key);
        }
    }
    Ok(deleted)
}

/// Deletes the archive entries past their retention, with their index entries; returns
/// how many objects were deleted.
pub async fn sweep_archive(store: &Store, today: Date) -> Result<usize> {
    let mut deleted = 0;
    for class in store.list_prefixes(ARCHIVE_PREFIX).await? {
        let Some(days) = class
            .rsplit('/')
            .next()
            .and_then(|name| name.strip_prefix("keep-"))
            .and_then(|days| days.parse::<u32>().ok())
        else {
            continue;
        };
        for key in sweep_expired(store, &class, days, today).await? {
            if let Some(index_key) = ArchiveEntry::index_key_of(&key) {
                store.delete(&index_key).await?;
            }
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// The archive entries (prefixes) of one message, every attempt, oldest first.
pub async fn entries_of(store: &Store, hash: &str) -> Result<Vec<String>> {
    let keys: Vec<String> = store
        .list(&format!("{INDEX_PREFIX}/{hash}"))
        .filter_map(|info| async move { info.ok().map(|info| info.key) })
        .collect()
        .await;
    let mut entries = Vec::new();
    for key in keys {
        let prefix = store.get(&key).await?.bytes().await?;
        entries.push((key, String::from_utf8_lossy(&prefix).into_owned()));
    }
    entries.sort();
    Ok(entries.into_iter().map(|(_, prefix)| prefix).collect())
}

/// The archive entries (prefixes) of one partnership on one day, in time order.
pub async fn entries_on(store: &Store, partnership_id: &str, day: Date) -> Result<Vec<String>> {
    let mut entries = Vec::new();
    for class in store.list_prefixes(ARCHIVE_PREFIX).await? {
        if !class
            .rsplit('/')
            .next()
            .is_some_and(|name| name.starts_with("keep-"))
        {
            continue;
        }
        let keys: Vec<String> = store
            .list(&format!("{class}/{day}/{}", safe_segment(partnership_id)))
            .filter_map(|info| async move { info.ok().map(|info| info.key) })
            .collect()
            .await;
        for key in keys {
            if let Some(prefix) = key.strip_suffix(".message") {
                entries.push(prefix.to_owned());
            }
        }
    }
    entries.sort_by(|a, b| a.rsplit('/').next().cmp(&b.rsplit('/').next()));
    Ok(entries)
}

/// How old a staging file must be before [`remove_interrupted_uploads`] deletes it: an
/// upload in progress writes to its file far more often.
pub const INTERRUPTED_UPLOAD_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Days back (today included) that [`remove_interrupted_uploads`] looks at: uploads are
/// interrupted when a process dies, and the sweep that runs hourly finds them while
/// their day is recent.
const INTERRUPTED_UPLOAD_DAYS: i64 = 3;

/// Removes what uploads interrupted by a crash left behind under the day-keyed prefixes
/// `prefixes` (`documents`, `outbound`: `{prefix}/{day}/…`) and the archive's
/// (`archive/keep-{days}/{day}/…`), for today and the two days before, staging files
/// untouched for an hour ([`Store::remove_interrupted_uploads`]: only a local directory
/// has them); returns how many.
pub async fn remove_interrupted_uploads(
    store: &Store,
    prefixes: &[&str],
    today: Date,
) -> Result<usize> {
    if !store.is_local_directory() {
        return Ok(0);
    }
    let mut day_prefixes: Vec<String> =
        prefixes.iter().map(|prefix| (*prefix).to_owned()).collect();
    day_prefixes.extend(
        store
            .list_prefixes(ARCHIVE_PREFIX)
            .await?
            .into_iter()
            .filter(|class| {
                class
                    .rsplit('/')
                    .next()
                    .is_some_and(|name| name.starts_with("keep-"))
            }),
    );
    let mut removed = 0;
    for prefix in &day_prefixes {
        for age in 0..INTERRUPTED_UPLOAD_DAYS {
            let Some(day) = today.checked_sub(time::Duration::days(age)) else {
                break;
            };
            removed += store
                .remove_interrupted_uploads(&format!("{prefix}/{day}"), INTERRUPTED_UPLOAD_AGE)
                .await?;
        }
    }
    Ok(removed)
}

/// The key of an entry's request.
pub fn message_key(entry: &str) -> String {
    format!("{entry}.message")
}

/// The key of an entry's answer.
pub fn answer_key(entry: &str) -> String {
    format!("{entry}.answer")
}

/// The key of the asynchronous MDN a partner sent for an outbound entry.
pub fn mdn_key(entry: &str) -> String {
    format!("{entry}.mdn")
}

/// Header fields as `Name: value` lines and a blank line, after an optional first line
/// (an answer's `HTTP/1.1 {status}`): how the archive stores a request or an answer
/// before its body.
pub fn header_block(first_line: Option<&str>, headers: &[(String, String)]) -> Vec<u8> {
    let mut block = Vec::new();
    if let Some(line) = first_line {
        block.extend_from_slice(line.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    for (name, value) in headers {
        block.extend_from_slice(name.as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    block.extend_from_slice(b"\r\n");
    block
}

/// An archived request, answer or MDN held whole: its [`header_block`] (after the
/// optional first line) followed by its body.
pub fn http_object(first_line: Option<&str>, headers: &[(String, String)], body: &[u8]) -> Bytes {
    let mut object = header_block(first_line, headers);
    object.extend_from_slice(body);
    Bytes::from(object)
}

/// Stores an index entry for `entry` (after its objects are stored).
pub async fn put_index(store: &Store, entry: &ArchiveEntry) -> Result<()> {
    store
        .put(&entry.index_key, Bytes::from(entry.prefix.clone()))
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn entries_are_found_by_message_and_day_and_swept_with_their_index() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(&crate::StoreConfig::local(directory.path())).unwrap();
        let hash = message_hash("partner", "us", "<1@x>");
        let old = time::macros::datetime!(2026-11-01 10:00:00 UTC);
        let recent = time::macros::datetime!(2026-12-02 10:00:00 UTC);
        for (retention, when) in [(30, old), (30, recent), (365, old)] {
            let entry = ArchiveEntry::new(retention, "p 1", &hash, when);
            store
                .put(&entry.message_key(), Bytes::from_static(b"m"))
                .await
                .unwrap();
            store
                .put(&entry.answer_key(), Bytes::from_static(b"a"))
                .await
                .unwrap();
            put_index(&store, &entry).await.unwrap();
        }
        assert_eq!(entries_of(&store, &hash).await.unwrap().len(), 3);
        assert_eq!(
            entries_on(&store, "p 1", old.date()).await.unwrap().len(),
            2,
            "both retention classes are listed for the day"
        );
        let today = time::macros::date!(2026 - 12 - 03);
        // Only the 30-day entry from November 1 has expired: its two objects go.
        assert_eq!(sweep_archive(&store, today).await.unwrap(), 2);
        let left = entries_of(&store, &hash).await.unwrap();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(
            left.iter()
                .all(|prefix| !prefix.contains("keep-30/2026-11-01"))
        );
        assert!(left.iter().all(|prefix| prefix.contains("/p_1/")));
        for prefix in &left {
            assert!(store.head(&message_key(prefix)).await.is_ok(), "{prefix}");
        }
    }

    #[tokio::test]
    async fn expired_days_are_deleted_and_recent_ones_kept() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(&crate::StoreConfig::local(directory.path())).unwrap();
        let today = time::macros::date!(2026 - 12 - 03);
        let keys = [
            "documents/2026-12-03/p/today",
            "documents/2026-11-26/p/seven-days",
            "documents/2026-11-25/p/eight-days",
            "documents/2026-11-25/q/eight-days-other",
            "documents/2026-10-20/p/forty-four-days",
            "archive/2026-11-25/p/not-a-document",
        ];
        for key in keys {
            store.put(key, Bytes::from_static(b"x")).await.unwrap();
        }
        assert_eq!(
            sweep_expired(&store, "documents", 7, today)
                .await
                .unwrap()
                .len(),
            2
        );
        let mut left: Vec<String> = store.list("").map(|info| info.unwrap().key).collect().await;
        left.sort();
        assert_eq!(
            left,
            [
                "archive/2026-11-25/p/not-a-document",
                "documents/2026-10-20/p/forty-four-days",
                "documents/2026-11-26/p/seven-days",
                "documents/2026-12-03/p/today",
            ]
        );
        // Past the catch-up window, an old day is left for the store's own lifecycle.
        assert!(
            sweep_expired(&store, "documents", 7, today)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn interrupted_uploads_of_recent_days_are_removed_under_every_prefix() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(&crate::StoreConfig::local(directory.path())).unwrap();
        let today = time::macros::date!(2026 - 12 - 03);
        let write = |relative: String| {
            let path = directory.path().join(relative);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let file = std::fs::File::create(&path).unwrap();
            let two_hours = std::time::Duration::from_secs(7200);
            file.set_modified(std::time::SystemTime::now() - two_hours)
                .unwrap();
            path
        };
        let document = write(format!("documents/{today}/acme/a#1"));
        let entry = write(format!(
            "archive/keep-7/2026-12-02/acme/{}/t.message#2",
            "0".repeat(32)
        ));
        let spool = write("outbound/2026-12-01/x.message#1".to_owned());
        let too_old = write("documents/2026-11-20/acme/b#1".to_owned());
        let removed = remove_interrupted_uploads(&store, &["documents", "outbound"], today)
            .await
            .unwrap();
        assert_eq!(removed, 3);
        assert!(!document.exists() && !entry.exists() && !spool.exists());
        assert!(too_old.exists(), "only recent days are walked");
    }
}
