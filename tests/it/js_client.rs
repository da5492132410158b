//! The JavaScript client library (`clients/js`) against this server: runs its `npm test`
//! with `CORECAST_BIN` set to the binary under test, so the library and the server cannot
//! drift apart.
//!
//! Needs `npm` and `npm ci --prefix clients/js`. When one is missing the test prints
//! `skipped: …` and passes, unless `CORECAST_REQUIRE_EXTERNAL=1` (CI sets it).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{skip, which};

/// Bound on the whole npm run (every test inside has its own bound).
const TIMEOUT: Duration = Duration::from_secs(600);

#[test]
fn js_client_npm_test() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js");
    let npm = which("npm");
    let mut missing = Vec::new();
    if npm.is_none() {
        missing.push("npm not on PATH");
    }
    if !dir.join("node_modules/typescript/package.json").is_file() {
        missing.push("clients/js/node_modules not found");
    }
    let Some(npm) = npm.filter(|_| missing.is_empty()) else {
        let why = format!("{} (install: npm ci --prefix clients/js)", missing.join("; "));
        return skip("js_client::js_client_npm_test", &why);
    };
    let mut child = Command::new(npm)
        .args(["test", "--silent"])
        .current_dir(&dir)
        .env("CORECAST_BIN", env!("CARGO_BIN_EXE_corecast"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start npm");
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for npm") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = format!(
        "--- stdout ---\n{}--- stderr ---\n{}",
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default()
    );
    match status {
        Some(status) if status.success() => println!("{output}"),
        Some(status) => panic!("npm test in clients/js failed ({status}):\n{output}"),
        None => panic!("npm test in clients/js did not finish within {TIMEOUT:?}:\n{output}"),
    }
}

/// Reads a child's pipe to the end on its own thread (so a full pipe never blocks it).
fn drain(pipe: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}
