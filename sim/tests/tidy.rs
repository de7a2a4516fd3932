//! Tidy checks that keep the simulator deterministic by construction.
//!
//! tokio consults its (unseeded) RNG only to pick the first branch of an unbiased `select!`.
//! So every `select!` in this workspace is `biased;`. (On the simulated path, dependencies use
//! none or biased ones: ractor's actor loop is biased; axum's plain `serve` and hyper have none.)
//! And core crates read no OS clock, no thread RNG.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn every_select_is_biased() {
    let mut files = Vec::new();
    for dir in ["actors/src", "supervision/src", "api/src", "sim/src", "src", "cluster/src", "canon-raft/src", "gpu-workers/src"] {
        rust_files(&workspace().join(dir), &mut files);
    }
    let mut offenders = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("select!") && !code.contains("macro_rules") {
                let window = lines[i..(i + 4).min(lines.len())].join("\n");
                if !window.contains("biased;") {
                    offenders.push(format!("{}:{}", file.display(), i + 1));
                }
            }
        }
    }
    assert!(offenders.is_empty(), "unbiased select! (tokio's RNG is unseeded): {offenders:?}");
}

#[test]
fn core_crates_take_time_and_randomness_from_injected_sources() {
    let mut files = Vec::new();
    for dir in ["actors/src", "supervision/src/core", "cluster/src/membership"] {
        rust_files(&workspace().join(dir), &mut files);
    }
    let banned = ["SystemTime::now(", "thread_rng(", "rand::rng(", "std::thread::sleep("];
    let mut offenders = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for (i, line) in text.lines().enumerate() {
            if banned.iter().any(|b| line.contains(b)) {
                offenders.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:?}");
}
