//! The node's settings, read from `git config` (`p2p.*` keys) and validated into typed form.
//!
//! Parsing is pure: it reads from a [`ConfigSource`] (the user's git config in production, a map in
//! tests), so every bad value is caught with the key named before any socket is opened.

use std::collections::BTreeMap;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;

/// A multi-valued key lookup, like `git config --get-all KEY` (values in file order).
pub trait ConfigSource {
    fn get_all(&self, key: &str) -> Vec<String>;
    /// The last value, as git does for single-valued keys.
    fn get(&self, key: &str) -> Option<String> {
        self.get_all(key).pop()
    }
}

impl ConfigSource for BTreeMap<String, Vec<String>> {
    fn get_all(&self, key: &str) -> Vec<String> {
        self.get(&key.to_ascii_lowercase()).cloned().unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("bad multiaddr in {key}: {value:?}: {reason}")]
    BadMultiaddr { key: &'static str, value: String, reason: String },
    #[error("bad value for {key}: {value:?} (expected {expected})")]
    BadValue { key: &'static str, value: String, expected: &'static str },
}

/// Which Kademlia mode the node runs in. Kademlia would otherwise stay a client until it has a
/// confirmed external address, which never happens on a LAN or loopback, and nobody would store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DhtMode {
    Server,
    Client,
}

/// Whether the node relays connections for peers that cannot be dialled (libp2p circuit relay
/// v2): `auto` once AutoNAT confirmed that we are reachable from outside, always, or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayService {
    Auto,
    On,
    Off,
}

/// A bootstrap peer: where to dial and whom we expect to find there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    pub peer_id: PeerId,
    pub addr: Multiaddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Bootstrap>,
    pub mdns: bool,
    /// How often mDNS queries the LAN; short because a lost first answer is only retried then.
    pub mdns_interval: Duration,
    pub relays: Vec<String>,
    pub name: Option<String>,
    pub dht_mode: DhtMode,
    /// Fetch other authors' announced work into the mirror as it is announced.
    pub replicate: bool,
    /// The largest pack one fetch from a peer may bring, in bytes.
    pub max_fetch_size: u64,
    /// `p2p.relay-service`: whether we relay for others.
    pub relay_service: RelayService,
    /// `p2p.circuit-relay`: relays to reserve a slot on while we are not reachable (besides the
    /// bootstrap peers and the peers that offer to relay).
    pub circuit_relays: Vec<Bootstrap>,
    /// `p2p.max-peers`: the most peers connected at once, whoever dials (`node::bound`).
    pub max_peers: usize,
}

/// `p2p.max-peers` when unset.
pub const DEFAULT_MAX_PEERS: usize = 50;

/// `p2p.max-fetch-size` when unset: a large repository's whole history fits, a peer cannot fill
/// the disk by sending without end.
pub const DEFAULT_MAX_FETCH_SIZE: u64 = 2 << 30;

/// Default listen addresses: TCP and QUIC, IPv4 and IPv6, all interfaces, ports chosen by the OS.
pub const DEFAULT_LISTEN: [&str; 4] =
    ["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1", "/ip6/::/tcp/0", "/ip6/::/udp/0/quic-v1"];

/// Longest display name we keep; names travel in every identify message.
pub const MAX_NAME_LEN: usize = 64;

/// Settings of the node, read from the user's global git config only (one node serves every
/// repository); lowercase, as git compares keys. `p2p.name` and `p2p.description` also work per
/// repository.
pub const NODE_WIDE: [&str; 11] = [
    "p2p.listen",
    "p2p.bootstrap",
    "p2p.mdns",
    "p2p.mdnsinterval",
    "p2p.dht-mode",
    "p2p.relay",
    "p2p.replicate",
    "p2p.max-fetch-size",
    "p2p.relay-service",
    "p2p.circuit-relay",
    "p2p.max-peers",
];

impl NodeConfig {
    pub fn from_source(src: &impl ConfigSource) -> Result<Self, ConfigError> {
        let listen_values = src.get_all("p2p.listen");
        let listen = if listen_values.is_empty() {
            DEFAULT_LISTEN.iter().map(|a| a.parse().expect("default listen addresses are valid")).collect()
        } else {
            listen_values.iter().map(|v| parse_listen(v)).collect::<Result<_, _>>()?
        };
        let bootstrap = src.get_all("p2p.bootstrap").iter().map(|v| parse_bootstrap(v)).collect::<Result<_, _>>()?;
        let mdns = match src.get("p2p.mdns") {
            None => true,
            Some(v) => {
                parse_bool(&v).ok_or(ConfigError::BadValue { key: "p2p.mdns", value: v, expected: "true or false" })?
            }
        };
        let mdns_interval = match src.get("p2p.mdnsinterval") {
            None => Duration::from_secs(5),
            Some(v) => parse_seconds(&v).ok_or(ConfigError::BadValue {
                key: "p2p.mdnsInterval",
                value: v,
                expected: "seconds, 1 to 3600",
            })?,
        };
        let dht_mode = match src.get("p2p.dht-mode").as_deref().map(str::trim) {
            None | Some("server") => DhtMode::Server,
            Some("client") => DhtMode::Client,
            Some(other) => {
                return Err(ConfigError::BadValue {
                    key: "p2p.dht-mode",
                    value: other.to_string(),
                    expected: "server or client",
                })
            }
        };
        let name = src.get("p2p.name").or_else(|| src.get("user.name")).and_then(|n| sanitize_name(&n));
        let relays =
            src.get_all("p2p.relay").into_iter().map(|r| r.trim().to_string()).filter(|r| !r.is_empty()).collect();
        let replicate = match src.get("p2p.replicate") {
            None => true,
            Some(v) => parse_bool(&v).ok_or(ConfigError::BadValue {
                key: "p2p.replicate",
                value: v,
                expected: "true or false",
            })?,
        };
        let max_fetch_size = match src.get("p2p.max-fetch-size") {
            None => DEFAULT_MAX_FETCH_SIZE,
            Some(v) => parse_size(&v).ok_or(ConfigError::BadValue {
                key: "p2p.max-fetch-size",
                value: v,
                expected: "a size in bytes, with k, m or g for KiB, MiB, GiB (at least 1k)",
            })?,
        };
        let relay_service = match src.get("p2p.relay-service").as_deref().map(str::trim) {
            None | Some("auto") => RelayService::Auto,
            Some("on") => RelayService::On,
            Some("off") => RelayService::Off,
            Some(other) => {
                return Err(ConfigError::BadValue {
                    key: "p2p.relay-service",
                    value: other.to_string(),
                    expected: "auto, on or off",
                })
            }
        };
        let circuit_relays = src
            .get_all("p2p.circuit-relay")
            .iter()
            .map(|v| parse_peer_addr("p2p.circuit-relay", v))
            .collect::<Result<_, _>>()?;
        let max_peers = match src.get("p2p.max-peers") {
            None => DEFAULT_MAX_PEERS,
            Some(v) => v.trim().parse().ok().filter(|n| (1..=1000).contains(n)).ok_or(ConfigError::BadValue {
                key: "p2p.max-peers",
                value: v,
                expected: "a number of peers, 1 to 1000",
            })?,
        };
        Ok(Self {
            max_peers,
            listen,
            bootstrap,
            mdns,
            mdns_interval,
            relays,
            name,
            dht_mode,
            replicate,
            max_fetch_size,
            relay_service,
            circuit_relays,
        })
    }
}

/// Display names are shown in other people's terminals: no control characters, bounded length.
pub fn sanitize_name(name: &str) -> Option<String> {
    let clean: String = name.chars().filter(|c| !c.is_control()).take(MAX_NAME_LEN).collect();
    let clean = clean.trim();
    (!clean.is_empty()).then(|| clean.to_string())
}

fn parse_listen(value: &str) -> Result<Multiaddr, ConfigError> {
    let bad = |reason: String| ConfigError::BadMultiaddr { key: "p2p.listen", value: value.to_string(), reason };
    let addr: Multiaddr = value.trim().parse().map_err(|e: libp2p::multiaddr::Error| bad(e.to_string()))?;
    let mut protocols = addr.iter();
    let ip = matches!(protocols.next(), Some(Protocol::Ip4(_) | Protocol::Ip6(_)));
    let transport = matches!(
        (protocols.next(), protocols.next(), protocols.next()),
        (Some(Protocol::Tcp(_)), None, None) | (Some(Protocol::Udp(_)), Some(Protocol::QuicV1), None)
    );
    if !(ip && transport) {
        return Err(bad("expected /ip4|ip6/ADDR/tcp/PORT or /ip4|ip6/ADDR/udp/PORT/quic-v1".into()));
    }
    Ok(addr)
}

fn parse_bootstrap(value: &str) -> Result<Bootstrap, ConfigError> {
    parse_peer_addr("p2p.bootstrap", value)
}

/// An address that ends with the peer id expected there.
fn parse_peer_addr(key: &'static str, value: &str) -> Result<Bootstrap, ConfigError> {
    let bad = |reason: String| ConfigError::BadMultiaddr { key, value: value.to_string(), reason };
    let mut addr: Multiaddr = value.trim().parse().map_err(|e: libp2p::multiaddr::Error| bad(e.to_string()))?;
    match addr.pop() {
        Some(Protocol::P2p(peer_id)) if !addr.is_empty() => Ok(Bootstrap { peer_id, addr }),
        _ => Err(bad("must end with /p2p/<peer id> (see: git p2p id)".into())),
    }
}

/// git's boolean syntax: a key without value counts as true.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// A size as git writes them: a number, with an optional k, m or g (1024-based).
fn parse_size(value: &str) -> Option<u64> {
    let v = value.trim().to_ascii_lowercase();
    let (digits, unit) = match v.strip_suffix(['k', 'm', 'g']) {
        Some(d) => (d, v.as_bytes()[v.len() - 1]),
        None => (v.as_str(), b'b'),
    };
    let n: u64 = digits.parse().ok()?;
    let shift = match unit {
        b'k' => 10,
        b'm' => 20,
        b'g' => 30,
        _ => 0,
    };
    n.checked_mul(1 << shift).filter(|size| *size >= 1024)
}

fn parse_seconds(value: &str) -> Option<Duration> {
    let secs: u64 = value.trim().parse().ok()?;
    (1..=3600).contains(&secs).then(|| Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<NodeConfig, ConfigError> {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in pairs {
            map.entry(k.to_ascii_lowercase()).or_default().push(v.to_string());
        }
        NodeConfig::from_source(&map)
    }

    const ALICE: &str = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";

    #[test]
    fn replication_settings() {
        let c = config(&[]).unwrap();
        assert!(c.replicate);
        assert_eq!(c.max_fetch_size, DEFAULT_MAX_FETCH_SIZE);
        let c = config(&[("p2p.replicate", "false"), ("p2p.max-fetch-size", "64m")]).unwrap();
        assert!(!c.replicate);
        assert_eq!(c.max_fetch_size, 64 << 20);
        assert_eq!(config(&[("p2p.max-fetch-size", "4096")]).unwrap().max_fetch_size, 4096);
        for bad in ["", "12", "1x", "-1k", "99999999999g"] {
            let err = config(&[("p2p.max-fetch-size", bad)]).unwrap_err();
            assert!(err.to_string().contains("p2p.max-fetch-size"), "{bad}: {err}");
        }
        assert!(config(&[("p2p.replicate", "maybe")]).is_err());
    }

    #[test]
    fn defaults() {
        let c = config(&[]).unwrap();
        assert_eq!(c.listen.len(), 4);
        assert!(c.bootstrap.is_empty());
        assert!(c.mdns, "mDNS is on by default for users; tests turn it off");
        assert_eq!(c.dht_mode, DhtMode::Server);
        assert_eq!(c.name, None);
        assert_eq!(c.relay_service, RelayService::Auto);
        assert!(c.circuit_relays.is_empty());
    }

    #[test]
    fn relay_settings() {
        let relay = format!("/ip4/198.51.100.10/tcp/4001/p2p/{ALICE}");
        let c = config(&[("p2p.relay-service", "on"), ("p2p.circuit-relay", &relay)]).unwrap();
        assert_eq!(c.relay_service, RelayService::On);
        assert_eq!(c.circuit_relays[0].peer_id.to_string(), ALICE);
        assert_eq!(config(&[("p2p.relay-service", "off")]).unwrap().relay_service, RelayService::Off);
        assert_eq!(config(&[]).unwrap().max_peers, DEFAULT_MAX_PEERS);
        assert_eq!(config(&[("p2p.max-peers", "6")]).unwrap().max_peers, 6);
        for bad in ["0", "many", "1001"] {
            assert!(config(&[("p2p.max-peers", bad)]).unwrap_err().to_string().contains("p2p.max-peers"), "{bad}");
        }
        let err = config(&[("p2p.relay-service", "sometimes")]).unwrap_err().to_string();
        assert!(err.contains("p2p.relay-service") && err.contains("auto, on or off"), "{err}");
        let err = config(&[("p2p.circuit-relay", "/ip4/1.2.3.4/tcp/1")]).unwrap_err().to_string();
        assert!(err.contains("p2p.circuit-relay") && err.contains("must end with /p2p/"), "{err}");
    }

    #[test]
    fn values_are_parsed() {
        let boot = format!("/ip4/127.0.0.1/tcp/4001/p2p/{ALICE}");
        let c = config(&[
            ("p2p.listen", "/ip4/127.0.0.1/tcp/0"),
            ("p2p.listen", "/ip6/::1/udp/5000/quic-v1"),
            ("p2p.bootstrap", &boot),
            ("p2p.mdns", "off"),
            ("p2p.mdnsInterval", "1"),
            ("user.name", "Alice\u{1b}[31m Liddell"),
            ("p2p.dht-mode", "client"),
            ("p2p.relay", "ws://127.0.0.1:7000"),
        ])
        .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.bootstrap[0].peer_id.to_string(), ALICE);
        assert_eq!(c.bootstrap[0].addr.to_string(), "/ip4/127.0.0.1/tcp/4001");
        assert!(!c.mdns);
        assert_eq!(c.mdns_interval, Duration::from_secs(1));
        assert_eq!(c.name.as_deref(), Some("Alice[31m Liddell"), "control characters are dropped");
        assert_eq!(c.dht_mode, DhtMode::Client);
        assert_eq!(c.relays, vec!["ws://127.0.0.1:7000"]);
    }

    #[test]
    fn p2p_name_wins_over_user_name() {
        let c = config(&[("user.name", "Alice"), ("p2p.name", "alice@laptop")]).unwrap();
        assert_eq!(c.name.as_deref(), Some("alice@laptop"));
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("p2p.bootstrap", "not-a-multiaddr", "bad multiaddr in p2p.bootstrap"),
            ("p2p.bootstrap", "/ip4/127.0.0.1/tcp/4001", "must end with /p2p/"),
            ("p2p.listen", "/ip4/127.0.0.1/udp/4001", "expected /ip4"),
            ("p2p.listen", "/dns/example.org/tcp/1", "expected /ip4"),
            ("p2p.mdns", "maybe", "bad value for p2p.mdns"),
            ("p2p.dht-mode", "both", "bad value for p2p.dht-mode"),
            ("p2p.mdnsInterval", "0", "bad value for p2p.mdnsInterval"),
        ];
        for (key, value, expected) in cases {
            let err = config(&[(key, value)]).unwrap_err().to_string();
            assert!(err.contains(expected), "{key}={value}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }
}
