//! The control socket: protocol types shared by both ends, the blocking client, and the server.

pub mod client;
pub mod proto;
pub mod server;

pub use client::{Client, ClientError};
