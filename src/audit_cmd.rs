//! `vcos audit verify`: walks a tenant's (or the cluster's) audit chain on a node and reports
//! every altered, removed or truncated record; exits non-zero when the chain is not intact.

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};

use crate::http_client;

/// Options of `vcos audit`.
#[derive(Args, Debug)]
pub(crate) struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check a chain: every record linked to the one before it, the last to the head.
    Verify {
        /// The tenant whose chain to check (default: the cluster's chain).
        #[arg(long, value_name = "NAME")]
        tenant: Option<String>,
        /// HTTP URL of any node.
        #[arg(long, default_value = "http://127.0.0.1:8080", value_name = "URL")]
        node: String,
    },
}

pub(crate) fn run(args: AuditArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("start tokio")?;
    match args.command {
        AuditCommand::Verify { tenant, node } => runtime.block_on(verify(&node, tenant.as_deref())),
    }
}

async fn verify(node: &str, tenant: Option<&str>) -> anyhow::Result<()> {
    http_client::authority(node).context("--node")?;
    let (path, chain) = match tenant {
        Some(t) => {
            vcos_actors::TenantId::new(t).map_err(|e| anyhow::anyhow!("--tenant: {e}"))?;
            (format!("/v1/tenants/{t}/audit/verify"), format!("tenant {t}"))
        }
        None => ("/v1/audit/verify".to_owned(), "the cluster".to_owned()),
    };
    let text = http_client::request_ok(node, "GET", &path, None).await?;
    let report: serde_json::Value = serde_json::from_str(&text).context("the verification is not JSON")?;
    let problems: Vec<&str> = report["problems"].as_array().into_iter().flatten().filter_map(|p| p.as_str()).collect();
    if problems.is_empty() {
        println!("audit chain of {chain}: intact, {} records", report["count"]);
        return Ok(());
    }
    println!("audit chain of {chain}: {} records, {} problem(s):", report["count"], problems.len());
    for p in &problems {
        println!("  {p}");
    }
    bail!("the audit chain of {chain} is not intact")
}
