//! Integration tests: real `git-p2p` binaries, real daemons on loopback (mDNS off), real git.
//! One test binary (faster to link); each module is one area.

mod announce;
mod catchup;
mod chat;
mod cli;
mod doctor;
mod evil;
mod faults;
mod fetch;
mod fetch_evil;
mod follow;
mod formats;
mod hostile;
mod kv;
mod lan;
mod log;
mod nat;
mod natlab;
mod node;
mod nostr;
mod properties;
mod relay;
mod repos;
mod restart;
mod skew;
mod socket;
mod sparse;
mod support;
mod sync_evil;
mod thread;
mod tui;
