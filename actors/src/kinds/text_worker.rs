//! `text-worker`: a stateless-ish text processor, the usual member of a swarm. Its state counts
//! what it has done, so credit can be checked against work.

use serde::{Deserialize, Serialize};

use crate::imvu::{Context, Imvu};

/// Behaviour of `text-worker`.
pub struct TextWorker;

/// What to do with the text.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum TextOp {
    /// Counts words.
    WordCount {
        /// Input.
        text: String,
    },
    /// Upper-cases.
    Upper {
        /// Input.
        text: String,
    },
    /// Reverses characters.
    Reverse {
        /// Input.
        text: String,
    },
    /// Keywords: the distinct words longer than three letters, most frequent first (at most 5).
    Keywords {
        /// Input.
        text: String,
    },
    /// Panics: a poisoned work item, to exercise re-handout.
    Poison,
}

/// Work done so far.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TextWorkerState {
    /// Items processed.
    pub items: u64,
    /// Characters processed.
    pub chars: u64,
}

impl Imvu for TextWorker {
    const KIND: &'static str = "text-worker";
    type State = TextWorkerState;
    type Msg = TextOp;
    type Reply = serde_json::Value;

    fn genesis(&self) -> TextWorkerState {
        TextWorkerState::default()
    }

    fn handle(
        &self,
        state: &mut TextWorkerState,
        op: TextOp,
        _ctx: &mut Context<'_>,
    ) -> serde_json::Value {
        let (text, out) = match op {
            TextOp::WordCount { text } => {
                let n = text.split_whitespace().count();
                (text, serde_json::json!(n))
            }
            TextOp::Upper { text } => {
                let upper = text.to_uppercase();
                (text, serde_json::json!(upper))
            }
            TextOp::Reverse { text } => {
                let reversed: String = text.chars().rev().collect();
                (text, serde_json::json!(reversed))
            }
            TextOp::Keywords { text } => {
                let keywords = keywords(&text);
                (text, serde_json::json!(keywords))
            }
            TextOp::Poison => panic!("poisoned work item"),
        };
        state.items += 1;
        state.chars += text.chars().count() as u64;
        out
    }

    fn description(&self) -> &'static str {
        "text processing for swarms: {\"op\":\"word_count\"|\"upper\"|\"reverse\"|\"keywords\",\"text\":\"…\"}"
    }
}

fn keywords(text: &str) -> Vec<String> {
    let mut counts = std::collections::BTreeMap::<String, u32>::new();
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() > 3)
    {
        *counts.entry(word.to_lowercase()).or_default() += 1;
    }
    let mut ranked: Vec<(String, u32)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked.into_iter().take(5).map(|(w, _)| w).collect()
}
