//! The web client in a real browser: `tests/browser/chat.spec.mjs` drives headless
//! Chromium (playwright-core) against the real server started in-process.
//!
//! Needs Debian's `chromium`, `node`, and `npm ci --prefix tests/browser`. When one is
//! missing the test prints `skipped: …` and passes, unless `CORECAST_REQUIRE_EXTERNAL=1`
//! (CI sets it), where a missing dependency is a failure.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::{skip, TestServer};

/// Bound on the whole browser run (each step in the script has its own 30 s bound);
/// generous, so a loaded host passes: the run ends when the script does.
const TIMEOUT: Duration = Duration::from_secs(300);
/// How long the script gets to close Chromium after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(5);
const INSTALL_HINT: &str = "install: apt-get install chromium; npm ci --prefix tests/browser";

/// The programs and packages the browser test runs with.
struct Deps {
    chromium: PathBuf,
    node: PathBuf,
}

/// The first of `names` found as an executable file in a `PATH` directory.
fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// The dependencies, or a description of each one that is missing.
fn find_deps(browser_dir: &Path) -> Result<Deps, Vec<String>> {
    let chromium = on_path(&["chromium", "chromium-browser"]);
    let node = on_path(&["node"]);
    let playwright = browser_dir.join("node_modules/playwright-core/package.json");
    let mut missing = Vec::new();
    if chromium.is_none() {
        missing.push("chromium (or chromium-browser) not on PATH".to_owned());
    }
    if node.is_none() {
        missing.push("node not on PATH".to_owned());
    }
    if !playwright.is_file() {
        missing.push("tests/browser/node_modules/playwright-core not found".to_owned());
    }
    match (chromium, node) {
        (Some(chromium), Some(node)) if missing.is_empty() => Ok(Deps { chromium, node }),
        _ => Err(missing),
    }
}

/// Reads a child's pipe to the end on its own thread (so a full pipe never blocks it).
fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Waits for `child` until `deadline`; then asks it to stop (the script closes Chromium on
/// SIGTERM) and kills it after a grace period. `None` means it timed out.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<std::process::ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let grace = Instant::now() + GRACE;
    while Instant::now() < grace {
        if child.try_wait().ok().flatten().is_some() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn two_users_chat_in_headless_chromium() {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let deps = match find_deps(&browser_dir) {
        Ok(deps) => deps,
        Err(missing) => {
            let why = format!("{} ({INSTALL_HINT})", missing.join("; "));
            return skip("browser::two_users_chat_in_headless_chromium", &why);
        }
    };

    // Chromium is heavy on a small machine: run alone, not beside timing-sensitive tests.
    // Chromium offers permessage-deflate: with compression on for every frame, the chat
    // runs on the server's shared compressed frames and Chromium's compressed messages.
    let server = TestServer::start_alone_with(|c| {
        c.compression = true;
        c.compression_min_bytes = 0;
    });
    let url = format!("http://{}/", server.addr);
    // Screenshots beside the build output: <target>/browser/*.png.
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target dir").join("browser");
    let mut child = Command::new(&deps.node)
        .arg(browser_dir.join("chat.spec.mjs"))
        .arg(&url)
        .current_dir(&browser_dir)
        .env("CORECAST_CHROMIUM", &deps.chromium)
        .env("CORECAST_BROWSER_OUT", &out_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_until(&mut child, Instant::now() + TIMEOUT);
    let output = format!(
        "--- stdout ---\n{}--- stderr ---\n{}",
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default()
    );
    let compressed = server.http().get("/stats").json()["compression"]["frames"].as_u64().unwrap_or(0);
    server.stop();
    match status {
        Some(status) if status.success() => {
            println!("{output}");
            assert!(compressed > 0, "Chromium negotiated no compression: no compressed frame was sent");
        }
        Some(status) => panic!("browser test failed ({status}) against {url}:\n{output}"),
        None => panic!("browser test did not finish within {TIMEOUT:?} against {url}:\n{output}"),
    }
}
