//! `as2ctl archive`: the archived messages (as received, or as the sender sent them),
//! the answers and asynchronous MDNs, read straight from the object store with the
//! layout of [`as2_store::archive`]. Saved files are streamed, never held whole.

use futures::StreamExt as _;
use serde::Serialize;
use tokio::io::AsyncWriteExt as _;

use crate::cli::{ArchiveCommand, ArchiveStoreArgs};
use crate::commands::CtlError;

/// One archive entry as printed.
#[derive(Debug, Serialize)]
struct EntryView {
    /// The entry's key prefix.
    entry: String,
    /// The message as received: its size in bytes.
    message_bytes: Option<u64>,
    /// The answer's first line (`HTTP/1.1 200`) and its Disposition, when an MDN.
    answer: Option<String>,
    /// An outbound message's asynchronous MDN: its Disposition.
    #[serde(skip_serializing_if = "Option::is_none")]
    mdn: Option<String>,
    /// Where `--output-dir` wrote the files.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    saved: Vec<String>,
}

/// Runs an archive command.
pub async fn execute(command: ArchiveCommand, json: bool) -> Result<String, CtlError> {
    let (store, entries, output_dir) = match command {
        ArchiveCommand::List(args) => {
            let store = open(&args.store)?;
            let day = match &args.date {
                Some(date) => parse_day(date)?,
                None => time::OffsetDateTime::now_utc().date(),
            };
            let entries = as2_store::archive::entries_on(&store, &args.partnership, day)
                .await
                .map_err(store_error)?;
            (store, entries, None)
        }
        ArchiveCommand::Get(args) => {
            let store = open(&args.store)?;
            let hash = as2_store::archive::message_hash(&args.from, &args.to, &args.message_id);
            let entries = as2_store::archive::entries_of(&store, &hash)
                .await
                .map_err(store_error)?;
            if entries.is_empty() {
                return Err(CtlError::Usage(format!(
                    "no archived message {} from {:?} to {:?}",
                    args.message_id, args.from, args.to
                )));
            }
            (store, entries, args.output_dir)
        }
    };
    let mut views = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let message = store
            .head(&as2_store::archive::message_key(entry))
            .await
            .ok();
        let answer = small_object(&store, &as2_store::archive::answer_key(entry)).await?;
        let mdn = small_object(&store, &as2_store::archive::mdn_key(entry)).await?;
        let mut saved = Vec::new();
        if let Some(directory) = &output_dir {
            std::fs::create_dir_all(directory).map_err(|error| {
                CtlError::Usage(format!("cannot create {}: {error}", directory.display()))
            })?;
            for (name, key, present) in [
                (
                    "message",
                    as2_store::archive::message_key(entry),
                    message.is_some(),
                ),
                (
                    "answer",
                    as2_store::archive::answer_key(entry),
                    answer.is_some(),
                ),
                ("mdn", as2_store::archive::mdn_key(entry), mdn.is_some()),
            ] {
                if !present {
                    continue;
                }
                let path = directory.join(format!("{}-{name}", index + 1));
                save(&store, &key, &path).await?;
                saved.push(path.display().to_string());
            }
        }
        views.push(EntryView {
            entry: entry.clone(),
            message_bytes: message.map(|info| info.size),
            answer: answer.map(|answer| summary(&answer)),
            mdn: mdn.map(|mdn| disposition(&mdn).unwrap_or_else(|| "(no disposition)".to_owned())),
            saved,
        });
    }
    if json {
        return Ok(serde_json::to_string_pretty(&views)? + "\n");
    }
    let mut out = String::new();
    for view in &views {
        out.push_str(&format!(
            "{}\n  message: {} bytes\n  answer: {}\n",
            view.entry,
            view.message_bytes
                .map_or("?".to_owned(), |size| size.to_string()),
            view.answer.as_deref().unwrap_or("(none)")
        ));
        if let Some(mdn) = &view.mdn {
            out.push_str(&format!("  asynchronous mdn: {mdn}\n"));
        }
        for path in &view.saved {
            out.push_str(&format!("  saved to {path}\n"));
        }
    }
    out.push_str(&format!(
        "{} entr{}\n",
        views.len(),
        if views.len() == 1 { "y" } else { "ies" }
    ));
    Ok(out)
}

/// An answer or MDN (a few KiB), `None` when the entry has none.
async fn small_object(
    store: &as2_store::Store,
    key: &str,
) -> Result<Option<bytes::Bytes>, CtlError> {
    match store.get(key).await {
        Ok(object) => Ok(Some(object.bytes().await.map_err(store_error)?)),
        Err(error) if error.is_not_found() => Ok(None),
        Err(error) => Err(store_error(error)),
    }
}

/// Streams the object `key` into the file `path`.
async fn save(store: &as2_store::Store, key: &str, path: &std::path::Path) -> Result<(), CtlError> {
    let cannot_write = |error: std::io::Error| {
        CtlError::Usage(format!("cannot write {}: {error}", path.display()))
    };
    let mut file = tokio::fs::File::create(path).await.map_err(cannot_write)?;
    let mut body = store.get(key).await.map_err(store_error)?.into_stream();
    while let Some(chunk) = body.next().await {
        file.write_all(&chunk.map_err(store_error)?)
            .await
            .map_err(cannot_write)?;
    }
    file.flush().await.map_err(cannot_write)
}

/// The answer's status line and, for an MDN, its Disposition.
fn summary(answer: &[u8]) -> String {
    let text = String::from_utf8_lossy(answer);
    let status = text.lines().next().unwrap_or_default().trim().to_owned();
    match disposition(answer) {
        Some(disposition) => format!("{status}, {disposition}"),
        None => status,
    }
}

/// The Disposition an MDN states.
fn disposition(mdn: &[u8]) -> Option<String> {
    String::from_utf8_lossy(mdn)
        .lines()
        .find_map(|line| line.strip_prefix("Disposition:"))
        .map(|value| value.trim().to_owned())
}

fn open(args: &ArchiveStoreArgs) -> Result<as2_store::Store, CtlError> {
    let local = std::env::current_dir()
        .map_err(|error| CtlError::Usage(error.to_string()))?
        .join(".as2-gateway/objects");
    let config = args
        .object_store
        .store_config(&local)
        .map_err(store_error)?;
    as2_store::Store::open(&config).map_err(store_error)
}

fn parse_day(text: &str) -> Result<time::Date, CtlError> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text, &format)
        .map_err(|error| CtlError::Usage(format!("--date {text}: {error} (YYYY-MM-DD)")))
}

fn store_error(error: as2_store::StoreError) -> CtlError {
    CtlError::Usage(format!("the object store: {error}"))
}
