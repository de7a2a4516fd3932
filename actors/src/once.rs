//! Idempotent asks: a message applied at most once under a key, however often it is sent.
//!
//! A sender that may send a message again (a workflow resuming a step whose answer was lost
//! with its node) wraps it: `{"$once": KEY, "message": MSG}`. The IMVU's shard applies MSG once
//! under KEY and records its reply beside the snapshot, in the same canon commit; the same KEY
//! again gets the recorded reply without running the handler (once what recorded it is
//! durable). The records load with the IMVU, so this holds across crashes, restarts and moves
//! to other nodes. Each IMVU keeps the last [`ONCE_KEPT_MAX`] keys; older ones are forgotten
//! (a key sent again after that many newer ones applies again). Kinds that persist only at
//! lifecycle transitions apply such messages as plain ones (their effects are not durable
//! per message anyway).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ActorError;
use crate::ids::ImvuKey;
use crate::records;
use crate::store::CanonWrite;

/// The envelope's key field.
pub const ONCE_FIELD: &str = "$once";
/// Keys remembered per IMVU.
pub const ONCE_KEPT_MAX: usize = 1_024;
/// A key's length at most (bytes).
pub const ONCE_KEY_LEN_MAX: usize = 256;

/// Wraps `message` to be applied at most once under `key`.
pub fn envelope(key: &str, message: Value) -> Value {
    serde_json::json!({ ONCE_FIELD: key, "message": message })
}

/// Splits an envelope into its key and message; any other message comes back as it is.
pub fn split(message: Value) -> Result<(Option<Box<str>>, Value), ActorError> {
    let Value::Object(mut object) = message else { return Ok((None, message)) };
    let Some(key) = object.remove(ONCE_FIELD) else { return Ok((None, Value::Object(object))) };
    let bad = |reason: String| ActorError::BadRequest { field: ONCE_FIELD.into(), reason };
    let Value::String(key) = key else { return Err(bad("the idempotency key is a string".into())) };
    if key.is_empty() || key.len() > ONCE_KEY_LEN_MAX {
        return Err(bad(format!("the idempotency key is 1..={ONCE_KEY_LEN_MAX} bytes")));
    }
    let inner = object.remove("message").ok_or_else(|| bad("an envelope holds `message` beside its key".into()))?;
    if let Some(other) = object.keys().next() {
        return Err(bad(format!("an envelope holds only `{ONCE_FIELD}` and `message`, not `{other}`")));
    }
    Ok((Some(key.into_boxed_str()), inner))
}

/// What a duplicate's answer carried back (the recorded reply).
pub(crate) fn replayed(error: ActorError) -> Result<Value, ActorError> {
    match error {
        ActorError::AlreadyApplied(reply) => serde_json::from_str(&reply).map_err(|e| ActorError::Store(format!("a recorded reply does not read: {e}"))),
        other => Err(other),
    }
}

/// One record in the canon.
#[derive(Serialize, Deserialize)]
struct Record {
    key: String,
    /// The reply, JSON text.
    reply: String,
    unix_ms: u64,
}

fn prefix(imvu: &ImvuKey) -> String {
    format!("{}once/", records::imvu_prefix(imvu))
}

/// The prefix of an IMVU's records, for its load.
pub(crate) fn records_prefix(imvu: &ImvuKey) -> String {
    prefix(imvu)
}

/// The keys an IMVU applied, with their replies (in memory, as in its canon records).
#[derive(Debug, Default)]
pub(crate) struct Applied {
    by_key: BTreeMap<Box<str>, (u64, String)>,
    /// Sequence → key, oldest first.
    order: BTreeMap<u64, Box<str>>,
    next_seq: u64,
}

impl Applied {
    /// The records read at activation (`None`: none).
    pub(crate) fn load(rows: Vec<(String, Vec<u8>)>) -> Option<Box<Self>> {
        let mut applied = Self::default();
        for (key, bytes) in rows {
            let Some(seq) = crate::store::index_of_appended_key(&key) else { continue };
            let Ok(record) = serde_json::from_slice::<Record>(&bytes) else { continue };
            let name: Box<str> = record.key.into_boxed_str();
            applied.by_key.insert(name.clone(), (seq, record.reply));
            applied.order.insert(seq, name);
            applied.next_seq = applied.next_seq.max(seq + 1);
        }
        (!applied.by_key.is_empty()).then(|| Box::new(applied))
    }

    /// The recorded reply of `key`, if it was applied.
    pub(crate) fn reply(&self, key: &str) -> Option<String> {
        self.by_key.get(key).map(|(_, reply)| reply.clone())
    }

    /// Records `key` applied with `reply`: the writes that go into the same commit.
    pub(crate) fn record(&mut self, imvu: &ImvuKey, key: Box<str>, reply: &impl Serialize, unix_ms: u64) -> Vec<CanonWrite> {
        let Ok(reply) = serde_json::to_string(reply) else { return Vec::new() };
        let seq = self.next_seq;
        self.next_seq += 1;
        let record = Record { key: key.to_string(), reply: reply.clone(), unix_ms };
        let mut writes = vec![CanonWrite::Put { key: format!("{}{seq:020}", prefix(imvu)), value: records::encode(&record) }];
        self.by_key.insert(key.clone(), (seq, reply));
        self.order.insert(seq, key);
        while self.order.len() > ONCE_KEPT_MAX {
            let Some((old_seq, old_key)) = self.order.pop_first() else { break };
            self.by_key.remove(&old_key);
            writes.push(CanonWrite::Delete { key: format!("{}{old_seq:020}", prefix(imvu)) });
        }
        writes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_split_and_refuse_what_is_not_one() {
        let (key, message) = split(envelope("wf/1/0", serde_json::json!({"op": "add"}))).expect("an envelope");
        assert_eq!((key.as_deref(), message), (Some("wf/1/0"), serde_json::json!({"op": "add"})));
        let plain = serde_json::json!({"op": "add", "n": 1});
        assert_eq!(split(plain.clone()).expect("plain"), (None, plain));
        assert!(split(serde_json::json!({ ONCE_FIELD: 3, "message": {} })).is_err());
        assert!(split(serde_json::json!({ ONCE_FIELD: "k" })).is_err());
        assert!(split(serde_json::json!({ ONCE_FIELD: "k", "message": {}, "extra": 1 })).is_err());
        assert!(split(serde_json::json!({ ONCE_FIELD: "x".repeat(ONCE_KEY_LEN_MAX + 1), "message": {} })).is_err());
    }

    #[test]
    fn the_last_keys_are_kept_and_the_oldest_deleted_with_the_commit_that_pushes_them_out() {
        let imvu = ImvuKey { tenant: crate::TenantId::new("t").expect("valid"), id: crate::ImvuId(7) };
        let mut applied = Applied::default();
        let mut rows = Vec::new();
        for i in 0..ONCE_KEPT_MAX + 2 {
            for write in applied.record(&imvu, format!("k{i}").into(), &i, 0) {
                match write {
                    CanonWrite::Put { key, value } => rows.push((key, value)),
                    CanonWrite::Delete { key } => rows.retain(|(k, _)| *k != key),
                    CanonWrite::Expect { .. } | CanonWrite::Append { .. } => {}
                }
            }
        }
        assert_eq!(rows.len(), ONCE_KEPT_MAX);
        assert_eq!(applied.reply("k0"), None);
        assert_eq!(applied.reply(&format!("k{}", ONCE_KEPT_MAX + 1)).as_deref(), Some(&*format!("{}", ONCE_KEPT_MAX + 1)));
        let loaded = Applied::load(rows).expect("records");
        assert_eq!(loaded.reply("k5").as_deref(), Some("5"));
        assert_eq!(loaded.reply("k1"), None);
        assert_eq!(loaded.next_seq, (ONCE_KEPT_MAX + 2) as u64);
    }
}
