//! A hostile peer in `/git-p2p/sync/1`: "eve" is a bare rust-libp2p swarm (not our binary) that
//! opens sync streams to bob's node. An honest item she hands over proves the path works; a
//! batch with a forged item, or a frame over the bound, gets her cut off (banned, her
//! connection closed) and nothing of that batch is stored.

use std::sync::mpsc;
use std::time::Duration;

use git_p2p::proto::chat::{self, ChatMessage};
use git_p2p::proto::envelope::Envelope;
use git_p2p::proto::repo::RepoId;
use git_p2p::proto::sync::{Entry, Frame, Kind, PROTOCOL};
use libp2p::futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{identify, noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol};

use crate::catchup::{sync_status, tail};
use crate::evil::now_ms;
use crate::support::*;

#[derive(NetworkBehaviour)]
struct EveBehaviour {
    identify: identify::Behaviour,
    stream: libp2p_stream::Behaviour,
}

/// Eve on her own thread: for each list of raw bytes she is sent, she opens a sync stream to
/// bob, says hello for `repo`'s room (a set unlike his), reads his answer, sends the bytes and
/// closes the stream; she reports whether bob answered.
fn spawn_eve(
    key: Keypair,
    bob_addr: Multiaddr,
    bob: PeerId,
    repo: RepoId,
) -> (mpsc::Sender<Vec<u8>>, mpsc::Receiver<bool>) {
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let (report_tx, reports) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
                .with_tokio()
                .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
                .expect("tcp transport")
                .with_behaviour(|key| EveBehaviour {
                    identify: identify::Behaviour::new(
                        identify::Config::new("/git-p2p/1.0.0".to_string(), key.public())
                            .with_agent_version("eve/6.6.6".to_string()),
                    ),
                    stream: libp2p_stream::Behaviour::new(),
                })
                .expect("behaviour")
                .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
                .build();
            let mut control = swarm.behaviour().stream.new_control();
            swarm.dial(bob_addr).expect("dial");
            tokio::spawn(async move {
                loop {
                    swarm.select_next_some().await;
                }
            });
            let hello =
                Frame::Hello(vec![Entry { repo, kind: Kind::Room, since: 0, count: 999, fingerprint: [7; 16] }]);
            // Commands come from a std channel: wait for them off the runtime's thread.
            let (cmd_tx, mut cmd_rx) = tokio::sync::mpsc::unbounded_channel();
            std::thread::spawn(move || {
                while let Ok(bytes) = rx.recv() {
                    if cmd_tx.send(bytes).is_err() {
                        break;
                    }
                }
            });
            while let Some(bytes) = cmd_rx.recv().await {
                let answered = async {
                    let mut stream = loop {
                        match control.open_stream(bob, StreamProtocol::new(PROTOCOL)).await {
                            Ok(stream) => break stream,
                            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    };
                    stream.write_all(&hello.encode()).await.ok()?;
                    let mut len = [0u8; 4];
                    stream.read_exact(&mut len).await.ok()?;
                    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
                    stream.read_exact(&mut body).await.ok()?;
                    matches!(Frame::decode(&body), Ok(Frame::Differ(ref d)) if d == &[0]).then_some(())?;
                    stream.write_all(&bytes).await.ok()?;
                    stream.close().await.ok()
                };
                let ok = tokio::time::timeout(Duration::from_secs(20), answered).await.ok().flatten().is_some();
                if report_tx.send(ok).is_err() {
                    break;
                }
            }
        });
    });
    (tx, reports)
}

fn message(key: &Keypair, repo: &RepoId, text: &str) -> Vec<u8> {
    let m = ChatMessage { thread: None, text: text.into(), name: Some("eve".into()), nonce: text.len().to_string() };
    Envelope::sign(key, chat::KIND, repo, now_ms(), m.to_body()).encode()
}

fn banned(node: &Node, peer: &PeerId) -> bool {
    node.status()["banned"].as_array().is_some_and(|b| b.iter().any(|p| p == peer.to_string().as_str()))
}

#[test]
fn a_peer_that_syncs_forged_or_over_bound_items_is_cut_off_and_none_of_it_is_stored() {
    let bob = Node::new("bob");
    bob.start();
    let bob_repo = bob.repo("proj", 1);
    bob.ok_in(&bob_repo, &["init"]);
    let root = bob.git(&bob_repo, &["rev-parse", "HEAD"]).trim().to_string();
    let repo = RepoId::try_from(root.as_str()).expect("a repo id");
    let bob_id: PeerId = bob.peer_id().parse().expect("a peer id");
    let addr: Multiaddr = bob.tcp_addr().parse().expect("an address");

    let key = Keypair::generate_ed25519();
    let eve_id = key.public().to_peer_id();
    let (eve, answers) = spawn_eve(key.clone(), addr.clone(), bob_id, repo.clone());
    // An honest item: taken.
    let honest = Frame::Items { index: 0, envelopes: vec![message(&key, &repo, "honest hello from eve")] };
    eve.send(honest.encode()).expect("eve runs");
    assert!(answers.recv_timeout(Duration::from_secs(30)).expect("eve reports"), "bob answered eve's hello");
    eventually(Duration::from_secs(20), "bob to store eve's honest item", || {
        tail(&bob, &bob_repo, &[]).iter().any(|m| m["text"] == "honest hello from eve").then_some(())
    });
    assert!(!banned(&bob, &eve_id));

    // A batch with a forged item (the text changed after signing) next to a good one.
    let mut forged = Envelope::decode(&message(&key, &repo, "forged by eve")).expect("an envelope");
    forged.body = forged.body.replace("forged by eve", "FORGED by eve");
    let batch = vec![message(&key, &repo, "good, in the forged batch"), forged.encode()];
    eve.send(Frame::Items { index: 0, envelopes: batch }.encode()).expect("eve runs");
    answers.recv_timeout(Duration::from_secs(30)).expect("eve reports");
    eventually(Duration::from_secs(20), "bob to cut eve off", || banned(&bob, &eve_id).then_some(()));
    let room = tail(&bob, &bob_repo, &[]);
    assert!(
        !room.iter().any(|m| m["text"].as_str().is_some_and(|t| t.contains("forged batch") || t.contains("FORGED"))),
        "nothing of the forged batch: {room:?}"
    );
    eventually(Duration::from_secs(20), "eve's connection to be closed", || {
        (!bob.peers().iter().any(|p| p["peer_id"] == eve_id.to_string().as_str())).then_some(())
    });

    // Another peer sends a frame over the bound: cut off too, nothing stored.
    let key = Keypair::generate_ed25519();
    let mallory = key.public().to_peer_id();
    let (mallory_tx, answers) = spawn_eve(key.clone(), addr, bob_id, repo.clone());
    let mut huge = (2u32 * 1024 * 1024).to_be_bytes().to_vec();
    huge.extend(std::iter::repeat_n(5u8, 64 * 1024));
    mallory_tx.send(huge).expect("mallory runs");
    answers.recv_timeout(Duration::from_secs(30)).expect("mallory reports");
    eventually(Duration::from_secs(20), "bob to cut mallory off", || banned(&bob, &mallory).then_some(()));
    assert_eq!(sync_status(&bob)["items"], 1, "only eve's honest item came by sync");
    bob.ok(&["id"]);
}
