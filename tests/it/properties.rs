//! Property tests of every decoder that reads bytes from the network, a relay, the control socket
//! or the hook: random valid values round-trip, and their encodings mutated at random (bytes and
//! JSON values: bit flips, truncations, splices, case changes, wrong types, huge and odd values)
//! never panic a decoder; a mutation that still verifies must be the very message that was signed
//! (no second encoding of one signature, which would defeat de-duplication and rollback checks).
//!
//! Deterministic: `GIT_P2P_PROP_SEED` picks the seed (printed on failure), `GIT_P2P_PROP_CASES`
//! the number of values per property.

use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::panic::{catch_unwind, AssertUnwindSafe};

use git_p2p::control::proto::{self as control, Request, RequestFrame, PROTOCOL_VERSION};
use git_p2p::proto::announce::{self, Announcement, Commit};
use git_p2p::proto::chat::{self, ChatMessage};
use git_p2p::proto::envelope::Envelope;
use git_p2p::proto::kv::{record_key, Entry, Record, Who};
use git_p2p::proto::repo::{LocalPath, RepoId, RepoInfo};
use git_p2p::spool::Note;
use libp2p::identity::Keypair;
use serde_json::Value;

/// SplitMix64: small, fast, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn key(&mut self) -> Keypair {
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&self.bytes(32));
        Keypair::ed25519_from_bytes(seed).expect("32 bytes are an ed25519 secret")
    }
    fn hex_id(&mut self) -> String {
        hex::encode(self.bytes(20))
    }
    fn repo_id(&mut self) -> RepoId {
        RepoId::try_from(self.hex_id()).expect("40 lowercase hex digits are a repo id")
    }
    /// Text from a palette that reaches the edge cases: control characters, escapes, quotes,
    /// multi-byte and wide characters, JSON syntax.
    fn text(&mut self, max: usize) -> String {
        const PALETTE: &[&str] = &[
            "a",
            "Z",
            " ",
            "\n",
            "\t",
            "\u{1b}[2J",
            "\"",
            "\\",
            "é",
            "漢",
            "🦀",
            "\u{0}",
            "\u{7f}",
            "{",
            "}",
            ":",
            ",",
        ];
        let n = self.below(max + 1);
        (0..n).map(|_| PALETTE[self.below(PALETTE.len())]).collect()
    }
}

fn seed() -> u64 {
    std::env::var("GIT_P2P_PROP_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x6769_7470_3270)
}

fn cases() -> usize {
    std::env::var("GIT_P2P_PROP_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(150)
}

/// One to three byte-level mutations.
fn mutate_bytes(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(3) {
        let len = out.len();
        let at = rng.below(len + 1);
        match rng.below(8) {
            0 if len > 0 => out[at.min(len - 1)] ^= 1 << rng.below(8),
            1 if len > 0 => out[at.min(len - 1)] = rng.next() as u8,
            2 => out.truncate(at),
            3 => {
                let end = (at + 1 + rng.below(16)).min(len);
                out.drain(at.min(end)..end);
            }
            4 => {
                let n = 1 + rng.below(8);
                let junk = rng.bytes(n);
                out.splice(at..at, junk);
            }
            5 if len > 0 => {
                let from = rng.below(len);
                let end = (from + 1 + rng.below(32)).min(len);
                let piece = out[from..end].to_vec();
                out.splice(at..at, piece);
            }
            // Case changes keep JSON valid and hex decodable: the mutation that finds second
            // encodings of one signature.
            6 if len > 0 => {
                let i = at.min(len - 1);
                out[i] =
                    if out[i].is_ascii_lowercase() { out[i].to_ascii_uppercase() } else { out[i].to_ascii_lowercase() };
            }
            _ => {
                let n = 1 + rng.below(4);
                out.extend(rng.bytes(n));
            }
        }
    }
    out
}

/// A value of another kind or an extreme one.
fn odd_value(rng: &mut Rng) -> Value {
    match rng.below(10) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(2)),
        2 => Value::from(u64::MAX),
        3 => Value::from(-1),
        4 => Value::from(1.5e300),
        5 => Value::from(rng.text(40)),
        6 => Value::from("x".repeat(70_000)),
        7 => Value::Array(vec![Value::Null; rng.below(4)]),
        8 => serde_json::json!({ "nested": { "deeper": [1, "two", null] } }),
        _ => Value::from(rng.hex_id().to_uppercase()),
    }
}

/// One JSON-level mutation: a leaf replaced, a field dropped or added, a string edited.
fn mutate_json(rng: &mut Rng, value: &mut Value) {
    match value {
        Value::Object(map) if !map.is_empty() && rng.below(4) != 0 => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = &keys[rng.below(keys.len())];
            match rng.below(6) {
                0 => {
                    map.remove(key);
                }
                1 => {
                    map.insert(format!("unknown{}", rng.below(3)), odd_value(rng));
                }
                _ => mutate_json(rng, map.get_mut(key).expect("a key of this map")),
            }
        }
        Value::Array(items) if !items.is_empty() && rng.below(4) != 0 => {
            let i = rng.below(items.len());
            if rng.chance(5) {
                items.remove(i);
            } else {
                mutate_json(rng, &mut items[i]);
            }
        }
        Value::String(s) if rng.chance(2) => {
            let cut = s.char_indices().map(|(i, _)| i).nth(rng.below(s.chars().count() + 1)).unwrap_or(s.len());
            let tail = rng.text(3);
            s.replace_range(cut.., &tail);
        }
        Value::Number(_) if rng.chance(2) => *value = Value::from(rng.next()),
        _ => *value = odd_value(rng),
    }
}

/// Mutations of `encoded` (a JSON document): half byte-level, half JSON-level.
fn mutations(rng: &mut Rng, encoded: &[u8], n: usize) -> Vec<Vec<u8>> {
    let tree: Value = serde_json::from_slice(encoded).expect("the original is JSON");
    (0..n)
        .map(|_| {
            if rng.chance(2) {
                mutate_bytes(rng, encoded)
            } else {
                let mut t = tree.clone();
                for _ in 0..1 + rng.below(2) {
                    mutate_json(rng, &mut t);
                }
                serde_json::to_vec(&t).expect("a JSON value serialises")
            }
        })
        .collect()
}

/// Runs `check` on `input`; a panic is reported with the seed and the input, then re-raised.
fn no_panic(what: &str, input: &[u8], check: impl FnOnce()) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(check)) {
        let shown = String::from_utf8_lossy(&input[..input.len().min(600)]).into_owned();
        eprintln!("{what} failed (seed {}) on input: {shown}", seed());
        std::panic::resume_unwind(panic);
    }
}

fn random_commit(rng: &mut Rng) -> Commit {
    Commit {
        id: rng.hex_id(),
        parents: (0..rng.below(20)).map(|_| rng.hex_id()).collect(),
        author: rng.text(200),
        summary: rng.text(400),
        time: rng.next() as i64,
        ref_name: rng.chance(4).then(|| format!("refs/heads/{}", rng.text(300))),
    }
}

fn random_chat(rng: &mut Rng) -> ChatMessage {
    ChatMessage {
        thread: rng.chance(3).then(|| rng.hex_id()),
        text: format!("m{}", rng.text(60)),
        name: rng.chance(2).then(|| rng.text(20)),
        nonce: hex::encode(rng.bytes(8)),
    }
}

/// A signed envelope of a random kind and body: an announcement, a chat message or anything.
fn random_envelope(rng: &mut Rng) -> Envelope {
    let key = rng.key();
    let repo = rng.repo_id();
    let (kind, body) = match rng.below(3) {
        0 => (announce::KIND.to_string(), Announcement::new(random_commit(rng), Some(&rng.text(10))).to_body()),
        1 => (chat::KIND.to_string(), random_chat(rng).to_body()),
        _ => (rng.text(8), serde_json::to_string(&rng.text(30)).expect("a string serialises")),
    };
    Envelope::sign(&key, &kind, &repo, rng.next() >> 1, body)
}

#[test]
fn announcements_built_from_any_commit_are_valid_and_round_trip() {
    let mut rng = Rng(seed());
    for _ in 0..cases() * 4 {
        let commit = random_commit(&mut rng);
        let name = rng.text(200);
        let built = Announcement::new(commit.clone(), Some(&name));
        assert_eq!(built.validate(), Ok(()), "seed {}: {commit:?}", seed());
        let env = built.sign(&rng.key(), &rng.repo_id(), 1);
        assert_eq!(Announcement::from_envelope(&env), Ok(built));
    }
}

#[test]
fn envelopes_round_trip_and_no_mutation_panics_or_verifies_as_another_message() {
    let mut rng = Rng(seed());
    for _ in 0..cases() {
        let env = random_envelope(&mut rng);
        let encoded = env.encode();
        assert_eq!(Envelope::decode(&encoded).as_ref(), Ok(&env));
        assert!(env.verify().is_ok());
        for m in mutations(&mut rng, &encoded, 12) {
            no_panic("envelope", &m, || {
                let Ok(decoded) = Envelope::decode(&m) else { return };
                let _ = decoded.id();
                let _ = Announcement::from_envelope(&decoded);
                let _ = ChatMessage::from_envelope(&decoded);
                if decoded.verify().is_ok() {
                    assert_eq!(decoded, env, "a changed envelope still verifies");
                }
            });
        }
    }
}

#[test]
fn kv_records_round_trip_and_no_mutation_panics_or_verifies_as_another_entry() {
    let mut rng = Rng(seed());
    for _ in 0..cases() / 2 {
        let repo = rng.repo_id();
        let key = format!("refs/heads/{}", hex::encode(rng.bytes(3)));
        let mut record = Record::new(&repo, &key);
        for _ in 0..1 + rng.below(3) {
            let n = rng.below(40);
            let value = (!rng.chance(4)).then(|| rng.bytes(n));
            let who = Who { name: rng.chance(2).then(|| rng.text(20)), npub: None };
            let ts = rng.next() >> 1;
            let entry = Entry::sign_as(&rng.key(), &repo, &key, value.as_deref(), rng.next() >> 1, ts, who)
                .expect("a valid key and a small value");
            // A receiver whose clock is past any time the entries carry.
            assert_eq!(record.merge_entry(entry, u64::MAX), Ok(true));
        }
        let dht_key = record_key(&repo, &key);
        let encoded = record.encode();
        assert_eq!(Record::decode(&encoded, &repo, &dht_key).as_ref(), Ok(&record));
        assert_eq!(Record::decode_any(&encoded, &dht_key).as_ref(), Ok(&record));
        for m in mutations(&mut rng, &encoded, 12) {
            no_panic("kv record", &m, || {
                if let Ok(decoded) = Record::decode_any(&m, &dht_key) {
                    for e in &decoded.entries {
                        assert!(record.entries.contains(e), "a changed entry still verifies: {e:?}");
                    }
                }
            });
        }
        // Entries one at a time, as `kv set` hands them to the node and merges apply them.
        for entry in &record.entries {
            let encoded = serde_json::to_vec(entry).expect("entries serialise");
            for m in mutations(&mut rng, &encoded, 8) {
                no_panic("kv entry", &m, || {
                    let Ok(changed) = serde_json::from_slice::<Entry>(&m) else { return };
                    let _ = changed.value_bytes();
                    if changed.verify(&repo, &key).is_ok() {
                        assert_eq!(&changed, entry, "a changed entry still verifies");
                    }
                    let mut merged = record.clone();
                    if merged.merge_entry(changed, u64::MAX).is_ok() {
                        assert_eq!(merged.entries.len(), record.entries.len(), "one author, one entry");
                    }
                });
            }
        }
    }
}

#[test]
fn control_frames_round_trip_and_no_mutation_panics_a_decoder() {
    let mut rng = Rng(seed());
    for i in 0..cases() {
        // A path is any bytes but NUL: UTF-8 or not.
        let git_dir = rng.chance(2).then(|| {
            let bytes = rng.bytes(30).into_iter().map(|b| b.max(1)).collect();
            LocalPath::new(std::ffi::OsString::from_vec(bytes))
        });
        let repo = RepoInfo { id: rng.repo_id(), name: rng.text(20), git_dir };
        let req = match i % 11 {
            0 => Request::ChatSend { repo, envelope: random_envelope(&mut rng), thread: None },
            1 => Request::Announce { repo, envelope: random_envelope(&mut rng) },
            2 => {
                let filter = git_p2p::control::api::LogFilter {
                    authors: (0..rng.below(3)).map(|_| rng.text(52)).collect(),
                    branch: rng.chance(2).then(|| rng.text(30)),
                    since: rng.chance(2).then(|| rng.next()),
                    arrived_since: rng.chance(2).then(|| rng.next()),
                };
                let (limit, before) = (rng.below(1 << 20), rng.chance(2).then(|| rng.next()));
                Request::Log { repo: repo.id, limit, before, filter }
            }
            3 => {
                let n = rng.below(100);
                let value = rng.chance(4).then(|| hex::encode(rng.bytes(n)));
                Request::KvPut { repo, key: rng.text(30), value, name: rng.chance(2).then(|| rng.text(20)) }
            }
            4 => Request::KvList { repo: repo.id, after: rng.chance(2).then(|| rng.text(30)), all: rng.chance(2) },
            5 => Request::ChatHistory {
                room: rng.text(50),
                limit: rng.below(1000),
                before: Some(rng.next()),
                arrived_since: rng.chance(2).then(|| rng.next()),
            },
            6 => {
                let refs = (0..rng.below(5)).map(|_| (rng.text(30), rng.text(40))).collect();
                Request::RefsPublish { repo, refs, name: rng.chance(2).then(|| rng.text(20)) }
            }
            7 => {
                let commits = (0..rng.below(5)).map(|_| rng.text(40)).collect();
                Request::NotesIndex { repo, notes_ref: rng.text(30), commits, name: None }
            }
            8 => Request::UnregisterRepo { repo: repo.id },
            9 => Request::FeedCommits { repo: repo.id, prefix: rng.text(10), limit: rng.below(1000) },
            _ => Request::FollowChat { room: rng.text(50) },
        };
        let frame = RequestFrame { v: PROTOCOL_VERSION, id: rng.next(), req };
        let line = control::encode(&frame);
        let body = line.strip_suffix(b"\n").expect("a frame is a line");
        assert_eq!(control::decode_request(body).as_ref().ok(), Some(&frame));
        for m in mutations(&mut rng, body, 10) {
            no_panic("control frame", &m, || {
                let _ = control::decode_request(&m);
                let _ = control::decode_response(&m);
            });
        }
    }
}

#[test]
fn hook_notes_round_trip_and_any_text_parses_or_is_refused() {
    let mut rng = Rng(seed());
    for _ in 0..cases() * 4 {
        // What the hook's shell writes: paths are any bytes but NUL and newline, UTF-8 or not.
        let mut path = |n| -> Vec<u8> { rng.bytes(n).into_iter().filter(|b| !matches!(b, 0 | b'\n')).collect() };
        let cwd = [b"/".to_vec(), path(30)].concat();
        let git_dir = path(10);
        let pid = rng.next() as u32;
        let text = [b"git-p2p-note 2\n", &cwd[..], b"\n", &git_dir[..], format!("\n{pid}\nend\n").as_bytes()].concat();
        let note = Note::parse(&text).expect("a well-formed note");
        assert_eq!((note.cwd.as_os_str().as_bytes(), note.waiter), (&cwd[..], Some(pid)));
        let text = String::from_utf8_lossy(&text).into_owned();
        for m in mutations_text(&mut rng, &text, 8) {
            no_panic("hook note", m.as_bytes(), || {
                let _ = Note::parse(m.as_bytes()).map(|n| n.repo_dir());
            });
        }
    }
}

/// Byte mutations kept as (lossy) text, for line-based formats.
fn mutations_text(rng: &mut Rng, text: &str, n: usize) -> Vec<String> {
    (0..n).map(|_| String::from_utf8_lossy(&mutate_bytes(rng, text.as_bytes())).into_owned()).collect()
}

#[test]
fn relay_comments_of_any_shape_are_read_or_ignored() {
    use git_p2p::bridge::nip22::{self, Incoming, Scope};
    use nostr::{EventBuilder, Keys, Kind, Tag, TagKind, Timestamp};
    let mut rng = Rng(seed());
    let keys = Keys::generate();
    let repo = rng.repo_id();
    let repos = [(repo.clone(), "proj".to_string())];
    let scope = Scope { owner: keys.public_key(), identifier: "proj".into(), euc: repo.clone() };
    for _ in 0..cases() {
        // Ours round-trips, with or without a thread.
        let text = rng.text(30);
        let thread = rng.chance(2).then(|| rng.hex_id());
        let event = nip22::comment(&keys, &scope, &text, Some("{}"), thread.as_deref(), Timestamp::from(1)).unwrap();
        assert_eq!(nip22::read(&event, &repos), Some((repo.clone(), Incoming::Envelope("{}".into()))));
        // Anyone's comment with random tags: read as ours, as plain, or ignored; never a panic.
        let names = ["r", "A", "a", "git-p2p", "commit", "K", "e", "p", ""];
        let tags: Vec<Tag> = (0..rng.below(6))
            .map(|_| {
                let name = names[rng.below(names.len())];
                let values: Vec<String> = (0..rng.below(3))
                    .map(|_| match rng.below(4) {
                        0 => repo.to_string(),
                        1 => format!("30617:{}:proj", keys.public_key().to_hex()),
                        2 => format!("30617:{}", rng.text(10)),
                        _ => rng.text(20),
                    })
                    .collect();
                Tag::custom(TagKind::custom(name), values)
            })
            .collect();
        let kind = if rng.chance(4) { Kind::TextNote } else { Kind::Comment };
        let event = EventBuilder::new(kind, rng.text(40)).tags(tags).sign_with_keys(&Keys::generate()).unwrap();
        let input = nostr::JsonUtil::as_json(&event);
        no_panic("relay comment", input.as_bytes(), || {
            if let Some((found, _)) = nip22::read(&event, &repos) {
                assert_eq!(found, repo, "only one of our repositories");
                assert_eq!(event.kind, Kind::Comment);
            }
        });
    }
}

#[test]
fn a_damaged_spool_file_is_set_aside_never_lost() {
    use git_p2p::proto::outbox::OutboxEntry;
    use git_p2p::spool::{self, Item};
    let mut rng = Rng(seed());
    for _ in 0..cases() / 10 {
        let dir = tempfile::tempdir().expect("tempdir");
        let envelope = random_envelope(&mut rng);
        let repo = RepoInfo { id: envelope.repo.clone(), name: "proj".into(), git_dir: None };
        let entry = OutboxEntry { repo, envelope, thread: None };
        let good = spool::write(dir.path(), &entry).expect("spooled");
        let bytes = std::fs::read(&good).expect("read back");
        let spool_dir = spool::dir(dir.path());
        let damaged = mutations(&mut rng, &bytes, 10);
        for (i, m) in damaged.iter().enumerate() {
            std::fs::write(spool_dir.join(format!("z{i:02}.json")), m).expect("write");
        }
        let notes = dir.path().join("notes");
        let items = no_panic_value("spool", &bytes, || spool::read(dir.path(), &notes));
        assert!(items.iter().any(|(p, item)| p == &good && item == &Item::Entry(entry.clone())));
        let files = std::fs::read_dir(&spool_dir).expect("spool dir").count();
        assert_eq!(files, 1 + damaged.len(), "every file is still there, read or set aside");
    }
}

/// Like [`no_panic`], returning what `check` returns.
fn no_panic_value<T>(what: &str, input: &[u8], check: impl FnOnce() -> T) -> T {
    let mut out = None;
    no_panic(what, input, || out = Some(check()));
    out.expect("ran")
}
