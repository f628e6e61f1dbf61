//! The node's listeners: every configured address, and for those with port 0 the port the node
//! took last time (kept in the store), so that the addresses peers saved of it stay good across
//! restarts and two nodes restarted together find each other through their address books.
//! Another port is taken only when the kept one is busy.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use libp2p::futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, Swarm};

use super::behaviour::Behaviour;
use super::NodeError;
use crate::store::Store;

/// How long start-up waits for the listeners to report their addresses.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts a listener on every configured address (on its kept port when it is configured with
/// port 0) and stores the ports taken. Fails only if no listener works (IPv6 may be missing on
/// the machine, say).
pub async fn listen(swarm: &mut Swarm<Behaviour>, configured: &[Multiaddr], store: &Store) -> Result<(), NodeError> {
    let kept: HashMap<String, u16> = store
        .listen_ports()
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the ports kept from the last run; taking new ones");
            Vec::new()
        })
        .into_iter()
        .collect();
    let mut attempts = Vec::new();
    for addr in configured {
        let kept_addr = kept.get(&addr.to_string()).filter(|_| port_of(addr) == Some(0)).and_then(|&port| {
            let kept_addr = with_port(addr, port);
            if port_free(&kept_addr) {
                Some(kept_addr)
            } else {
                tracing::warn!(%addr, port, "the port kept from the last run is taken; listening on another");
                None
            }
        });
        attempts.push((addr.clone(), kept_addr.unwrap_or_else(|| addr.clone())));
    }
    let mut outcomes = start(swarm, attempts.clone()).await;
    // A kept port that the probe found free but the transport could not take: a new port.
    let failed = |configured: &Multiaddr| outcomes.iter().any(|(addr, result)| addr == configured && result.is_err());
    let retry: Vec<(Multiaddr, Multiaddr)> = attempts
        .iter()
        .filter(|(configured, tried)| configured != tried && failed(configured))
        .map(|(configured, _)| (configured.clone(), configured.clone()))
        .collect();
    if !retry.is_empty() {
        for (addr, _) in &retry {
            tracing::warn!(%addr, "cannot listen on the port kept from the last run; listening on another");
        }
        let again = start(swarm, retry).await;
        outcomes.retain(|(addr, _)| !again.iter().any(|(a, _)| a == addr));
        outcomes.extend(again);
    }

    let mut ports = Vec::new();
    let mut errors = Vec::new();
    for (addr, result) in outcomes {
        match result {
            Ok(port) if port_of(&addr) == Some(0) => ports.push((addr.to_string(), port)),
            Ok(_) => {}
            Err(reason) => {
                tracing::warn!(%addr, %reason, "cannot listen");
                errors.push((addr.to_string(), reason));
            }
        }
    }
    if errors.len() == configured.len() {
        let (addr, reason) = errors
            .into_iter()
            .next()
            .unwrap_or_else(|| ("any address".into(), "no listen address is configured".into()));
        return Err(NodeError::Listen { addr, reason });
    }
    // Written (with an fsync) only when they changed: most starts take the kept ports.
    let changed = ports.len() != kept.len() || ports.iter().any(|(addr, port)| kept.get(addr) != Some(port));
    if changed {
        if let Err(e) = store.set_listen_ports(&ports) {
            tracing::warn!(error = %e, "cannot keep the listening ports for the next run");
        }
    }
    Ok(())
}

/// Starts a listener per `(configured, address to try)` and waits until each has an address or
/// has failed; returns each configured address with the port taken, or why not.
async fn start(
    swarm: &mut Swarm<Behaviour>,
    attempts: Vec<(Multiaddr, Multiaddr)>,
) -> Vec<(Multiaddr, Result<u16, String>)> {
    let mut outcomes = Vec::new();
    let mut pending = HashMap::new();
    for (configured, addr) in attempts {
        match swarm.listen_on(addr) {
            Ok(id) => {
                pending.insert(id, configured);
            }
            Err(e) => outcomes.push((configured, Err(listen_reason(&e)))),
        }
    }
    let deadline = tokio::time::Instant::now() + LISTEN_TIMEOUT;
    while !pending.is_empty() {
        let event = tokio::select! {
            event = swarm.select_next_some() => event,
            _ = tokio::time::sleep_until(deadline) => break,
        };
        match event {
            SwarmEvent::NewListenAddr { listener_id, address } => {
                if let Some(configured) = pending.remove(&listener_id) {
                    let port = port_of(&address).ok_or_else(|| format!("no port in {address}"));
                    outcomes.push((configured, port));
                }
            }
            SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                if let Some(configured) = pending.remove(&listener_id) {
                    let reason = reason.err().map(|e| listen_reason(&e)).unwrap_or_else(|| "closed".into());
                    outcomes.push((configured, Err(reason)));
                }
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                if let Some(configured) = pending.remove(&listener_id) {
                    outcomes.push((configured, Err(listen_reason(&error))));
                }
            }
            _ => {}
        }
    }
    for (_, configured) in pending {
        outcomes.push((configured, Err("no address reported in time".into())));
    }
    outcomes
}

/// The TCP or UDP port of an address.
fn port_of(addr: &Multiaddr) -> Option<u16> {
    addr.iter().find_map(|p| match p {
        Protocol::Tcp(port) | Protocol::Udp(port) => Some(port),
        _ => None,
    })
}

/// `addr` with its TCP or UDP port replaced.
fn with_port(addr: &Multiaddr, port: u16) -> Multiaddr {
    addr.iter()
        .map(|p| match p {
            Protocol::Tcp(_) => Protocol::Tcp(port),
            Protocol::Udp(_) => Protocol::Udp(port),
            other => other,
        })
        .collect()
}

/// Whether the port of `addr` can be bound now. libp2p's TCP listeners set SO_REUSEPORT, so
/// two nodes of one user could both bind a port and split its connections between them: a
/// plain socket (without it) finds a port that is in use.
fn port_free(addr: &Multiaddr) -> bool {
    let mut ip = None;
    let mut socket = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(IpAddr::V6(a)),
            Protocol::Tcp(port) => socket = Some((port, true)),
            Protocol::Udp(port) => socket = Some((port, false)),
            _ => {}
        }
    }
    let (Some(ip), Some((port, tcp))) = (ip, socket) else { return false };
    let at = SocketAddr::new(ip, port);
    if tcp {
        std::net::TcpListener::bind(at).is_ok()
    } else {
        std::net::UdpSocket::bind(at).is_ok()
    }
}

/// Why a listener failed, in the user's words. libp2p's transport errors print nothing
/// themselves (the cause is their source), so the whole chain is read; the system's error is
/// wrapped in layers that do not give it out as a source, but its text ends "(os error N)".
fn listen_reason(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        let errno = text.rsplit_once("(os error ").and_then(|(_, n)| n.strip_suffix(')')?.parse().ok());
        match errno {
            Some(libc::EADDRNOTAVAIL) => {
                return "no network interface of this machine has that address (see p2p.listen)".into()
            }
            Some(libc::EADDRINUSE) => return "another program listens on that port (see p2p.listen)".into(),
            Some(libc::EACCES) => return "not allowed to listen on that port (see p2p.listen)".into(),
            _ => {}
        }
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    if parts.is_empty() {
        "the operating system refused it without a reason".into()
    } else {
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_read_and_replaced_in_tcp_and_quic_addresses() {
        let tcp: Multiaddr = "/ip4/0.0.0.0/tcp/0".parse().unwrap();
        let quic: Multiaddr = "/ip6/::/udp/0/quic-v1".parse().unwrap();
        assert_eq!(with_port(&tcp, 4001).to_string(), "/ip4/0.0.0.0/tcp/4001");
        assert_eq!(with_port(&quic, 4002).to_string(), "/ip6/::/udp/4002/quic-v1");
        assert_eq!(port_of(&with_port(&quic, 4002)), Some(4002));
        assert_eq!(port_of(&tcp), Some(0));
    }

    #[test]
    fn a_port_in_use_is_not_free() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        assert!(!port_free(&addr));
        drop(taken);
        assert!(port_free(&addr));
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr: Multiaddr =
            format!("/ip4/127.0.0.1/udp/{}/quic-v1", udp.local_addr().unwrap().port()).parse().unwrap();
        assert!(!port_free(&addr));
    }
}
