//! Two IMVUs that talk to each other: a `scout` asks a `librarian` for facts and remembers
//! the answers. The ask is an effect: `handle` records it and returns at once, the runtime
//! sends it after the scout's message is durable, and the answer comes back as a later
//! message to `on_reply` — the scout's shard never waits. The same code works when the
//! librarian lives on another node (`vcos up` plugs the cluster's router in).
//!
//! Run: `cargo run --example pen_pals`

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use vcos_actors::{ActorError, Caller, Context, Imvu, ImvuKey, MemoryStore, Runtime, RuntimeConfig, SystemClock, TenantId, TenantPolicy};

/// Knows a few facts.
struct Librarian;

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum LibrarianMsg {
    Lookup { topic: String },
}

impl Imvu for Librarian {
    const KIND: &'static str = "librarian";
    type State = u64; // lookups served
    type Msg = LibrarianMsg;
    type Reply = String;

    fn genesis(&self) -> u64 {
        0
    }

    fn handle(&self, served: &mut u64, msg: LibrarianMsg, _ctx: &mut Context<'_>) -> String {
        let LibrarianMsg::Lookup { topic } = msg;
        *served += 1;
        match topic.as_str() {
            "raft" => "a leader replicates a log to a quorum".into(),
            "swim" => "members probe each other and gossip who is down".into(),
            other => format!("nothing on {other}"),
        }
    }
}

/// Asks the librarian and remembers the answers.
struct Scout;

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum ScoutMsg {
    /// Ask `librarian` about `topic`.
    Research { librarian: ImvuKey, topic: String },
    /// What it learned.
    Notes,
}

#[derive(Default, Serialize, Deserialize)]
struct Notebook {
    /// Questions in flight: correlation → topic.
    asked: Vec<(u64, String)>,
    notes: Vec<String>,
}

impl Imvu for Scout {
    const KIND: &'static str = "scout";
    type State = Notebook;
    type Msg = ScoutMsg;
    type Reply = Vec<String>;

    fn genesis(&self) -> Notebook {
        Notebook::default()
    }

    fn handle(&self, book: &mut Notebook, msg: ScoutMsg, ctx: &mut Context<'_>) -> Vec<String> {
        match msg {
            ScoutMsg::Research { librarian, topic } => {
                let correlation = ctx.ask(librarian, json!({"op": "lookup", "topic": topic}));
                book.asked.push((correlation, topic));
                Vec::new()
            }
            ScoutMsg::Notes => book.notes.clone(),
        }
    }

    fn on_reply(&self, book: &mut Notebook, correlation: u64, reply: Result<serde_json::Value, ActorError>, _ctx: &mut Context<'_>) {
        let topic = book.asked.iter().position(|(c, _)| *c == correlation).map(|at| book.asked.remove(at).1);
        let topic = topic.unwrap_or_else(|| "?".into());
        match reply {
            Ok(answer) => book.notes.push(format!("{topic}: {}", answer.as_str().unwrap_or_default())),
            Err(e) => book.notes.push(format!("{topic}: no answer ({e})")),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = RuntimeConfig::new(Arc::new(MemoryStore::new()), Arc::new(SystemClock::new()));
    let runtime = Runtime::builder(config).kind(Librarian).kind(Scout).start().await?;
    let tenant = TenantId::default_tenant();
    runtime.ensure_tenant(tenant, TenantPolicy::default()).await?;
    let me = Caller::internal(&tenant, "example");
    let librarian = runtime.create_imvu(&tenant, Librarian::KIND, &me).await?.key;
    let scout = runtime.create_imvu(&tenant, Scout::KIND, &me).await?.key;
    let scouts = runtime.kind_ref::<Scout>().ok_or("scout registered")?;
    for topic in ["raft", "swim"] {
        scouts.ask(&scout, ScoutMsg::Research { librarian, topic: topic.into() }).await?;
    }
    // The answers arrive as later messages; wait for both.
    for _ in 0..100 {
        let notes = scouts.ask(&scout, ScoutMsg::Notes).await?;
        if notes.len() == 2 {
            for note in notes {
                println!("{note}");
            }
            runtime.shutdown().await;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err("the librarian did not answer".into())
}
