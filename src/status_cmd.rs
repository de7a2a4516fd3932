//! `vcos status`: the cluster's members as one node sees them (`GET /v1/cluster`).

use anyhow::Context as _;
use clap::Args;

use crate::http_client;

/// Options of `vcos status`.
#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// HTTP URL of any node.
    #[arg(long, default_value = "http://127.0.0.1:8080", value_name = "URL")]
    node: String,
}

pub(crate) fn run(args: StatusArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("start tokio")?;
    runtime.block_on(print(&args.node))
}

async fn print(node: &str) -> anyhow::Result<()> {
    http_client::authority(node).context("--node")?;
    let text = http_client::request_ok(node, "GET", "/v1/cluster", None).await?;
    let view: serde_json::Value = serde_json::from_str(&text).context("the cluster view is not JSON")?;
    println!(
        "node {} serves {} of 256 buckets of its region{}",
        view["node_id"],
        view["buckets_served_here"],
        if view["buckets_served_here"] == 0 { " (none: cut off from its region's quorum, or starting)" } else { "" }
    );
    if let Some(desktops) = view.get("desktops").filter(|d| d.is_object()) {
        let pool: Vec<String> = desktops["pool"].as_object().into_iter().flatten().map(|(tier, n)| format!("{tier} {n}")).collect();
        println!(
            "desktops: {} sessions ({} active), limits by {}, warm pool: {}",
            desktops["sessions"],
            desktops["active"],
            desktops["limits"].as_str().unwrap_or("?"),
            if pool.is_empty() { "empty".to_owned() } else { pool.join(", ") }
        );
    }
    println!("{:<6} {:<12} {:<8} {:<14} {:>8} {:<22} {:<22} ROLES", "NODE", "REGION", "STATE", "INCARNATION", "BUCKETS", "HTTP", "GOSSIP");
    for m in view["members"].as_array().cloned().unwrap_or_default() {
        let roles: Vec<&str> = m["roles"].as_array().into_iter().flatten().filter_map(|r| r.as_str()).collect();
        println!(
            "{:<6} {:<12} {:<8} {:<14} {:>8} {:<22} {:<22} {}",
            m["node_id"].to_string(),
            m["region"].as_str().unwrap_or("?"),
            m["state"].as_str().unwrap_or("?"),
            m["incarnation"].to_string(),
            m["buckets_owned"].to_string(),
            m["http_addr"].as_str().unwrap_or("?"),
            m["gossip_addr"].as_str().unwrap_or("?"),
            roles.join(","),
        );
    }
    Ok(())
}
