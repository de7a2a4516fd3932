//! `kv-memory`: an agent's key-value memory. Every write is durable before it is acknowledged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::imvu::{Context, Imvu};

/// Longest key accepted.
pub(crate) const KV_KEY_LEN_MAX: usize = 256;
/// Most keys one memory holds.
pub(crate) const KV_KEYS_MAX: usize = 10_000;

/// Behaviour of `kv-memory`.
pub struct KvMemory;

/// Messages to a memory.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum KvMsg {
    /// Sets `key` to `value`; replies with the previous value.
    Put {
        /// Key.
        key: String,
        /// Any JSON value.
        value: serde_json::Value,
    },
    /// Reads `key`.
    Get {
        /// Key.
        key: String,
    },
    /// Removes `key`; replies with the removed value.
    Delete {
        /// Key.
        key: String,
    },
    /// Lists keys.
    Keys,
}

/// Replies of a memory.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum KvReply {
    /// A value (or null when absent).
    Value(Option<serde_json::Value>),
    /// Key names.
    Keys(Vec<String>),
    /// Refused, with the reason.
    Error(String),
}

impl Imvu for KvMemory {
    const KIND: &'static str = "kv-memory";
    type State = BTreeMap<String, serde_json::Value>;
    type Msg = KvMsg;
    type Reply = KvReply;

    fn genesis(&self) -> Self::State {
        BTreeMap::new()
    }

    fn handle(&self, memory: &mut Self::State, msg: KvMsg, _ctx: &mut Context<'_>) -> KvReply {
        match msg {
            KvMsg::Put { key, value } => {
                if key.len() > KV_KEY_LEN_MAX {
                    return KvReply::Error(format!("key longer than {KV_KEY_LEN_MAX} bytes"));
                }
                if memory.len() >= KV_KEYS_MAX && !memory.contains_key(&key) {
                    return KvReply::Error(format!("memory holds {KV_KEYS_MAX} keys already"));
                }
                KvReply::Value(memory.insert(key, value))
            }
            KvMsg::Get { key } => KvReply::Value(memory.get(&key).cloned()),
            KvMsg::Delete { key } => KvReply::Value(memory.remove(&key)),
            KvMsg::Keys => KvReply::Keys(memory.keys().cloned().collect()),
        }
    }

    fn description(&self) -> &'static str {
        "key-value memory: {\"op\":\"put\",\"key\":\"k\",\"value\":1}, {\"op\":\"get\",\"key\":\"k\"}, {\"op\":\"delete\",\"key\":\"k\"}, {\"op\":\"keys\"}"
    }
}
