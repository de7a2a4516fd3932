//! `counter`: the smallest useful IMVU, and the one used to show supervision: `crash` panics
//! on purpose, the caller gets an `imvu_crashed` error, and the supervisor restarts the IMVU
//! from its last durable snapshot.

use serde::Deserialize;

use crate::imvu::{Context, Imvu};

/// A running total.
pub struct Counter;

/// Messages to a counter.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum CounterMsg {
    /// Adds `n` and returns the total.
    Add {
        /// Amount.
        n: i64,
    },
    /// Returns the total.
    Get,
    /// Panics (to see supervision at work).
    Crash,
}

impl Imvu for Counter {
    const KIND: &'static str = "counter";
    type State = i64;
    type Msg = CounterMsg;
    type Reply = i64;

    fn genesis(&self) -> i64 {
        0
    }

    fn handle(&self, total: &mut i64, msg: CounterMsg, _ctx: &mut Context<'_>) -> i64 {
        match msg {
            CounterMsg::Add { n } => *total = total.saturating_add(n),
            CounterMsg::Get => {}
            CounterMsg::Crash => panic!("counter asked to crash"),
        }
        *total
    }

    fn description(&self) -> &'static str {
        "a running total: {\"op\":\"add\",\"n\":1}, {\"op\":\"get\"}, {\"op\":\"crash\"} (panics, to show supervision)"
    }
}
