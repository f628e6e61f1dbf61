//! The libp2p behaviour of a node: which protocols it speaks and how each is tuned.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::StreamProtocol;
use libp2p::{allow_block_list, autonat, connection_limits, dcutr, gossipsub, identify, kad, mdns, ping, relay};

use crate::config::{DhtMode, NodeConfig, RelayService};

/// Our Kademlia protocol: a private DHT, never mixed with the public IPFS one.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/git-p2p/kad/1.0.0");
/// Identify's protocol version string; peers that speak another one are not git-p2p nodes.
pub const IDENTIFY_PROTOCOL: &str = "/git-p2p/1.0.0";
/// Largest gossip message; announcements and chat lines are far smaller.
pub const MAX_GOSSIP_MESSAGE: usize = 64 * 1024;

/// Why the behaviour could not be set up (libp2p reports some of these as plain text).
#[derive(Debug, thiserror::Error)]
pub enum BehaviourError {
    #[error("gossipsub config: {0}")]
    GossipConfig(#[from] gossipsub::ConfigBuilderError),
    #[error("gossipsub: {0}")]
    Gossipsub(String),
    #[error("gossipsub scoring: {0}")]
    Scoring(String),
    #[error("mDNS: {0}")]
    Mdns(std::io::Error),
}

/// Connections a node keeps at most: enough for everyone of a busy repository (we dial up to
/// 50 peers, and others dial us), few enough that a flood of connections cannot exhaust the
/// node; per peer a few (TCP and QUIC, both directions), so one peer cannot take them all.
const MAX_CONNECTIONS: u32 = 256;
const MAX_INCOMING: u32 = 192;
const MAX_PENDING: u32 = 64;
const MAX_PER_PEER: u32 = 4;

fn connection_limits() -> connection_limits::Behaviour {
    connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_established(Some(MAX_CONNECTIONS))
            .with_max_established_incoming(Some(MAX_INCOMING))
            .with_max_pending_incoming(Some(MAX_PENDING))
            .with_max_pending_outgoing(Some(MAX_PENDING))
            .with_max_established_per_peer(Some(MAX_PER_PEER)),
    )
}

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// First: a connection over the limits, or of a peer cut off for flooding, is denied before
    /// any other protocol sees it.
    pub limits: connection_limits::Behaviour,
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    /// At most `p2p.max-peers` peers, and which of their connections stay open while idle.
    pub bound: super::bound::Bound,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub gossipsub: gossipsub::Behaviour,
    pub kad: kad::Behaviour<super::kad_store::PersistentStore>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    /// Raw streams: `/git-p2p/upload-pack/1` (git objects from and to mirrors, `node::mirror`),
    /// over a direct connection when there is one (`node::direct_streams`).
    pub stream: super::direct_streams::PreferDirect<libp2p_stream::Behaviour>,
    /// NAT traversal (`node::nat`): reservations on relays and relayed connections through them,
    pub relay_client: relay::client::Behaviour,
    /// relaying for others (off with `p2p.relay-service=off`; `node::nat` switches it),
    pub relay: Toggle<relay::Behaviour>,
    /// hole punching that turns a relayed connection into a direct one,
    pub dcutr: dcutr::Behaviour,
    /// and AutoNAT v2: peers dial our address candidates back (client), we dial theirs (server).
    pub autonat: autonat::v2::client::Behaviour,
    pub autonat_server: autonat::v2::server::Behaviour,
}

/// Relay limits. libp2p's defaults (2 min and 128 KiB per circuit) fit a hole punch only; here a
/// relayed connection carries everything when hole punching fails (symmetric NATs): gossip,
/// DHT traffic, and git fetches. A circuit lasts up to 30 min (a served fetch's own limit) and
/// carries up to 256 MiB (a sizeable clone; larger fetches fail over a relay and wait for a
/// direct connection); then the peers make a new circuit. 16 circuits and 128 reservations at
/// once (the defaults), 4 circuits per peer: a relay's cost stays bounded and one peer cannot
/// take every circuit.
///
/// Rates: the defaults (per peer 30 requests, one more every 2 min; per IP address 60, one more
/// every minute) are sized for the public IPFS network. Ours hands relayed addresses around in
/// the DHT, and a lookup dials whoever it is told of: every dial of a node that left (its slot
/// gone) is one circuit request, denied at once but counted, and all the nodes behind one NAT
/// (an office, or a site of the NAT lab) share one IP address: a few lookups that each dial a
/// dozen departed nodes would use up a site's 60 for a minute, and its nodes could not meet.
/// So: a peer gets 60 requests and one more per second, an IP address 240 and four more per
/// second; a denied request costs the relay one small message.
pub fn relay_config() -> relay::Config {
    use std::num::NonZeroU32;
    let n = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
    let config = relay::Config {
        max_circuit_duration: Duration::from_secs(30 * 60),
        max_circuit_bytes: 256 << 20,
        max_circuits_per_peer: 4,
        reservation_rate_limiters: Vec::new(),
        circuit_src_rate_limiters: Vec::new(),
        ..Default::default()
    };
    config
        .reservation_rate_per_peer(n(60), Duration::from_secs(1))
        .reservation_rate_per_ip(n(240), Duration::from_millis(250))
        .circuit_src_per_peer(n(60), Duration::from_secs(1))
        .circuit_src_per_ip(n(240), Duration::from_millis(250))
}

/// How often AutoNAT asks a peer to dial an untested address of ours back: soon after start
/// (libp2p's default waits 5 s), since a relay serves others only once its address is confirmed.
const AUTONAT_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Longest session id we take from a peer's agent string.
const MAX_SESSION_LEN: usize = 32;

/// The identify agent string: carries the node's session (a new one each time the process
/// starts, so that peers can tell a restart from a second connection, see
/// `service::discovery`) and the display name, so `peers` can show who is who. The name comes
/// last: it may contain anything.
pub fn agent_string(session: &str, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("git-p2p/{} session={session} name={name}", env!("CARGO_PKG_VERSION")),
        None => format!("git-p2p/{} session={session}", env!("CARGO_PKG_VERSION")),
    }
}

/// The display name in a peer's agent string, if it is a git-p2p agent that carries one.
pub fn name_from_agent(agent: &str) -> Option<String> {
    let rest = agent.strip_prefix("git-p2p/")?;
    let (_, name) = rest.split_once(" name=")?;
    crate::config::sanitize_name(name)
}

/// The session in a peer's agent string, if it is a git-p2p agent that carries a well-formed one
/// (older nodes send none).
pub fn session_from_agent(agent: &str) -> Option<String> {
    let rest = agent.strip_prefix("git-p2p/")?;
    let head = rest.split_once(" name=").map_or(rest, |(head, _)| head);
    let session = head.split(' ').find_map(|word| word.strip_prefix("session="))?;
    let valid =
        !session.is_empty() && session.len() <= MAX_SESSION_LEN && session.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then(|| session.to_string())
}

/// A session id for this process: random, so that no two runs of a node share one.
pub fn new_session() -> String {
    use std::hash::{BuildHasher, Hasher};
    // std seeds RandomState from the OS's randomness; the pid and the time only add to it.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u64(crate::clock::unix_now_ms());
    format!("{:016x}", hasher.finish())
}

/// The gossipsub message id: a hash of the message's bytes (20 bytes of SHA-256). Content ids
/// make the same envelope re-sent after a restart a duplicate that receivers drop. Every swarm
/// that talks to our nodes (the adversarial-peer test, the harness's bare floors) uses this one.
pub fn message_id(message: &gossipsub::Message) -> gossipsub::MessageId {
    use sha2::Digest;
    gossipsub::MessageId::from(sha2::Sha256::digest(&message.data)[..20].to_vec())
}

/// Score parameters of our topics. Rejected (invalid) messages weigh heavily and are forgotten
/// slowly; delivery-rate penalties are off, since a repository's topics are quiet most of the time
/// and a quiet honest peer must not look like a withholding one.
pub fn topic_score_params() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        // Credit for time in the mesh and for first deliveries is bounded (at most +36 and +100)
        // so that it cannot hide more than one rejected message. (The default quantum of 1 ms
        // gave a peer +3600 after 3.6 s in the mesh.)
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 3600.0,
        first_message_deliveries_weight: 1.0,
        first_message_deliveries_cap: 100.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -100.0,
        invalid_message_deliveries_decay: 0.99,
        ..Default::default()
    }
}

/// How long a message we publish may wait in a peer's send queue before it is given up.
pub const PUBLISH_QUEUE_WAIT: Duration = Duration::from_secs(120);

impl Behaviour {
    /// `session`: this process's session id, sent in the identify agent string.
    pub fn new(
        key: &Keypair,
        config: &NodeConfig,
        session: &str,
        records: super::kad_store::PersistentStore,
        relay_client: relay::client::Behaviour,
    ) -> Result<Self, BehaviourError> {
        let peer_id = key.public().to_peer_id();

        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
                .with_agent_version(agent_string(session, config.name.as_deref()))
                .with_push_listen_addr_updates(true),
        );

        let ping = ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(10)));

        let gossip_config = gossipsub::ConfigBuilder::default()
            // The default 5 s initial delay sometimes postpones mesh formation by 5 s.
            .heartbeat_initial_delay(Duration::from_millis(500))
            .heartbeat_interval(Duration::from_secs(1))
            // Messages carry no gossipsub signature, source or sequence number: every one is a
            // signed envelope whose author key is the publishing node's key, so a gossipsub
            // signature would sign the same bytes with the same key again, and gossipsub verifies
            // it on every copy a peer forwards (duplicates included). Measured: those ed25519
            // verifications were the node's largest CPU cost at 1000 chat messages/s.
            .validation_mode(gossipsub::ValidationMode::Anonymous)
            // Every message is checked by the app (signature, topic, bounds) before it is forwarded.
            .validate_messages()
            // Content-addressed ids: the same envelope re-sent after a restart is a duplicate.
            .message_id_fn(message_id)
            .max_transmit_size(MAX_GOSSIP_MESSAGE)
            // What we publish waits in a slow peer's queue (bounded by its length, 5000) rather
            // than being abandoned after gossipsub's default 5 s: a burst of chat on a loaded
            // machine, or over a slow relay, is delivered whole, not in part with "sent" said.
            .publish_queue_duration(PUBLISH_QUEUE_WAIT)
            .build()?;
        let mut gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gossip_config)
            .map_err(|e| BehaviourError::Gossipsub(e.to_string()))?;
        // Peer scoring, so that messages we reject cost their sender (graylisted after one).
        let score_params = gossipsub::PeerScoreParams {
            // Many honest peers behind one address (NAT, a LAN box, loopback) are normal here.
            ip_colocation_factor_weight: 0.0,
            ..Default::default()
        };
        gossipsub
            .with_peer_score(score_params, gossipsub::PeerScoreThresholds::default())
            .map_err(BehaviourError::Scoring)?;

        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config.set_query_timeout(Duration::from_secs(10));
        // Incoming PUTs reach the application, which verifies and merges before storing.
        kad_config.set_record_filtering(kad::StoreInserts::FilterBoth);
        // A full multi-writer record is far above the 16 KiB default.
        kad_config.set_max_packet_size(2 * super::kad_store::MAX_RECORD_BYTES);
        let mut kad = kad::Behaviour::with_config(peer_id, records, kad_config);
        // Left alone, Kademlia stays a client until it has a confirmed external address, which
        // never happens on a LAN or on loopback: nobody would then answer queries.
        kad.set_mode(Some(match config.dht_mode {
            DhtMode::Server => kad::Mode::Server,
            DhtMode::Client => kad::Mode::Client,
        }));

        let mdns = if config.mdns {
            let mdns_config = mdns::Config { query_interval: config.mdns_interval, ..Default::default() };
            Some(mdns::tokio::Behaviour::new(mdns_config, peer_id).map_err(BehaviourError::Mdns)?)
        } else {
            None
        };

        Ok(Self {
            limits: connection_limits(),
            blocked: Default::default(),
            bound: super::bound::Bound::new(config.max_peers),
            identify,
            ping,
            gossipsub,
            kad,
            mdns: Toggle::from(mdns),
            stream: super::direct_streams::PreferDirect::new(libp2p_stream::Behaviour::new()),
            relay_client,
            relay: Toggle::from(
                (config.relay_service != RelayService::Off).then(|| relay::Behaviour::new(peer_id, relay_config())),
            ),
            dcutr: dcutr::Behaviour::new(peer_id),
            autonat: autonat::v2::client::Behaviour::new(
                rand::make_rng::<rand::rngs::StdRng>(),
                autonat::v2::client::Config::default().with_probe_interval(AUTONAT_PROBE_INTERVAL),
            ),
            autonat_server: autonat::v2::server::Behaviour::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sessions_travel_in_the_agent_string() {
        let agent = agent_string("00ff", Some("Alice session=1 Liddell"));
        assert_eq!(name_from_agent(&agent).as_deref(), Some("Alice session=1 Liddell"));
        assert_eq!(session_from_agent(&agent).as_deref(), Some("00ff"), "a name cannot forge a session");
        assert_eq!(name_from_agent(&agent_string("00ff", None)), None);
        assert_eq!(session_from_agent(&agent_string("00ff", None)).as_deref(), Some("00ff"));
        assert_eq!(session_from_agent("git-p2p/0.1.0 name=Bob"), None, "older nodes send none");
        assert_eq!(session_from_agent("git-p2p/0.1.0 session=\u{1b}[2J name=Eve"), None, "hex only");
        assert_eq!(session_from_agent(&format!("git-p2p/9 session={}", "a".repeat(33))), None, "bounded");
        assert_eq!(session_from_agent("rust-libp2p/0.1 session=00ff"), None, "only our own agents");
        assert_ne!(new_session(), new_session(), "a session per process start");
        assert_eq!(name_from_agent("rust-libp2p/0.1 name=Mallory"), None, "only our own agents carry names");
        assert_eq!(name_from_agent("git-p2p/9 name=\u{1b}[2J\u{7}Eve").as_deref(), Some("[2JEve"));
    }
}
