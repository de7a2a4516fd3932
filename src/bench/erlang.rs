//! Runs the Erlang/OTP peer (../shared/peers/erlang_bench.sh) and parses its
//! `erlang <metric> <value> <unit>` lines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// Where the peer scripts are: `$VCOS_PEERS_DIR`, else `../shared/peers` from the repository.
pub(crate) fn peers_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VCOS_PEERS_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("shared").join("peers")
}

/// Runs the Erlang benchmark; metric name → value.
pub(crate) fn run() -> anyhow::Result<BTreeMap<String, f64>> {
    let script = peers_dir().join("erlang_bench.sh");
    if !script.exists() {
        bail!("peer script {} not found (set VCOS_PEERS_DIR)", script.display());
    }
    if Command::new("erl").arg("-version").output().is_err() {
        bail!("`erl` not found: install Erlang/OTP with `apt-get install -y erlang-base`");
    }
    let out = Command::new("sh").arg(&script).output().with_context(|| format!("run {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(parse(&String::from_utf8_lossy(&out.stdout)))
}

fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            (parts.next()? == "erlang").then_some(())?;
            let metric = parts.next()?.to_owned();
            let value: f64 = parts.next()?.parse().ok()?;
            Some((metric, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_peer_lines() {
        let m = super::parse("erlang spawn_rate 312000.5 procs/s\nnoise\nerlang mem_per_idle_proc 2697 bytes\n");
        assert_eq!(m.get("spawn_rate"), Some(&312000.5));
        assert_eq!(m.get("mem_per_idle_proc"), Some(&2697.0));
        assert_eq!(m.len(), 2);
    }
}
