//! `vcos canon …`: status, lag and membership of a running cluster, through any node's HTTP
//! facade (changes are forwarded to the region's leader).

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::http_client;

/// Options of `vcos canon`.
#[derive(Args, Debug)]
pub(crate) struct CanonArgs {
    /// HTTP URL of any node of the cluster.
    #[arg(long, default_value = "http://127.0.0.1:8080", value_name = "URL", global = true)]
    node: String,
    #[command(subcommand)]
    command: CanonCommand,
}

#[derive(Subcommand, Debug)]
enum CanonCommand {
    /// Every region's group as the node sees it: leader, term, applied index, lag.
    Status,
    /// Membership of a region's group.
    Members {
        #[command(subcommand)]
        command: MembersCommand,
    },
}

#[derive(Subcommand, Debug)]
enum MembersCommand {
    /// List the members of every group.
    List,
    /// Add a node as a learner (or as a voter once caught up, with --voter).
    Add {
        /// The node's id.
        #[arg(long)]
        id: u64,
        /// Its canon address, host:port.
        #[arg(long)]
        raft_addr: String,
        /// Its HTTP address, host:port.
        #[arg(long)]
        http_addr: String,
        /// Its home region.
        #[arg(long)]
        node_region: String,
        /// Add it as a voter (after it caught up as a learner).
        #[arg(long)]
        voter: bool,
        /// The group to change (default: the contacted node's region).
        #[arg(long)]
        region: Option<String>,
    },
    /// Promote a learner to voter (refused while it is far behind).
    Promote {
        /// The node's id.
        id: u64,
        /// The group to change (default: the contacted node's region).
        #[arg(long)]
        region: Option<String>,
    },
    /// Remove a node (refused when the group would lose its quorum).
    Remove {
        /// The node's id.
        id: u64,
        /// The group to change (default: the contacted node's region).
        #[arg(long)]
        region: Option<String>,
    },
}

pub(crate) fn run(args: CanonArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("start tokio")?;
    runtime.block_on(execute(args))
}

fn region_query(region: Option<&String>) -> String {
    region.map(|r| format!("?region={r}")).unwrap_or_default()
}

async fn execute(args: CanonArgs) -> anyhow::Result<()> {
    let node = args.node.as_str();
    match args.command {
        CanonCommand::Status => print_status(node, false).await,
        CanonCommand::Members { command: MembersCommand::List } => print_status(node, true).await,
        CanonCommand::Members { command: MembersCommand::Add { id, raft_addr, http_addr, node_region, voter, region } } => {
            let body = serde_json::json!({
                "node_id": id, "raft_addr": raft_addr, "http_addr": http_addr, "region": node_region,
                "role": if voter { "voter" } else { "learner" },
            });
            http_client::request_ok(node, "POST", &format!("/v1/canon/members{}", region_query(region.as_ref())), Some(body)).await?;
            println!("node {id} added{}", if voter { " as a voter" } else { " as a learner" });
            Ok(())
        }
        CanonCommand::Members { command: MembersCommand::Promote { id, region } } => {
            http_client::request_ok(node, "POST", &format!("/v1/canon/members/{id}/promote{}", region_query(region.as_ref())), None).await?;
            println!("node {id} promoted to voter");
            Ok(())
        }
        CanonCommand::Members { command: MembersCommand::Remove { id, region } } => {
            http_client::request_ok(node, "DELETE", &format!("/v1/canon/members/{id}{}", region_query(region.as_ref())), None).await?;
            println!("node {id} removed");
            Ok(())
        }
    }
}

async fn print_status(node: &str, members: bool) -> anyhow::Result<()> {
    let text = http_client::request_ok(node, "GET", "/v1/canon/status", None).await?;
    let status: serde_json::Value = serde_json::from_str(&text).context("status is not JSON")?;
    println!("node {} (region {})", status["node_id"], status["region"].as_str().unwrap_or("?"));
    let groups = status["groups"].as_array().cloned().unwrap_or_default();
    println!("{:<16} {:<10} {:>7} {:>6} {:>10} {:>10} {:>8} {:>12}", "REGION", "ROLE", "LEADER", "TERM", "LAST_LOG", "APPLIED", "LAG", "CONTACT_MS");
    for g in &groups {
        println!(
            "{:<16} {:<10} {:>7} {:>6} {:>10} {:>10} {:>8} {:>12}",
            g["region"].as_str().unwrap_or("?"),
            g["role"].as_str().unwrap_or("?"),
            g["leader_id"].as_u64().map_or("-".into(), |v| v.to_string()),
            g["term"].to_string(),
            g["last_log_index"].to_string(),
            g["applied_index"].to_string(),
            g["lag_entries"].to_string(),
            g["leader_contact_age_ms"].as_u64().map_or("-".into(), |v| v.to_string()),
        );
    }
    if members {
        for g in &groups {
            println!("\n{}:", g["region"].as_str().unwrap_or("?"));
            for m in g["members"].as_array().cloned().unwrap_or_default() {
                println!(
                    "  node {:<4} {:<8} region {:<12} raft {:<22} http {}",
                    m["node_id"].to_string(),
                    m["role"].as_str().unwrap_or("?"),
                    m["region"].as_str().unwrap_or("?"),
                    m["raft_addr"].as_str().unwrap_or("?"),
                    m["http_addr"].as_str().unwrap_or("?"),
                );
            }
        }
    }
    Ok(())
}
