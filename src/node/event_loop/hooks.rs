//! The event loop's side of the hook: its wake-ups (the spool changed, a held note may go, the
//! survey of registered repositories) turned into announcements, then made durable.

use super::EventLoop;
use crate::clock::Now;
use crate::node::disk::NodeDisk;
use crate::node::hook_notes::Wake;

impl EventLoop {
    pub(super) fn hook_wake(&mut self, wake: Wake) {
        match wake {
            Wake::Survey(hooked) => self.hooks.catch_up(hooked, &mut self.service, disk!(self), &self.store),
            Wake::Spool(changed) => {
                if let Err(e) = changed {
                    tracing::warn!(error = %e, "spool watch failed; reading the spool every second");
                    self.hooks.unwatch();
                }
                self.spool_changed(false);
            }
            Wake::Released => self.spool_changed(false),
        }
        if self.hooks.take_wrote() {
            self.durability.wrote();
        }
    }

    /// Something arrived in the spool, a held note may go now, or (`reflogs`) the registered
    /// repositories' reflogs may have commits no note or spool file tells of: publish first, then
    /// make it durable off this thread.
    pub(super) fn spool_changed(&mut self, reflogs: bool) {
        self.hooks.ingest(&mut self.service, disk!(self), &self.store);
        if reflogs {
            let repos = self.service.repos().to_vec();
            self.hooks.read_reflogs(&repos, &mut self.service, disk!(self), &self.store);
        }
        self.service.flush(Now::system(), disk!(self));
        self.run_io();
        if self.hooks.take_wrote() {
            self.durability.wrote();
        }
        self.durability.sync_soon(&self.store);
    }
}
