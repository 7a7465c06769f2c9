//! Child processes of the bench (the `tidings` agents, oslo.messaging's Python): each killed and
//! reaped if still running when dropped, so that no error, timeout or cancelled future leaves
//! one behind, with its output in a log file whose end goes into error messages.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// How often a running child is looked at: std's `Child` has no asynchronous wait.
pub(crate) const POLL: Duration = Duration::from_millis(100);

/// A running child process and the file its output goes to.
pub(crate) struct ChildProcess {
    child: Child,
    log: PathBuf,
}

impl ChildProcess {
    pub(crate) fn new(child: Child, log: PathBuf) -> Self {
        Self { child, log }
    }

    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn log(&self) -> &Path {
        &self.log
    }

    /// Its exit status, if it has exited.
    pub(crate) fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// The last `lines` non-blank lines of its log, joined by ` | `.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let kept: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        kept[kept.len().saturating_sub(lines)..].join(" | ")
    }

    /// Waits for its exit until `deadline`: `None` when it is still running then.
    pub(crate) async fn wait_until(
        &mut self,
        deadline: Instant,
    ) -> std::io::Result<Option<ExitStatus>> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::process::Command;

    use super::*;

    #[test]
    fn a_dropped_process_is_killed_and_reaped() {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        drop(ChildProcess::new(child, PathBuf::from("/nonexistent")));
        // Reaped, so not even a zombie is left.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
