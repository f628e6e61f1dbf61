//! Signed, versioned envelopes: the one wire format of every application message.
//!
//! An envelope names its kind, repo, author key and time, and carries its body as an exact JSON
//! string, so that the signature covers the bytes that were sent and not a re-serialisation.
//! Receivers call [`Envelope::decode`] (bounded, cheap) and then [`Envelope::verify`] before
//! they act on, store or forward anything.

use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use super::repo::RepoId;

pub const ENVELOPE_VERSION: u32 = 1;
/// Largest encoded envelope; bodies are announcements and chat lines, a few hundred bytes.
pub const MAX_ENVELOPE: usize = 16 * 1024;
/// Domain separation: a signature over an envelope is never valid for anything else.
const SIGNING_CONTEXT: &[u8] = b"git-p2p envelope v1\0";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    pub kind: String,
    /// Repo id (root commit, hex).
    pub repo: RepoId,
    /// The author's libp2p public key, protobuf-encoded, hex.
    pub author: String,
    /// Unix milliseconds when the author signed.
    pub ts: u64,
    /// The body as JSON text, exactly as signed.
    pub body: String,
    /// Signature (hex) over [`signing_bytes`].
    pub sig: String,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("envelope too large ({0} bytes, at most {MAX_ENVELOPE})")]
    TooLarge(usize),
    #[error("malformed envelope: {0}")]
    Malformed(String),
    #[error("unsupported envelope version {0}")]
    Version(u32),
    #[error("bad author key")]
    BadAuthor,
    #[error("bad signature")]
    BadSignature,
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    // Length-prefixed, so that no two field sequences share an encoding.
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn signing_bytes(v: u32, kind: &str, repo: &str, author: &str, ts: u64, body: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIGNING_CONTEXT.len() + 64 + body.len() + author.len());
    out.extend_from_slice(SIGNING_CONTEXT);
    out.extend_from_slice(&v.to_be_bytes());
    field(&mut out, kind.as_bytes());
    field(&mut out, repo.as_bytes());
    field(&mut out, author.as_bytes());
    out.extend_from_slice(&ts.to_be_bytes());
    field(&mut out, body.as_bytes());
    out
}

impl Envelope {
    pub fn sign(key: &Keypair, kind: &str, repo: &RepoId, ts: u64, body: String) -> Self {
        let author = hex::encode(key.public().encode_protobuf());
        let bytes = signing_bytes(ENVELOPE_VERSION, kind, repo.as_str(), &author, ts, &body);
        let sig = hex::encode(key.sign(&bytes).expect("ed25519 signing cannot fail"));
        Self { v: ENVELOPE_VERSION, kind: kind.to_string(), repo: repo.clone(), author, ts, body, sig }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("envelopes always serialise")
    }

    /// Parses an envelope, bounded in size; does not check the signature.
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        if bytes.len() > MAX_ENVELOPE {
            return Err(EnvelopeError::TooLarge(bytes.len()));
        }
        let env: Self = serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if env.v != ENVELOPE_VERSION {
            return Err(EnvelopeError::Version(env.v));
        }
        Ok(env)
    }

    /// A short stable id of this exact envelope (a hash of its signature), for de-duplication.
    pub fn id(&self) -> String {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(self.sig.as_bytes())[..16])
    }

    /// Checks the signature; returns the author's PeerId. The key and the signature must be in
    /// their one canonical form (lowercase hex, the key's own protobuf encoding): otherwise one
    /// signed message would have several encodings, each with another id, and be taken for
    /// several messages.
    pub fn verify(&self) -> Result<PeerId, EnvelopeError> {
        let (key, author) = author_key(&self.author)?;
        let sig = hex::decode(&self.sig).map_err(|_| EnvelopeError::BadSignature)?;
        if hex::encode(&sig) != self.sig {
            return Err(EnvelopeError::BadSignature);
        }
        let bytes = signing_bytes(self.v, &self.kind, self.repo.as_str(), &self.author, self.ts, &self.body);
        if !key.verify(&bytes, &sig) {
            return Err(EnvelopeError::BadSignature);
        }
        Ok(author)
    }

    /// [`Envelope::verify`] for a node that holds `key`: an envelope naming `key` as its author
    /// is checked by signing its bytes again and comparing. Ed25519 signatures are deterministic
    /// (the same key and bytes give the same signature), and signing costs a third of a
    /// verification; a signature of ours that differs (a signer that chose its nonce at random)
    /// is verified as any other. Envelopes of other authors are verified.
    pub fn verify_as(&self, key: &Keypair, author: &str) -> Result<PeerId, EnvelopeError> {
        if self.author == author {
            let bytes = signing_bytes(self.v, &self.kind, self.repo.as_str(), &self.author, self.ts, &self.body);
            if key.sign(&bytes).is_ok_and(|sig| hex::encode(sig) == self.sig) {
                return Ok(key.public().to_peer_id());
            }
        }
        self.verify()
    }
}

/// Authors' keys decoded lately, per thread. Decoding a key (an elliptic-curve point
/// decompression) costs a sixth of a verification, and a room hears the same few authors again
/// and again.
const KNOWN_KEYS: usize = 256;

thread_local! {
    static KEYS: std::cell::RefCell<KnownKeys> = std::cell::RefCell::new(KnownKeys::default());
}

/// At most [`KNOWN_KEYS`] keys by their canonical hex; the oldest goes first.
#[derive(Default)]
struct KnownKeys {
    keys: std::collections::HashMap<String, (PublicKey, PeerId)>,
    order: std::collections::VecDeque<String>,
}

/// The key an envelope's `author` field names, and its peer id. The field must be the key's one
/// canonical form (lowercase hex of its own protobuf encoding).
fn author_key(author: &str) -> Result<(PublicKey, PeerId), EnvelopeError> {
    if let Some(known) = KEYS.with(|k| k.borrow().keys.get(author).cloned()) {
        return Ok(known);
    }
    let key_bytes = hex::decode(author).map_err(|_| EnvelopeError::BadAuthor)?;
    let key = PublicKey::try_decode_protobuf(&key_bytes).map_err(|_| EnvelopeError::BadAuthor)?;
    if hex::encode(key.encode_protobuf()) != author {
        return Err(EnvelopeError::BadAuthor);
    }
    let peer = key.to_peer_id();
    KEYS.with(|k| {
        let mut k = k.borrow_mut();
        if k.order.len() >= KNOWN_KEYS {
            if let Some(oldest) = k.order.pop_front() {
                k.keys.remove(&oldest);
            }
        }
        k.order.push_back(author.to_string());
        k.keys.insert(author.to_string(), (key.clone(), peer));
    });
    Ok((key, peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Keypair {
        Keypair::ed25519_from_bytes([1u8; 32]).unwrap()
    }
    fn eve() -> Keypair {
        Keypair::ed25519_from_bytes([66u8; 32]).unwrap()
    }
    fn ab() -> RepoId {
        RepoId::try_from("ab".repeat(20)).unwrap()
    }

    #[test]
    fn signed_envelopes_verify_and_round_trip() {
        let env = Envelope::sign(&alice(), "announce", &ab(), 7, r#"{"x":1}"#.into());
        let decoded = Envelope::decode(&env.encode()).unwrap();
        assert_eq!(decoded, env);
        assert_eq!(decoded.verify().unwrap(), alice().public().to_peer_id());
    }

    #[test]
    fn forged_and_tampered_envelopes_are_refused() {
        let env = Envelope::sign(&alice(), "announce", &ab(), 7, "{}".into());
        // Eve signs but claims to be Alice.
        let mut forged = Envelope::sign(&eve(), "announce", &ab(), 7, "{}".into());
        forged.author = env.author.clone();
        assert_eq!(forged.verify(), Err(EnvelopeError::BadSignature));
        for tamper in [
            |e: &mut Envelope| e.body = r#"{"evil":1}"#.into(),
            |e: &mut Envelope| e.repo = RepoId::try_from("cd".repeat(20)).unwrap(),
            |e: &mut Envelope| e.kind = "chat".into(),
            |e: &mut Envelope| e.ts += 1,
        ] {
            let mut bad = env.clone();
            tamper(&mut bad);
            assert_eq!(bad.verify(), Err(EnvelopeError::BadSignature));
        }
        let mut bad = env.clone();
        bad.author = "zz".into();
        assert_eq!(bad.verify(), Err(EnvelopeError::BadAuthor));
        let mut bad = env.clone();
        bad.sig = "00".into();
        assert_eq!(bad.verify(), Err(EnvelopeError::BadSignature));
        // One message, one spelling: the same key or signature in upper-case hex would be a
        // second valid envelope with another id.
        let mut upper = env.clone();
        upper.sig = upper.sig.to_uppercase();
        assert_eq!(upper.verify(), Err(EnvelopeError::BadSignature));
        let mut upper = env;
        upper.author = upper.author.to_uppercase();
        assert_eq!(upper.verify(), Err(EnvelopeError::BadAuthor));
    }

    #[test]
    fn a_node_checks_its_own_envelopes_by_signing_them_again() {
        let me = alice();
        let author = hex::encode(me.public().encode_protobuf());
        let env = Envelope::sign(&me, "chat", &ab(), 7, "{}".into());
        assert_eq!(env.verify_as(&me, &author).unwrap(), me.public().to_peer_id());
        // Tampered, upper-cased or forged in our name: not the signature we make, and not valid.
        for tamper in [
            |e: &mut Envelope| e.body = r#"{"evil":1}"#.into(),
            |e: &mut Envelope| e.ts += 1,
            |e: &mut Envelope| e.sig = e.sig.to_uppercase(),
            |e: &mut Envelope| e.sig = "00".into(),
        ] {
            let mut bad = env.clone();
            tamper(&mut bad);
            assert_eq!(bad.verify_as(&me, &author), Err(EnvelopeError::BadSignature));
        }
        let mut forged = Envelope::sign(&eve(), "chat", &ab(), 7, "{}".into());
        forged.author = author.clone();
        assert_eq!(forged.verify_as(&me, &author), Err(EnvelopeError::BadSignature));
        // Another author's envelope is verified, good or bad.
        let theirs = Envelope::sign(&eve(), "chat", &ab(), 7, "{}".into());
        assert_eq!(theirs.verify_as(&me, &author).unwrap(), eve().public().to_peer_id());
        let mut bad = theirs;
        bad.ts += 1;
        assert_eq!(bad.verify_as(&me, &author), Err(EnvelopeError::BadSignature));
    }

    #[test]
    fn known_keys_are_bounded_and_a_forgotten_one_verifies_again() {
        let first = Envelope::sign(&alice(), "announce", &ab(), 7, "{}".into());
        assert_eq!(first.verify().unwrap(), alice().public().to_peer_id());
        for _ in 0..KNOWN_KEYS + 10 {
            let other = Envelope::sign(&Keypair::generate_ed25519(), "announce", &ab(), 7, "{}".into());
            assert!(other.verify().is_ok());
        }
        KEYS.with(|k| {
            let k = k.borrow();
            assert_eq!(k.keys.len(), KNOWN_KEYS);
            assert_eq!(k.order.len(), KNOWN_KEYS);
            assert!(!k.keys.contains_key(&first.author), "the oldest went first");
        });
        assert_eq!(first.verify().unwrap(), alice().public().to_peer_id());
        let mut forged = Envelope::sign(&eve(), "announce", &ab(), 7, "{}".into());
        forged.author = first.author.clone();
        assert_eq!(forged.verify(), Err(EnvelopeError::BadSignature), "a known key checks every signature");
    }

    #[test]
    fn malformed_oversized_and_future_envelopes_are_refused_without_panic() {
        assert!(matches!(Envelope::decode(&vec![b'x'; MAX_ENVELOPE + 1]), Err(EnvelopeError::TooLarge(_))));
        for junk in [&b""[..], b"{}", b"[1,2]", b"\xff\x00", b"{\"v\":1}"] {
            assert!(matches!(Envelope::decode(junk), Err(EnvelopeError::Malformed(_))), "{junk:?}");
        }
        let mut env = Envelope::sign(&alice(), "announce", &ab(), 7, "{}".into());
        env.v = 2;
        assert_eq!(Envelope::decode(&env.encode()), Err(EnvelopeError::Version(2)));
    }
}
