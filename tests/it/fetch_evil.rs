//! A hostile git peer: "mallory" is a bare rust-libp2p swarm (not our binary) in a repository's
//! topic that answers `/git-p2p/upload-pack/1` streams with garbage pkt-lines, and sends garbage
//! on the streams it opens to a node. The fetching node must drop it and fetch from an honest
//! peer; the serving node must keep serving.

use std::time::Duration;

use git_p2p::node::mirror::UPLOAD_PACK;
use git_p2p::proto::repo::RepoId;
use git_p2p::proto::topic;
use libp2p::futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{gossipsub, identify, noise, tcp, yamux, Multiaddr, PeerId};

use crate::support::*;

#[derive(NetworkBehaviour)]
struct MalloryBehaviour {
    identify: identify::Behaviour,
    gossipsub: gossipsub::Behaviour,
    stream: libp2p_stream::Behaviour,
}

/// Garbage that looks like the start of pkt-lines and is not.
const GARBAGE: &[u8] = b"0032zzzz not a pkt-line at all\nffffGARBAGE\x00\x01\x02 0000 0001 9999";

/// Runs mallory on a thread: she dials `peers`, joins `repo`'s topic, answers every fetch with
/// garbage, and once connected sends one garbage fetch to each peer. Returns her PeerId.
fn mallory(peers: Vec<Multiaddr>, repo: RepoId, targets: Vec<PeerId>) -> PeerId {
    let key = Keypair::generate_ed25519();
    let id = key.public().to_peer_id();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
                .with_tokio()
                .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
                .expect("tcp transport")
                .with_behaviour(|key| {
                    let config = gossipsub::ConfigBuilder::default()
                        .heartbeat_initial_delay(Duration::from_millis(200))
                        .validation_mode(gossipsub::ValidationMode::Anonymous)
                        .message_id_fn(git_p2p::node::behaviour::message_id)
                        .build()
                        .expect("gossipsub config");
                    MalloryBehaviour {
                        identify: identify::Behaviour::new(
                            identify::Config::new("/git-p2p/1.0.0".to_string(), key.public())
                                .with_agent_version("mallory/6.6.6".to_string()),
                        ),
                        gossipsub: gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, config)
                            .expect("gossipsub"),
                        stream: libp2p_stream::Behaviour::new(),
                    }
                })
                .expect("behaviour")
                .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
                .build();
            swarm.behaviour_mut().gossipsub.subscribe(&topic::commits(&repo)).expect("subscribe");
            let mut control = swarm.behaviour().stream.new_control();
            let mut incoming = control.accept(UPLOAD_PACK).expect("accept");
            tokio::spawn(async move {
                while let Some((_, mut stream)) = incoming.next().await {
                    tokio::spawn(async move {
                        let mut byte = [0u8; 1];
                        while stream.read(&mut byte).await.is_ok_and(|n| n == 1) && byte[0] != b'\n' {}
                        let _ = stream.write_all(b"ok\n").await;
                        let _ = stream.write_all(GARBAGE).await;
                        let _ = stream.flush().await;
                        // Then hold the stream open, saying nothing more.
                        tokio::time::sleep(Duration::from_secs(120)).await;
                    });
                }
            });
            for target in targets {
                let mut control = control.clone();
                let repo = repo.clone();
                tokio::spawn(async move {
                    loop {
                        if let Ok(mut stream) = control.open_stream(target, UPLOAD_PACK).await {
                            let header = format!("{{\"repo\":\"{repo}\",\"protocol\":\"version=2\"}}\n");
                            let _ = stream.write_all(header.as_bytes()).await;
                            let _ = stream.write_all(GARBAGE).await;
                            let _ = stream.close().await;
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                });
            }
            for addr in peers {
                swarm.dial(addr).expect("dial");
            }
            loop {
                swarm.select_next_some().await;
            }
        });
    });
    id
}

#[test]
fn garbage_pkt_lines_from_a_provider_or_a_fetcher_harm_nobody() {
    let p = pair();
    let id = p.alice.git(&p.alice_repo, &["rev-list", "--max-parents=0", "HEAD"]).trim().to_string();
    let repo = RepoId::try_from(id.as_str()).expect("repo id");
    p.alice.ok_in(&p.alice_repo, &["refs", "publish"]);
    let alice = p.alice.peer_id();
    let alice_peer: PeerId = alice.parse().expect("peer id");
    let mallory = mallory(
        vec![p.alice.tcp_addr().parse().expect("addr"), p.bob.tcp_addr().parse().expect("addr")],
        repo,
        vec![alice_peer],
    );
    eventually(Duration::from_secs(20), "mallory in bob's view of the repository", || {
        p.bob
            .peers()
            .iter()
            .any(|x| {
                x["peer_id"] == mallory.to_string().as_str() && x["repos"].as_array().is_some_and(|r| !r.is_empty())
            })
            .then_some(())
    });
    // Alice's node survived mallory's garbage fetch; with alice away, bob's only provider is
    // mallory, and bob's fetch fails in words, soon.
    p.alice.ok(&["id"]);
    p.alice.ok(&["daemon", "stop"]);
    let url = format!("p2p://{id}/{alice}");
    let started = std::time::Instant::now();
    let mut cmd = std::process::Command::new("git");
    cmd.args(["clone", &url, "x"]).current_dir(p.bob.path("home"));
    p.bob.envs(&mut cmd);
    let out = cmd.output().expect("git clone");
    assert!(!out.status.success(), "nothing to clone from garbage");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot fetch"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(40), "took {:?}", started.elapsed());
    // Alice is back: the clone works, from her.
    p.alice.start();
    eventually(Duration::from_secs(20), "alice back in the repository's topic", || {
        p.bob
            .peers()
            .iter()
            .any(|x| x["peer_id"] == alice.as_str() && x["repos"].as_array().is_some_and(|r| !r.is_empty()))
            .then_some(())
    });
    p.bob.git(&p.bob.path("home"), &["clone", "-q", &url, "y"]);
    assert_eq!(
        p.bob.git(&p.bob.path("home/y"), &["rev-parse", "HEAD"]),
        p.alice.git(&p.alice_repo, &["rev-parse", "HEAD"])
    );
}
