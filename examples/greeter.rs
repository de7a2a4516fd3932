//! An IMVU as an author writes it: a greeter that remembers who it has met.
//!
//! Run: `cargo run --example greeter`

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vcos_actors::{Caller, Context, Imvu, MemoryStore, Runtime, RuntimeConfig, SystemClock, TenantId, TenantPolicy};

struct Greeter;

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Msg {
    Greet { name: String },
    Met,
}

#[derive(Default, Serialize, Deserialize)]
struct Memory {
    met: Vec<String>,
}

impl Imvu for Greeter {
    const KIND: &'static str = "greeter";
    type State = Memory;
    type Msg = Msg;
    type Reply = String;

    fn genesis(&self) -> Memory {
        Memory::default()
    }

    fn handle(&self, memory: &mut Memory, msg: Msg, _ctx: &mut Context<'_>) -> String {
        match msg {
            Msg::Greet { name } => {
                let again = memory.met.contains(&name);
                if !again {
                    memory.met.push(name.clone());
                }
                if again { format!("welcome back, {name}") } else { format!("hello, {name}") }
            }
            Msg::Met => memory.met.join(", "),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = RuntimeConfig::new(Arc::new(MemoryStore::new()), Arc::new(SystemClock::new()));
    let runtime = Runtime::builder(config).kind(Greeter).start().await?;
    let tenant = TenantId::default_tenant();
    runtime.ensure_tenant(tenant, TenantPolicy::default()).await?;
    let me = Caller::internal(&tenant, "example");
    let greeter = runtime.create_imvu(&tenant, Greeter::KIND, &me).await?.key;
    let typed = runtime.kind_ref::<Greeter>().ok_or("greeter registered")?;
    println!("{}", typed.ask(&greeter, Msg::Greet { name: "Ada".into() }).await?);
    println!("{}", typed.ask(&greeter, Msg::Greet { name: "Ada".into() }).await?);
    println!("met: {}", typed.ask(&greeter, Msg::Met).await?);
    runtime.shutdown().await;
    Ok(())
}
