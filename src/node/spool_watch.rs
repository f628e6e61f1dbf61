//! Wakes the node when the hook leaves something in the spool or the notes dir (inotify):
//! the fast path of the hook cannot ring the control socket (shell builtins only), so the node
//! listens for files being closed after writing, or moved in.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use tokio::io::unix::AsyncFd;

pub struct SpoolWatch {
    fd: AsyncFd<OwnedFd>,
}

impl SpoolWatch {
    /// Watches the spool (entries are renamed into place) and the notes dir (the hook writes a
    /// note in place; the node's own renames there must not wake it again).
    pub fn new(spool: &Path, notes: &Path) -> io::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: inotify_init1 takes flags only; a non-negative result is a new fd we own.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a valid, open fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        for (dir, mask) in [(spool, libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO), (notes, libc::IN_CLOSE_WRITE)] {
            let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
            // SAFETY: `fd` is an inotify fd and `path` a NUL-terminated string that outlives the call.
            let watch = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) };
            if watch < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: `fd` is an open fd that the AsyncFd owns from here on and never replaces.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }

    /// Resolves once something was written into or moved into the directory since the last call.
    pub async fn changed(&self) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        loop {
            let mut guard = self.fd.readable().await?;
            let read = guard.try_io(|fd| {
                // SAFETY: reading into a buffer we own, at most its length.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n)
                }
            });
            match read {
                Ok(Ok(_)) => {
                    // Drain what else is queued; one wake-up is enough for a burst.
                    // SAFETY: as above.
                    while unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
                    return Ok(());
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_written_into_either_directory_wakes_the_watcher() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let watch = SpoolWatch::new(a.path(), b.path()).unwrap();
            let quiet = tokio::time::timeout(std::time::Duration::from_millis(50), watch.changed()).await;
            assert!(quiet.is_err(), "nothing happened yet");
            for dir in [&a, &b] {
                std::fs::write(dir.path().join("hook-1.note"), "x").unwrap();
                tokio::time::timeout(std::time::Duration::from_secs(5), watch.changed())
                    .await
                    .expect("woken by the write")
                    .unwrap();
            }
        });
    }
}
