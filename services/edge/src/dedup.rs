//! Duplicate detection on (AS2-From, AS2-To, Message-ID), shared by all edge replicas.
//!
//! Before a document is published, the edge claims its message key in Redis:
//!
//! - nobody has it: the claim succeeds (state `in_flight`, with a short TTL so that a
//!   replica dying mid-request does not block the message forever);
//! - another request holds it: [`Claim::InFlight`] (the edge answers 503 with Retry-After,
//!   the partner resends later);
//! - it was processed before: [`Claim::Done`] with the receipt that was sent then, which
//!   the edge sends again without publishing anything.
//!
//! After the publish, [`DedupStore::complete`] stores the receipt (state `done`, long TTL).
//! When the publish fails, [`DedupStore::release`] drops the claim so that the resend can
//! go through at once.
//!
//! Keys are `{prefix}:dedup:{sha256 of from, to and message id}`: a Message-ID can be up to
//! 998 characters of almost anything, so it is hashed rather than embedded.

use std::time::Duration;

use as2_common::redis::KeyNamespace;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

/// The identity of a received message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageKey<'a> {
    /// The partner's AS2 ID.
    pub as2_from: &'a str,
    /// Our AS2 ID.
    pub as2_to: &'a str,
    /// The Message-ID header as received.
    pub message_id: &'a str,
}

impl MessageKey<'_> {
    /// Hex SHA-256 over the three parts; angle brackets and surrounding whitespace of the
    /// Message-ID do not count, so `<a@b>` and `a@b` are the same message.
    fn digest(&self) -> String {
        let message_id = self.message_id.trim();
        let message_id = message_id
            .strip_prefix('<')
            .and_then(|rest| rest.strip_suffix('>'))
            .unwrap_or(message_id);
        let mut material =
            Vec::with_capacity(self.as2_from.len() + self.as2_to.len() + message_id.len() + 2);
        for (index, part) in [self.as2_from, self.as2_to, message_id]
            .into_iter()
            .enumerate()
        {
            if index > 0 {
                material.push(0);
            }
            material.extend_from_slice(part.as_bytes());
        }
        hex(&openssl::sha::sha256(&material))
    }
}

/// The answer sent for a message, kept so that a resend gets the same answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredReceipt {
    /// HTTP status of the response.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// Response body (the sync MDN, or empty for an async request).
    #[serde(with = "base64_bytes")]
    pub body: Vec<u8>,
    /// An asynchronous MDN that could not be handed to the MDN service yet; a resend of
    /// the message hands it over (and publishes nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_async_mdn: Option<PendingAsyncMdn>,
}

/// An asynchronous MDN waiting to be handed to the MDN service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingAsyncMdn {
    /// Where the partner wants it (Receipt-Delivery-Option).
    pub url: String,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Its body.
    #[serde(with = "base64_bytes")]
    pub body: Vec<u8>,
}

/// The outcome of [`DedupStore::claim`].
#[derive(Debug)]
pub enum Claim {
    /// This request owns the message now; pass the token to `complete` or `release`.
    Claimed(ClaimToken),
    /// Another request is processing the same message.
    InFlight,
    /// The message was processed before; this is what was answered then.
    Done(StoredReceipt),
}

/// Proof of a claim.
#[derive(Debug)]
pub struct ClaimToken {
    key: String,
    token: String,
}

/// Why the dedup store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    /// Redis is unreachable or failed the command.
    #[error("redis unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    /// A stored receipt does not decode (written by an incompatible version).
    #[error("stored receipt does not decode: {0}")]
    Corrupt(#[from] serde_json::Error),
}

const CLAIM_SCRIPT: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  redis.call('HSET', KEYS[1], 'state', 'in_flight', 'token', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'claimed'}
end
if state == 'done' then
  return {'done', redis.call('HGET', KEYS[1], 'receipt')}
end
return {'in_flight'}
";

const COMPLETE_SCRIPT: &str = r"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'done', 'receipt', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

const RELEASE_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'state') == 'in_flight' and redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Claims and receipts in Redis.
#[derive(Clone)]
pub struct DedupStore {
    connection: ConnectionManager,
    namespace: KeyNamespace,
    in_flight_ttl: Duration,
    done_ttl: Duration,
    claim_script: redis::Script,
    complete_script: redis::Script,
    release_script: redis::Script,
}

impl DedupStore {
    /// A store over `connection`; claims expire after `in_flight_ttl`, receipts after
    /// `done_ttl`.
    pub fn new(
        connection: ConnectionManager,
        namespace: KeyNamespace,
        in_flight_ttl: Duration,
        done_ttl: Duration,
    ) -> Self {
        Self {
            connection,
            namespace,
            in_flight_ttl,
            done_ttl,
            claim_script: redis::Script::new(CLAIM_SCRIPT),
            complete_script: redis::Script::new(COMPLETE_SCRIPT),
            release_script: redis::Script::new(RELEASE_SCRIPT),
        }
    }

    /// Claims `message` for this request, or says who has it.
    pub async fn claim(&self, message: &MessageKey<'_>) -> Result<Claim, DedupError> {
        let key = self
            .namespace
            .key(format_args!("dedup:{}", message.digest()));
        let token = hex(&random_token());
        let mut connection = self.connection.clone();
        let reply: Vec<Vec<u8>> = self
            .claim_script
            .key(&key)
            .arg(&token)
            .arg(millis(self.in_flight_ttl))
            .invoke_async(&mut connection)
            .await?;
        match reply.first().map(Vec::as_slice) {
            Some(b"claimed") => Ok(Claim::Claimed(ClaimToken { key, token })),
            Some(b"done") => {
                let receipt = reply.get(1).map(Vec::as_slice).unwrap_or_default();
                Ok(Claim::Done(serde_json::from_slice(receipt)?))
            }
            _ => Ok(Claim::InFlight),
        }
    }

    /// Records that the claimed message was published and what was answered.
    pub async fn complete(
        &self,
        claim: ClaimToken,
        receipt: &StoredReceipt,
    ) -> Result<(), DedupError> {
        self.store_receipt(&claim.key, receipt).await
    }

    /// Replaces the receipt stored for a message that was published before.
    pub async fn update_receipt(
        &self,
        message: &MessageKey<'_>,
        receipt: &StoredReceipt,
    ) -> Result<(), DedupError> {
        self.store_receipt(&self.key(message), receipt).await
    }

    fn key(&self, message: &MessageKey<'_>) -> String {
        self.namespace
            .key(format_args!("dedup:{}", message.digest()))
    }

    async fn store_receipt(&self, key: &str, receipt: &StoredReceipt) -> Result<(), DedupError> {
        let encoded = serde_json::to_vec(receipt)?;
        let mut connection = self.connection.clone();
        let _: i64 = self
            .complete_script
            .key(key)
            .arg(encoded)
            .arg(millis(self.done_ttl))
            .invoke_async(&mut connection)
            .await?;
        Ok(())
    }

    /// Drops a claim whose message was not published, if this request still holds it.
    pub async fn release(&self, claim: ClaimToken) -> Result<(), DedupError> {
        let mut connection = self.connection.clone();
        let _: i64 = self
            .release_script
            .key(&claim.key)
            .arg(&claim.token)
            .invoke_async(&mut connection)
            .await?;
        Ok(())
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn random_token() -> [u8; 16] {
    let mut token = [0_u8; 16];
    // The token only tells concurrent claims apart; should the system RNG fail, a
    // timestamp-based token is still unique enough for that.
    if openssl::rand::rand_bytes(&mut token).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default();
        token = nanos.to_le_bytes();
    }
    token
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut text, byte| {
            let _ = write!(text, "{byte:02x}");
            text
        })
}

mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        let text = <&str>::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(message_id: &'a str) -> MessageKey<'a> {
        MessageKey {
            as2_from: "partner",
            as2_to: "us",
            message_id,
        }
    }

    #[test]
    fn angle_brackets_do_not_change_the_identity() {
        assert_eq!(key("<a@b>").digest(), key("a@b").digest());
        assert_eq!(key(" <a@b> ").digest(), key("a@b").digest());
        assert_ne!(key("a@b").digest(), key("a@c").digest());
    }

    #[test]
    fn parts_cannot_run_into_each_other() {
        let first = MessageKey {
            as2_from: "ab",
            as2_to: "c",
            message_id: "m",
        };
        let second = MessageKey {
            as2_from: "a",
            as2_to: "bc",
            message_id: "m",
        };
        assert_ne!(first.digest(), second.digest());
    }

    #[test]
    fn receipts_round_trip_through_json() {
        let receipt = StoredReceipt {
            status: 200,
            headers: vec![("Content-Type".into(), "multipart/signed".into())],
            body: vec![0, 1, 2, 255],
            pending_async_mdn: None,
        };
        let encoded = serde_json::to_vec(&receipt).unwrap();
        assert_eq!(
            serde_json::from_slice::<StoredReceipt>(&encoded).unwrap(),
            receipt
        );
    }
}
