//! What the end-to-end tests share: child processes of the `vcos` binary with their output
//! captured, and the line `vcos up` prints when it serves.

#![allow(dead_code)] // each test crate uses a different part

pub(crate) mod cluster;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The cluster-admin key file `vcos up` writes in its data directory on a first start.
pub(crate) fn admin_key_file(data_dir: impl AsRef<Path>) -> PathBuf {
    data_dir.as_ref().join("admin.key")
}

/// The cluster-admin key `vcos up` wrote under `data_dir`.
pub(crate) fn admin_key(data_dir: impl AsRef<Path>) -> String {
    let path = admin_key_file(data_dir);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_owned()
}

/// An HTTP client that sends the cluster-admin key of the node whose data is in `data_dir`.
pub(crate) fn keyed_client(data_dir: impl AsRef<Path>, timeout: Duration) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = format!("Bearer {}", admin_key(data_dir)).parse().expect("a header value");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder().timeout(timeout).default_headers(headers).build().expect("a client")
}

/// A child process and everything it printed. Dropping it kills the process if it still runs;
/// if the test is failing, its output is printed to help.
pub(crate) struct Proc {
    pub(crate) name: String,
    pub(crate) child: Child,
    output: Arc<Mutex<String>>,
    /// Lines of stdout, as they come (the reader thread sends them).
    pub(crate) lines: mpsc::Receiver<String>,
    /// The threads draining stdout and stderr; they end at EOF.
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    /// Starts the binary with `args`, stdout and stderr captured.
    pub(crate) fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vcos"))
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the vcos binary starts");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        // Both pipes are drained to the end, so the child never blocks on a full pipe.
        let out_reader = std::thread::spawn({
            let output = output.clone();
            move || {
                let mut reader = BufReader::new(stdout);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match reader.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                            push_line(&output, &line);
                            let _ = tx.send(line);
                        }
                    }
                }
            }
        });
        let err_reader = std::thread::spawn({
            let output = output.clone();
            move || {
                let mut reader = BufReader::new(stderr);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match reader.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => push_line(&output, String::from_utf8_lossy(&buf).trim_end()),
                    }
                }
            }
        });
        Self { name: args.join(" "), child, output, lines, readers: vec![out_reader, err_reader] }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything printed so far (stdout and stderr interleaved by line).
    pub(crate) fn output(&self) -> String {
        self.output.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits for the process to exit, at most `deadline`; `None` if it still runs.
    pub(crate) fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if started.elapsed() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit and for its output to be read to the end.
    pub(crate) fn finish(&mut self, deadline: Duration) -> (ExitStatus, String) {
        let Some(status) = self.wait_exit(deadline) else {
            panic!("`vcos {}` did not exit within {deadline:?}; output:\n{}", self.name, self.output());
        };
        // The readers reach EOF just after the exit; wait for the last lines, briefly.
        let drained = Instant::now();
        while !self.readers.iter().all(JoinHandle::is_finished) && drained.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        (status, self.output())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- output of `vcos {}` ----\n{}---- end ----", self.name, self.output());
        }
    }
}

fn push_line(output: &Mutex<String>, line: &str) {
    let mut output = output.lock().unwrap_or_else(|p| p.into_inner());
    output.push_str(line);
    output.push('\n');
}


impl Proc {
    /// Waits until the process prints its `vcos up` line; returns the base URL.
    pub(crate) fn wait_up(&mut self, deadline: Duration) -> String {
        self.try_wait_up(deadline).unwrap_or_else(|why| panic!("{why}"))
    }

    /// As [`Proc::wait_up`], but a process that exits before printing its URL is an `Err` with
    /// what it printed (a caller may retry a port taken in the meantime).
    pub(crate) fn try_wait_up(&mut self, deadline: Duration) -> Result<String, String> {
        let started = Instant::now();
        loop {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if let Some(base) = parse_up_line(&line) {
                        return Ok(base);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(Duration::from_secs(5));
                    return Err(format!("`vcos up` closed its stdout before printing its URL (exit: {status:?}); output:\n{}", self.output()));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        return Err(format!("`vcos up` exited ({status}) before printing its URL; output:\n{}", self.output()));
                    }
                }
            }
            assert!(started.elapsed() < deadline, "`vcos up` printed no URL within {deadline:?}; output:\n{}", self.output());
        }
    }

    /// `kill -9`: no shutdown, no flush; only what was fsynced survives.
    pub(crate) fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `v-COS node up: http://127.0.0.1:PORT  (docs: …)` → `http://127.0.0.1:PORT`.
pub(crate) fn parse_up_line(line: &str) -> Option<String> {
    let rest = &line[line.find("v-COS node up: ")? + "v-COS node up: ".len()..];
    let url = rest.split_whitespace().next()?;
    let port = url.strip_prefix("http://127.0.0.1:")?;
    port.parse::<u16>().ok().filter(|p| *p != 0)?;
    assert!(rest.contains("(docs: "), "the up line names the docs: {line}");
    Some(url.to_owned())
}


/// This month as the bill routes take it (`2026-11`).
pub(crate) fn this_month() -> String {
    (2020..2100)
        .flat_map(|y| (1..=12).map(move |m| format!("{y}-{m:02}")))
        .find(|p| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis() as u64;
            vcos_actors::metering::month_range(p).is_some_and(|(from, to)| (from..to).contains(&now))
        })
        .expect("this month")
}
