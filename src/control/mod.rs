//! The control socket: the wire (`proto`), the typed requests and answers both ends share
//! (`api`), the blocking client and its followers (`follow`), and the server. It knows nothing of the node behind it.

pub mod api;
pub mod client;
pub mod follow;
pub mod proto;
pub mod server;

pub use client::{Client, ClientError};
pub use follow::{Feed, Gap, Room, Tail};
