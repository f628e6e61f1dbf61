//! Wire-level names and messages of the git-p2p network. Pure: no I/O, no clock.

pub mod announce;
pub mod chat;
pub mod envelope;
pub mod kv;
pub mod outbox;
pub mod peer;
pub mod remote;
pub mod repo;
pub mod sync;
pub mod topic;
