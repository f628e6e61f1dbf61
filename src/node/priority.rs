//! The CPU priority of the node's background work. What a user or a peer waits for (a message
//! on its way out, to followers or to the next peer) runs at the node's own priority; work
//! nobody waits for in that moment (replication's git processes, the threads that write the
//! store and fsync it) gives way on a busy machine and takes the CPU when it is free.

/// The nice value of background work (the node itself runs at the user's, usually 0).
pub const BACKGROUND_NICE: i32 = 10;

/// Starts `cmd` in a process group of its own, so that [`give_way_group`] reaches every process
/// it runs (git starts the remote helper, index-pack, pack-objects).
pub fn own_group(cmd: &mut tokio::process::Command) {
    cmd.process_group(0);
}

/// Lowers the CPU priority of the process group that `pid` (started with [`own_group`]) leads
/// to [`BACKGROUND_NICE`]; what it starts later inherits it.
pub fn give_way_group(pid: Option<u32>) {
    let Some(pid) = pid else { return };
    // SAFETY: setpriority(2) only changes the scheduling of the group; no memory is involved.
    let lowered = unsafe { libc::setpriority(libc::PRIO_PGRP, pid as libc::id_t, BACKGROUND_NICE) };
    if lowered != 0 {
        tracing::debug!(pid, error = %std::io::Error::last_os_error(), "cannot lower a background git's priority");
    }
}

/// Lowers the calling thread's CPU priority to [`BACKGROUND_NICE`] (on Linux, nice is a
/// thread's own: the event loop keeps its priority).
pub fn give_way_thread() {
    // SAFETY: gettid(2) cannot fail; setpriority(2) only changes this thread's scheduling.
    let lowered = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, BACKGROUND_NICE) };
    if lowered != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower a background thread's priority");
    }
}
