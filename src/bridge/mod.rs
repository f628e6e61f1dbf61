//! The Nostr bridge. For now only the NIP-34 event builders (pure); the relay client and the
//! event outbox come with the bridge itself.

pub mod nip34;
