//! The official `openai` Python client (pinned, from PyPI, into a venv under `target/`) against
//! `vcos up` serving the installed models: models, embeddings (base64, as the client asks),
//! chat, a stream with its usage, and errors raised as the client's own exception types.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::Proc;

/// The client version the test runs.
const OPENAI_PIN: &str = "openai==3.57.0";

/// A Python with the client: a venv made once under `target/`, or, where the venv module is
/// missing, the system's python3 with the client installed into a directory on `PYTHONPATH`.
fn client_python() -> Command {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    let venv = root.join("openai-client-venv");
    let lib = root.join("openai-client-lib");
    let venv_python = venv.join("bin").join("python");
    let ready = |dir: &PathBuf| std::fs::read_to_string(dir.join(".installed")).is_ok_and(|pin| pin == OPENAI_PIN);
    let with_lib = || {
        let mut python = Command::new("python3");
        python.env("PYTHONPATH", &lib);
        python
    };
    if ready(&venv) {
        return Command::new(venv_python);
    }
    if ready(&lib) {
        return with_lib();
    }
    let made = Command::new("python3").arg("-m").arg("venv").arg(&venv).status().is_ok_and(|s| s.success());
    if made {
        let installed = Command::new(venv.join("bin").join("pip")).args(["install", "-q", OPENAI_PIN]).status().expect("pip runs");
        assert!(installed.success(), "pip install {OPENAI_PIN} failed");
        std::fs::write(venv.join(".installed"), OPENAI_PIN).expect("mark the venv");
        return Command::new(venv_python);
    }
    let installed = Command::new("python3")
        .args(["-m", "pip", "install", "-q", "--target"])
        .arg(&lib)
        .arg(OPENAI_PIN)
        .status()
        .expect("python3 -m pip runs");
    assert!(installed.success(), "python3 -m pip install --target … {OPENAI_PIN} failed");
    std::fs::write(lib.join(".installed"), OPENAI_PIN).expect("mark the directory");
    with_lib()
}

#[test]
fn the_official_openai_client_works_against_up() {
    let (status, output) = Proc::spawn(&["models", "install"]).finish(Duration::from_secs(600));
    assert!(status.success(), "`vcos models install` failed:\n{output}");
    let mut python = client_python();
    let data = tempfile::tempdir().expect("temp dir");
    let dir = data.path().to_str().expect("UTF-8");
    let mut node = Proc::spawn(&["up", "--data-dir", dir, "--listen", "127.0.0.1:0"]);
    let base = node.wait_up(Duration::from_secs(120));
    let key = common::admin_key(data.path());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("python").join("openai_client.py");
    let run = python.arg(script).arg(&base).arg(key.trim()).output().expect("the client script runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success() && stdout.contains("OPENAI CLIENT OK"), "stdout:\n{stdout}\nstderr:\n{stderr}\nnode:\n{}", node.output());
}
