//! Holds a hook's note until the git process that ran the hook has exited.
//!
//! The post-commit hook runs at the very end of `git commit`; a node that reads the reflog, signs
//! and publishes at that moment shares the CPU with git while it is still finishing, and on a
//! small machine that shows in the commit's time. The note names the hook's parent (git), so the
//! node waits for it to exit (a pidfd becomes readable then), at most [`HOLD_AT_MOST`]: a long
//! running parent (a rebase that commits many times, a tool that runs hooks itself) delays the
//! announcement by that much, never more. What the user waits for (`git commit` returning) is
//! then also the moment the node starts.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, SystemTime};

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

/// Longest a note waits for its git process.
pub const HOLD_AT_MOST: Duration = Duration::from_secs(2);

pub struct HookWaits {
    /// Processes being waited for.
    pending: HashSet<u32>,
    done_tx: mpsc::UnboundedSender<u32>,
    done_rx: mpsc::UnboundedReceiver<u32>,
}

impl Default for HookWaits {
    fn default() -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Self { pending: HashSet::new(), done_tx, done_rx }
    }
}

impl HookWaits {
    /// Whether a note written at `written` by a hook whose parent is `pid` must wait: the parent
    /// still runs and the note is younger than [`HOLD_AT_MOST`]. When it must, [`Self::done`]
    /// resolves once the parent exited or the time is up. Must be called inside the runtime.
    pub fn hold(&mut self, pid: u32, written: SystemTime) -> bool {
        let age = written.elapsed().unwrap_or_default();
        let Some(left) = HOLD_AT_MOST.checked_sub(age).filter(|l| !l.is_zero()) else { return false };
        if self.pending.contains(&pid) {
            return true;
        }
        // Gone (or no pidfd on this kernel): nothing to wait for.
        let Ok(fd) = pidfd_open(pid) else { return false };
        if exited(&fd) {
            return false;
        }
        // SAFETY: `fd` is an open pidfd that the AsyncFd owns from here on and never replaces.
        let Ok(fd) = (unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }) else {
            return false;
        };
        self.pending.insert(pid);
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(left, fd.readable()).await;
            let _ = done.send(pid);
        });
        true
    }

    /// Resolves when a process being waited for has exited (or its wait timed out).
    pub async fn done(&mut self) -> u32 {
        // Never None: we keep a sender.
        let pid = self.done_rx.recv().await.unwrap_or_default();
        self.pending.remove(&pid);
        pid
    }
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    // SAFETY: pidfd_open takes a pid and flags; a non-negative result is a new fd we own.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    let raw = i32::try_from(raw).map_err(io::Error::other)?;
    // SAFETY: `raw` is a valid, open fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A pidfd is readable once its process has exited.
fn exited(fd: &OwnedFd) -> bool {
    let mut poll = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd we own, no wait.
    let n = unsafe { libc::poll(&mut poll, 1, 0) };
    n != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_waits_for_its_process_and_no_longer() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut waits = HookWaits::default();
            let now = SystemTime::now();
            // A process that exited (a reaped child) or never was: no wait.
            let mut gone = std::process::Command::new("true").spawn().unwrap();
            let gone_pid = gone.id();
            gone.wait().unwrap();
            assert!(!waits.hold(gone_pid, now));
            // A running one: held until it exits, then `done` names it.
            let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
            assert!(waits.hold(child.id(), now));
            assert!(waits.hold(child.id(), now), "still held, one wait");
            let quiet = tokio::time::timeout(Duration::from_millis(50), waits.done()).await;
            assert!(quiet.is_err(), "it still runs");
            child.kill().unwrap();
            let pid = tokio::time::timeout(Duration::from_secs(5), waits.done()).await.expect("woken at exit");
            assert_eq!(pid, child.id());
            child.wait().unwrap();
            // A note older than the limit is not held, running parent or not.
            let me = std::process::id();
            assert!(!waits.hold(me, now - HOLD_AT_MOST));
        });
    }
}
