//! DHT key-value records (the groundwork of `git p2p kv`): a record holds one signed entry per
//! author; receivers verify every entry, keep the highest sequence number per author, refuse
//! forgeries, rollbacks and oversized values, and merge records from several peers the same way
//! on every node. Pure: no I/O, no clock.

use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use super::repo::RepoId;

/// Largest value; larger input is refused with a clear error (never truncated).
pub const MAX_VALUE: usize = 8 * 1024;
/// Longest user key, in bytes.
pub const MAX_KEY: usize = 256;
/// Entries (authors) per record; beyond it the entry with the oldest time is dropped.
pub const MAX_ENTRIES: usize = 64;
/// How far ahead of the receiver's clock an entry's time may be: more is a writer whose clock
/// is wrong (a day ahead, say), and its entry is refused, so that it neither shows as the
/// newest value for that long nor outlives the writer's correction. Ten minutes leave room
/// for clocks that are merely a little off.
pub const MAX_AHEAD_MS: u64 = 10 * 60 * 1000;
const SIGNING_CONTEXT: &[u8] = b"git-p2p kv v1\0";
/// The key whose entries are each author's whole set of refs (JSON: ref name -> object id), so
/// that `git p2p refs` needs one lookup, not one per ref. Each ref also has a key of its own,
/// its full name (`refs/heads/main`).
pub const REFS_KEY: &str = "refs";
/// Where notes live: `notes/<ref>` holds an author's list of annotated commits, and
/// `notes/<ref>/<commit>` each note's text ([`notes_key`]).
const NOTES_PREFIX: &str = "notes/";

/// The key of the notes in `notes_ref` (`refs/notes/commits`: `notes/commits`), or of the note
/// on `commit` there.
pub fn notes_key(notes_ref: &str, commit: Option<&str>) -> String {
    let short = notes_ref.strip_prefix("refs/notes/").unwrap_or(notes_ref);
    match commit {
        Some(commit) => format!("{NOTES_PREFIX}{short}/{commit}"),
        None => format!("{NOTES_PREFIX}{short}"),
    }
}

/// Which of git-p2p's own records `key` is, if it is one: the keys the node and `refs publish`
/// and `notes push` write. Users cannot set or remove them with `kv` (a `kv set refs ...` would
/// replace the refs peers see), and `kv ls` leaves them out.
pub fn reserved(key: &str) -> Option<Reserved> {
    if key == REFS_KEY || key.starts_with("refs/") {
        Some(Reserved::Refs)
    } else if key.starts_with(NOTES_PREFIX) {
        Some(Reserved::Notes)
    } else {
        None
    }
}

/// The kinds of reserved keys, each with the command that manages it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    Refs,
    Notes,
}

impl Reserved {
    /// What the keys hold.
    pub fn what(self) -> &'static str {
        match self {
            Reserved::Refs => "your published refs",
            Reserved::Notes => "your published notes",
        }
    }

    /// The command that writes them.
    pub fn command(self) -> &'static str {
        match self {
            Reserved::Refs => "git p2p refs publish",
            Reserved::Notes => "git p2p notes push",
        }
    }
}

/// A key a user may set or remove with `kv`: valid, and not one of git-p2p's own.
pub fn user_key(key: &str) -> Result<(), KvError> {
    validate_key(key)?;
    match reserved(key) {
        Some(kind) => Err(KvError::Reserved { key: key.to_string(), what: kind.what(), command: kind.command() }),
        None => Ok(()),
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvError {
    #[error("empty key")]
    EmptyKey,
    #[error("key too long ({0} bytes, at most {MAX_KEY})")]
    KeyTooLong(usize),
    #[error("key contains control characters")]
    KeyControl,
    #[error("{key:?} is a reserved key: it holds {what}, which {command} manages")]
    Reserved { key: String, what: &'static str, command: &'static str },
    #[error("value too large ({0} bytes, at most {MAX_VALUE})")]
    ValueTooLarge(usize),
    #[error("malformed record: {0}")]
    Malformed(String),
    #[error("record for another key or repository")]
    WrongKey,
    #[error("entry by {0} has a bad signature")]
    BadSignature(String),
    #[error("entry by {author} is older than the one held (sequence {got}, held {have})")]
    Rollback { author: String, have: u64, got: u64 },
    #[error("entry by {author} is dated {} min ahead of this machine's clock (its writer's clock is wrong)", ahead_ms / 60_000)]
    Future { author: String, ahead_ms: u64 },
}

pub fn validate_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    if key.len() > MAX_KEY {
        return Err(KvError::KeyTooLong(key.len()));
    }
    if key.chars().any(char::is_control) {
        return Err(KvError::KeyControl);
    }
    Ok(())
}

/// The DHT key of a user key in a repository's namespace.
pub fn record_key(repo: &RepoId, key: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(format!("git-p2p/1/{repo}/{key}").as_bytes()).to_vec()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The author's libp2p public key, protobuf-encoded, hex.
    pub author: String,
    /// The value (hex); None is a tombstone (`kv rm`).
    pub value: Option<String>,
    pub seq: u64,
    /// Unix milliseconds, the author's clock (shown, and used to pick what to drop when full).
    pub ts: u64,
    /// Who the author says they are (signed with the entry): display name and Nostr npub, so
    /// `kv get` can show names and `--author npub1...` can filter.
    #[serde(default)]
    pub who: Who,
    pub sig: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Who {
    pub name: Option<String>,
    pub npub: Option<String>,
}

fn optional(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        Some(v) => {
            out.push(1);
            field(out, v.as_bytes());
        }
        None => out.push(0),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub repo: RepoId,
    pub key: String,
    pub entries: Vec<Entry>,
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn signing_bytes(repo: &str, key: &str, value: Option<&str>, seq: u64, ts: u64, who: &Who) -> Vec<u8> {
    let mut out = SIGNING_CONTEXT.to_vec();
    field(&mut out, repo.as_bytes());
    field(&mut out, key.as_bytes());
    optional(&mut out, value);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&ts.to_be_bytes());
    optional(&mut out, who.name.as_deref());
    optional(&mut out, who.npub.as_deref());
    out
}

impl Entry {
    /// Signs `value` (None: a tombstone) for `key` in `repo`.
    pub fn sign(
        key_pair: &Keypair,
        repo: &RepoId,
        key: &str,
        value: Option<&[u8]>,
        seq: u64,
        ts: u64,
    ) -> Result<Self, KvError> {
        Self::sign_as(key_pair, repo, key, value, seq, ts, Who::default())
    }

    /// Like [`Entry::sign`], naming the author.
    pub fn sign_as(
        key_pair: &Keypair,
        repo: &RepoId,
        key: &str,
        value: Option<&[u8]>,
        seq: u64,
        ts: u64,
        who: Who,
    ) -> Result<Self, KvError> {
        validate_key(key)?;
        if let Some(v) = value {
            if v.len() > MAX_VALUE {
                return Err(KvError::ValueTooLarge(v.len()));
            }
        }
        let who = Who {
            name: who.name.map(|n| n.chars().filter(|c| !c.is_control()).take(128).collect()),
            npub: who.npub.filter(|n| n.len() <= 100),
        };
        let value = value.map(hex::encode);
        let bytes = signing_bytes(repo.as_str(), key, value.as_deref(), seq, ts, &who);
        let sig = hex::encode(key_pair.sign(&bytes).expect("ed25519 signing cannot fail"));
        Ok(Self { author: hex::encode(key_pair.public().encode_protobuf()), value, seq, ts, who, sig })
    }

    /// Checks the entry for `key` in `repo`; returns its author. The author key and signature
    /// must be in their one canonical form (lowercase hex, the key's own protobuf encoding):
    /// entries are told apart by author, so a second spelling of one author would pass as
    /// another author, outside the rollback check.
    pub fn verify(&self, repo: &RepoId, key: &str) -> Result<PeerId, KvError> {
        let bad = || KvError::BadSignature(self.author.chars().take(16).collect());
        let public =
            hex::decode(&self.author).ok().and_then(|b| PublicKey::try_decode_protobuf(&b).ok()).ok_or_else(bad)?;
        if hex::encode(public.encode_protobuf()) != self.author {
            return Err(bad());
        }
        if let Some(v) = &self.value {
            if v.len() > 2 * MAX_VALUE {
                return Err(KvError::ValueTooLarge(v.len() / 2));
            }
        }
        let sig = hex::decode(&self.sig).map_err(|_| bad())?;
        if hex::encode(&sig) != self.sig {
            return Err(bad());
        }
        let name_ok =
            self.who.name.as_ref().is_none_or(|n| n.chars().count() <= 128 && !n.chars().any(char::is_control));
        if !name_ok || self.who.npub.as_ref().is_some_and(|n| n.len() > 100) {
            return Err(bad());
        }
        let bytes = signing_bytes(repo.as_str(), key, self.value.as_deref(), self.seq, self.ts, &self.who);
        if !public.verify(&bytes, &sig) {
            return Err(bad());
        }
        Ok(public.to_peer_id())
    }

    pub fn value_bytes(&self) -> Option<Vec<u8>> {
        self.value.as_deref().and_then(|v| hex::decode(v).ok())
    }
}

impl Record {
    pub fn new(repo: &RepoId, key: &str) -> Self {
        Self { repo: repo.clone(), key: key.to_string(), entries: Vec::new() }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("records always serialise")
    }

    /// Decodes a record found under `dht_key` and checks it belongs there and to `repo`; every
    /// entry is verified. Used on incoming PUTs and on GET results.
    pub fn decode(bytes: &[u8], repo: &RepoId, dht_key: &[u8]) -> Result<Self, KvError> {
        let max = MAX_ENTRIES * (2 * MAX_VALUE + 1024) + 1024;
        if bytes.len() > max {
            return Err(KvError::Malformed(format!("{} bytes", bytes.len())));
        }
        let record: Self = serde_json::from_slice(bytes).map_err(|e| KvError::Malformed(e.to_string()))?;
        validate_key(&record.key)?;
        if record.repo != *repo || record_key(&record.repo, &record.key) != dht_key {
            return Err(KvError::WrongKey);
        }
        if record.entries.len() > MAX_ENTRIES {
            return Err(KvError::Malformed(format!("{} entries", record.entries.len())));
        }
        for e in &record.entries {
            e.verify(&record.repo, &record.key)?;
        }
        Ok(record)
    }

    /// Decodes a record found under `dht_key`, whatever its repository (a DHT node holds
    /// records of repos it does not have); the key must still be that record's own.
    pub fn decode_any(bytes: &[u8], dht_key: &[u8]) -> Result<Self, KvError> {
        #[derive(Deserialize)]
        struct Head {
            repo: RepoId,
        }
        let head: Head = serde_json::from_slice(bytes).map_err(|e| KvError::Malformed(e.to_string()))?;
        Self::decode(bytes, &head.repo, dht_key)
    }

    /// The entry of `author` (as entries name authors) in a record this node holds under
    /// `dht_key`, checked to belong there; only that entry's signature is verified again (every
    /// entry was verified when the record came in): reading our own entry of a record with many
    /// authors costs one verification, not one per author.
    pub fn entry_of(bytes: &[u8], repo: &RepoId, dht_key: &[u8], author: &str) -> Option<Entry> {
        let record: Self = serde_json::from_slice(bytes).ok()?;
        if record.repo != *repo || record_key(&record.repo, &record.key) != dht_key {
            return None;
        }
        let entry = record.entries.into_iter().find(|e| e.author == author)?;
        entry.verify(repo, &record.key).is_ok().then_some(entry)
    }

    /// Merges one entry: the highest seq per author wins; a lower one is a rollback and refused.
    /// Equal seqs keep the entry with the greater signature, so every node picks the same one.
    /// An entry dated more than [`MAX_AHEAD_MS`] after `now_ms` (the receiver's clock) is refused.
    pub fn merge_entry(&mut self, entry: Entry, now_ms: u64) -> Result<bool, KvError> {
        let peer = entry.verify(&self.repo, &self.key)?.to_string();
        // Named as `kv get` names authors: by the end of their PeerId.
        let author = || format!("..{}", &peer[peer.len().saturating_sub(6)..]);
        if entry.ts > now_ms.saturating_add(MAX_AHEAD_MS) {
            return Err(KvError::Future { author: author(), ahead_ms: entry.ts - now_ms });
        }
        if let Some(have) = self.entries.iter_mut().find(|e| e.author == entry.author) {
            if entry.seq < have.seq {
                return Err(KvError::Rollback { author: author(), have: have.seq, got: entry.seq });
            }
            if entry.seq == have.seq && entry.sig <= have.sig {
                return Ok(false);
            }
            *have = entry;
            return Ok(true);
        }
        self.entries.push(entry);
        if self.entries.len() > MAX_ENTRIES {
            let oldest = (0..self.entries.len()).min_by_key(|&i| (self.entries[i].ts, self.entries[i].sig.clone()));
            if let Some(i) = oldest {
                self.entries.remove(i);
            }
        }
        Ok(true)
    }

    /// Merges another copy of the same record (e.g. GET answers from several peers); entries
    /// that fail are skipped. Returns how many changed this record.
    pub fn merge(&mut self, other: Record, now_ms: u64) -> usize {
        other.entries.into_iter().filter_map(|e| self.merge_entry(e, now_ms).ok()).filter(|changed| *changed).count()
    }

    /// Live values, newest first (tombstones hide their author's older values).
    pub fn values(&self) -> Vec<&Entry> {
        let mut live: Vec<&Entry> = self.entries.iter().filter(|e| e.value.is_some()).collect();
        live.sort_by_key(|e| std::cmp::Reverse(e.ts));
        live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The receiver's clock in these tests (entries are dated 1..200).
    const NOW: u64 = 1000;

    fn repo() -> RepoId {
        RepoId::try_from("a".repeat(40)).unwrap()
    }

    fn alice() -> Keypair {
        Keypair::ed25519_from_bytes([1u8; 32]).unwrap()
    }
    fn bob() -> Keypair {
        Keypair::ed25519_from_bytes([2u8; 32]).unwrap()
    }

    fn entry(k: &Keypair, value: Option<&str>, seq: u64, ts: u64) -> Entry {
        Entry::sign(k, &repo(), "refs/heads/main", value.map(str::as_bytes), seq, ts).unwrap()
    }

    #[test]
    fn an_old_entry_respelled_is_not_another_author() {
        let mut r = Record::new(&repo(), "refs/heads/main");
        let old = entry(&alice(), Some("a1"), 1, 10);
        assert!(r.merge_entry(old.clone(), NOW).unwrap());
        assert!(r.merge_entry(entry(&alice(), Some("a2"), 2, 30), NOW).unwrap());
        // The same key or signature in upper-case hex would pass as a new author with the old
        // value, past the rollback check.
        for respell in
            [|e: &mut Entry| e.author = e.author.to_uppercase(), |e: &mut Entry| e.sig = e.sig.to_uppercase()]
        {
            let mut replay = old.clone();
            respell(&mut replay);
            assert!(matches!(r.merge_entry(replay, NOW), Err(KvError::BadSignature(_))));
        }
        assert_eq!(r.entries.len(), 1);
    }

    #[test]
    fn two_authors_keep_their_own_newest_value() {
        let mut r = Record::new(&repo(), "refs/heads/main");
        assert!(r.merge_entry(entry(&alice(), Some("a1"), 1, 10), NOW).unwrap());
        assert!(r.merge_entry(entry(&bob(), Some("b1"), 1, 20), NOW).unwrap());
        assert!(r.merge_entry(entry(&alice(), Some("a2"), 2, 30), NOW).unwrap());
        let values: Vec<Vec<u8>> = r.values().iter().filter_map(|e| e.value_bytes()).collect();
        assert_eq!(values, vec![b"a2".to_vec(), b"b1".to_vec()], "newest first, one per author");
    }

    #[test]
    fn a_tombstone_hides_the_authors_older_value() {
        let mut r = Record::new(&repo(), "refs/heads/main");
        r.merge_entry(entry(&alice(), Some("a1"), 1, 10), NOW).unwrap();
        r.merge_entry(entry(&alice(), None, 2, 20), NOW).unwrap();
        assert!(r.values().is_empty());
        assert!(r.merge_entry(entry(&alice(), Some("a1"), 1, 10), NOW).is_err(), "the old value cannot come back");
    }

    #[test]
    fn forgeries_rollbacks_tampering_oversize_and_foreign_keys_are_refused() {
        let mut r = Record::new(&repo(), "refs/heads/main");
        r.merge_entry(entry(&alice(), Some("a2"), 2, 10), NOW).unwrap();
        assert!(matches!(r.merge_entry(entry(&alice(), Some("a1"), 1, 5), NOW), Err(KvError::Rollback { .. })));
        let mut forged = entry(&bob(), Some("evil"), 9, 10);
        forged.author = entry(&alice(), Some("x"), 1, 1).author;
        assert!(matches!(r.merge_entry(forged, NOW), Err(KvError::BadSignature(_))));
        let mut tampered = entry(&alice(), Some("a3"), 3, 10);
        tampered.value = Some(hex::encode("a4"));
        assert!(matches!(r.merge_entry(tampered, NOW), Err(KvError::BadSignature(_))));
        let big = vec![b'x'; MAX_VALUE + 1];
        assert_eq!(Entry::sign(&alice(), &repo(), "k", Some(&big), 1, 1), Err(KvError::ValueTooLarge(MAX_VALUE + 1)));
        // Signed for another key: does not verify under this one.
        let other_key = Entry::sign(&alice(), &repo(), "refs/heads/dev", Some(b"v"), 5, 1).unwrap();
        assert!(r.merge_entry(other_key, NOW).is_err());
        // A record stored under a key outside the repo's namespace.
        let bytes = r.encode();
        assert_eq!(
            Record::decode(&bytes, &repo(), &record_key(&RepoId::try_from("b".repeat(40)).unwrap(), "refs/heads/main")),
            Err(KvError::WrongKey)
        );
        assert_eq!(Record::decode(&bytes, &repo(), &record_key(&repo(), "refs/heads/main")).unwrap(), r);
        assert!(matches!(Record::decode(b"{not json", &repo(), b"k"), Err(KvError::Malformed(_))));
    }

    #[test]
    fn an_entry_dated_far_ahead_of_the_receivers_clock_is_refused() {
        let now = 1_700_000_000_000;
        let mut r = Record::new(&repo(), "refs/heads/main");
        let day_ahead = entry(&alice(), Some("from the future"), now + 86_400_000, now + 86_400_000);
        assert!(matches!(r.merge_entry(day_ahead.clone(), now), Err(KvError::Future { .. })));
        assert!(r.entries.is_empty());
        let a_little_ahead = entry(&alice(), Some("ok"), now + 60_000, now + 60_000);
        assert_eq!(r.merge_entry(a_little_ahead, now), Ok(true), "a clock a minute off is fine");
        let mut copy = Record::new(&repo(), "refs/heads/main");
        copy.entries.push(entry(&bob(), Some("future"), now + MAX_AHEAD_MS + 1, now + MAX_AHEAD_MS + 1));
        assert_eq!(r.merge(copy, now), 0, "not from a peer's copy either");
        // Once the receiver's clock got there, it is an entry like any other.
        assert_eq!(r.merge_entry(day_ahead, now + 86_400_000), Ok(true));
    }

    #[test]
    fn the_authors_name_and_npub_are_signed() {
        let who = Who { name: Some("Alice".into()), npub: Some("npub1alice".into()) };
        let mut e = Entry::sign_as(&alice(), &repo(), "k", Some(b"v"), 1, 1, who).unwrap();
        assert!(e.verify(&repo(), "k").is_ok());
        e.who.name = Some("Mallory".into());
        assert!(e.verify(&repo(), "k").is_err(), "a changed name breaks the signature");
    }

    #[test]
    fn merging_copies_from_several_peers_converges() {
        let mut one = Record::new(&repo(), "refs/heads/main");
        let mut two = Record::new(&repo(), "refs/heads/main");
        one.merge_entry(entry(&alice(), Some("a1"), 1, 1), NOW).unwrap();
        one.merge_entry(entry(&bob(), Some("b2"), 2, 2), NOW).unwrap();
        two.merge_entry(entry(&alice(), Some("a3"), 3, 3), NOW).unwrap();
        two.merge_entry(entry(&bob(), Some("b1"), 1, 1), NOW).unwrap();
        let (mut x, mut y) = (one.clone(), two.clone());
        x.merge(two, NOW);
        y.merge(one, NOW);
        let values = |r: &Record| r.values().iter().filter_map(|e| e.value_bytes()).collect::<Vec<_>>();
        assert_eq!(values(&x), values(&y));
        assert_eq!(values(&x), vec![b"a3".to_vec(), b"b2".to_vec()]);
    }

    #[test]
    fn one_authors_entry_is_read_from_a_stored_record() {
        let mut r = Record::new(&repo(), "refs/heads/main");
        r.merge_entry(entry(&alice(), Some("a1"), 1, 10), NOW).unwrap();
        r.merge_entry(entry(&bob(), Some("b1"), 1, 10), NOW).unwrap();
        let key = record_key(&repo(), "refs/heads/main");
        let author = r.entries[0].author.clone();
        let found = Record::entry_of(&r.encode(), &repo(), &key, &author).expect("alice's entry");
        assert_eq!(found.value_bytes(), Some(b"a1".to_vec()));
        assert!(Record::entry_of(&r.encode(), &repo(), &record_key(&repo(), "other"), &author).is_none());
        let mut tampered = r.clone();
        tampered.entries[0].value = Some(hex::encode("evil"));
        assert!(Record::entry_of(&tampered.encode(), &repo(), &key, &author).is_none(), "verified");
    }

    #[test]
    fn git_p2ps_own_keys_are_reserved() {
        for key in ["refs", "refs/heads/main", "refs/tags/v1", "notes/commits", "notes/commits/abc"] {
            assert!(matches!(user_key(key), Err(KvError::Reserved { .. })), "{key}");
        }
        for key in ["refsx", "ref", "notes", "my/refs", "review-status", "notesy/x"] {
            assert_eq!(user_key(key), Ok(()), "{key}");
        }
        assert_eq!(notes_key("refs/notes/commits", None), "notes/commits");
        assert_eq!(notes_key("refs/notes/review", Some("ab")), "notes/review/ab");
        assert_eq!(reserved(&notes_key("anything", Some("c"))), Some(Reserved::Notes));
        let e = user_key("refs").unwrap_err().to_string();
        assert!(e.contains("git p2p refs publish") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn keys_are_checked_and_entries_bounded() {
        assert_eq!(validate_key(""), Err(KvError::EmptyKey));
        assert_eq!(validate_key("a\u{1b}b"), Err(KvError::KeyControl));
        assert_eq!(validate_key(&"k".repeat(MAX_KEY + 1)), Err(KvError::KeyTooLong(MAX_KEY + 1)));
        let mut r = Record::new(&repo(), "refs/heads/main");
        for i in 0..(MAX_ENTRIES as u64 + 5) {
            let k = Keypair::generate_ed25519();
            r.merge_entry(entry(&k, Some("v"), 1, 100 + i), NOW).unwrap();
        }
        assert_eq!(r.entries.len(), MAX_ENTRIES);
        assert!(r.entries.iter().all(|e| e.ts >= 105), "the oldest were dropped");
    }
}
