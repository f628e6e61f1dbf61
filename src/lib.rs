//! git-p2p: peer-to-peer collaboration for git repositories. See ARCHITECTURE.md for the map.

pub mod bridge;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod git;
pub mod hooks;
pub mod identity;
pub mod logging;
pub mod man;
pub mod node;
pub mod paths;
pub mod proto;
pub mod remote_helper;
pub mod spool;
pub mod store;
pub mod tui;
