//! A `tidings meter all-in-one` for suites that drive it from outside (a Python client, a
//! browser): its own SQLite file and API port, stopped with SIGTERM and its directory removed
//! when dropped, so a failing test leaves nothing running.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running all-in-one.
pub struct AllInOne {
    child: Child,
    dir: PathBuf,
    /// Where its API listens.
    pub api: SocketAddr,
}

impl AllInOne {
    /// Starts one with `extra` arguments and waits (up to 60 s) until its API accepts
    /// connections.
    pub fn start(extra: &[&str]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tidings-aio-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = format!("sqlite://{}", dir.join("metering.sqlite").display());
        let api = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let listen = api.to_string();
        let log = std::fs::File::create(dir.join("all-in-one.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args([
                "meter",
                "all-in-one",
                "--store",
                &store,
                "--listen",
                &listen,
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tidings runs");
        let running = Self { child, dir, api };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(api).is_err() {
            assert!(
                Instant::now() < deadline,
                "the all-in-one API did not come up on {api}: {}",
                running.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        running
    }

    /// `http://ADDRESS`.
    pub fn url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// What it logged so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("all-in-one.log")).unwrap_or_default()
    }
}

impl Drop for AllInOne {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
