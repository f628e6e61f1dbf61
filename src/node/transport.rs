//! The node's transports, TCP (Noise, Yamux) and QUIC, and which one a dial takes when a peer
//! can be reached by both: TCP, given a head start.
//!
//! A dial of a peer tries all its addresses at once and keeps the first connection. QUIC's
//! handshake is the quicker, so between nodes that listen on both nearly every connection was
//! QUIC. In userspace, QUIC costs more CPU per message than TCP, whose acknowledgements the
//! kernel sends: 50 nodes on 2 cores used a quarter less CPU per announcement, and the last of
//! them had it a fifth sooner, with TCP connections (docs/BENCHMARKS.md). So a QUIC dial of a
//! peer waits while a TCP dial of the same peer is under way, for [`QUIC_HEAD_START`] at most:
//! where TCP connects at once (a LAN, a public host) the connection is TCP; where it cannot (a
//! firewall, a port not forwarded) QUIC starts when the TCP dial failed, or after the head start
//! when it hangs. A peer we reach through a relay is hole-punched over every address at once
//! (both sides dial at the same moment; [`DialRace::set_relayed`]), and a dial as the listener
//! (QUIC's hole punch) never waits.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::core::{upgrade, Endpoint, Multiaddr, Transport};
use libp2p::futures::future::{BoxFuture, Either, FutureExt};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{noise, quic, tcp, yamux, PeerId};

/// How long a QUIC dial of a peer waits for a TCP dial of the same peer under way: enough for
/// TCP, Noise and Yamux on a LAN or a nearby host; little next to a WAN's QUIC handshake.
pub const QUIC_HEAD_START: Duration = Duration::from_millis(250);

/// The TCP dials under way by peer, and the peers we have a relayed connection to; shared by
/// the transport and the event loop.
#[derive(Clone)]
pub struct DialRace(Arc<Mutex<Race>>);

struct Race {
    head_start: Duration,
    tcp: HashMap<PeerId, TcpDials>,
    relayed: HashSet<PeerId>,
}

struct TcpDials {
    /// When the oldest TCP dial under way started.
    since: Instant,
    under_way: usize,
    /// Told when the last one ended.
    ended: Arc<tokio::sync::Notify>,
}

impl Default for DialRace {
    fn default() -> Self {
        Self::new(QUIC_HEAD_START)
    }
}

impl DialRace {
    /// A race in which QUIC waits `head_start` at most (tests); nodes use [`QUIC_HEAD_START`].
    pub fn new(head_start: Duration) -> Self {
        Self(Arc::new(Mutex::new(Race { head_start, tcp: HashMap::new(), relayed: HashSet::new() })))
    }

    fn lock(&self) -> MutexGuard<'_, Race> {
        // The race is bookkeeping only: a panic elsewhere leaves nothing half-done here.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether we have a relayed connection to `peer` (its dials then are hole punches).
    pub fn set_relayed(&self, peer: PeerId, relayed: bool) {
        let mut race = self.lock();
        if relayed {
            race.relayed.insert(peer);
        } else {
            race.relayed.remove(&peer);
        }
    }

    fn tcp_started(&self, peer: PeerId, now: Instant) -> TcpDial {
        let mut race = self.lock();
        let dials = race.tcp.entry(peer).or_insert_with(|| TcpDials {
            since: now,
            under_way: 0,
            ended: Arc::new(tokio::sync::Notify::new()),
        });
        dials.under_way += 1;
        TcpDial { race: self.clone(), peer }
    }

    /// Until when a QUIC dial of `peer` waits, and what tells it the TCP dials ended; None if it
    /// goes at once.
    fn quic_wait(&self, peer: &PeerId, now: Instant) -> Option<(Instant, Arc<tokio::sync::Notify>)> {
        let race = self.lock();
        if race.relayed.contains(peer) {
            return None;
        }
        let dials = race.tcp.get(peer)?;
        let until = dials.since + race.head_start;
        (until > now).then(|| (until, dials.ended.clone()))
    }
}

/// A TCP dial under way; ends (counted off) when dropped, whether it connected, failed or was
/// given up because another address connected first.
struct TcpDial {
    race: DialRace,
    peer: PeerId,
}

impl Drop for TcpDial {
    fn drop(&mut self) {
        let mut race = self.race.lock();
        let Some(dials) = race.tcp.get_mut(&self.peer) else { return };
        dials.under_way -= 1;
        if dials.under_way == 0 {
            dials.ended.notify_waiters();
            race.tcp.remove(&self.peer);
        }
    }
}

/// What a dial address is, for the race.
#[derive(Debug, PartialEq)]
enum Kind {
    Tcp(PeerId),
    Quic(PeerId),
    Other,
}

fn kind(addr: &Multiaddr) -> Kind {
    let (mut tcp, mut quic, mut peer) = (false, false, None);
    for p in addr.iter() {
        match p {
            Protocol::Tcp(_) => tcp = true,
            Protocol::QuicV1 | Protocol::Quic => quic = true,
            Protocol::P2p(id) => peer = Some(id),
            // Through a relay, or TCP carrying something else: not a direct TCP or QUIC dial.
            Protocol::P2pCircuit | Protocol::Ws(_) | Protocol::Wss(_) | Protocol::WebRTCDirect => return Kind::Other,
            _ => {}
        }
    }
    match (peer, tcp, quic) {
        (Some(peer), true, false) => Kind::Tcp(peer),
        (Some(peer), false, true) => Kind::Quic(peer),
        _ => Kind::Other,
    }
}

/// The node's transport: TCP (Noise, Yamux of at most `max_streams` streams) and QUIC, QUIC's
/// dials waiting in `race`.
pub fn build(
    key: &Keypair,
    max_streams: usize,
    race: DialRace,
) -> Result<Boxed<Output>, Box<dyn std::error::Error + Send + Sync>> {
    let mut yamux = yamux::Config::default();
    yamux.set_max_num_streams(max_streams);
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .upgrade(upgrade::Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux);
    let mut quic_config = quic::Config::new(key);
    quic_config.max_concurrent_stream_limit = u32::try_from(max_streams).unwrap_or(u32::MAX);
    let both = tcp.or_transport(quic::tokio::Transport::new(quic_config)).map(|either, _| match either {
        Either::Left((peer, muxer)) => (peer, StreamMuxerBox::new(muxer)),
        Either::Right((peer, muxer)) => (peer, StreamMuxerBox::new(muxer)),
    });
    Ok(PreferTcp { inner: both, race }.boxed())
}

/// `inner` (TCP and QUIC) with QUIC dials waiting for TCP dials of the same peer.
struct PreferTcp<T> {
    inner: T,
    race: DialRace,
}

type Output = (PeerId, StreamMuxerBox);

impl<T> Transport for PreferTcp<T>
where
    T: Transport<Output = Output> + Unpin,
    T::Dial: Send + 'static,
    T::Error: Send + 'static,
{
    type Output = Output;
    type Error = T::Error;
    type ListenerUpgrade = T::ListenerUpgrade;
    type Dial = BoxFuture<'static, Result<Output, T::Error>>;

    fn listen_on(&mut self, id: ListenerId, addr: Multiaddr) -> Result<(), TransportError<Self::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(&mut self, addr: Multiaddr, opts: DialOpts) -> Result<Self::Dial, TransportError<Self::Error>> {
        let kind = kind(&addr);
        let dial = self.inner.dial(addr, opts)?;
        Ok(match kind {
            Kind::Tcp(peer) => {
                let under_way = self.race.tcp_started(peer, Instant::now());
                async move {
                    let connected = dial.await;
                    drop(under_way);
                    connected
                }
                .boxed()
            }
            // The swarm makes every dial of a peer before it polls any: when this first runs, a
            // TCP dial of the same peer has been counted.
            Kind::Quic(peer) if opts.role == Endpoint::Dialer => {
                let race = self.race.clone();
                async move {
                    if let Some((until, ended)) = race.quic_wait(&peer, Instant::now()) {
                        let ended = ended.notified();
                        tokio::pin!(ended);
                        // Registered before the race is asked again: an end in between is seen.
                        ended.as_mut().enable();
                        if race.quic_wait(&peer, Instant::now()).is_some() {
                            tokio::select! {
                                _ = ended => {}
                                _ = tokio::time::sleep_until(until.into()) => {}
                            }
                        }
                    }
                    dial.await
                }
                .boxed()
            }
            _ => dial.boxed(),
        })
    }

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        PeerId::random()
    }

    #[test]
    fn addresses_are_told_apart_by_transport() {
        let p = peer();
        let tcp: Multiaddr = format!("/ip4/127.0.0.1/tcp/4001/p2p/{p}").parse().unwrap();
        let quic: Multiaddr = format!("/ip4/127.0.0.1/udp/4001/quic-v1/p2p/{p}").parse().unwrap();
        let relayed: Multiaddr = format!("/ip4/1.2.3.4/tcp/4001/p2p/{}/p2p-circuit/p2p/{p}", peer()).parse().unwrap();
        let no_peer: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        let ws: Multiaddr = format!("/ip4/127.0.0.1/tcp/4001/ws/p2p/{p}").parse().unwrap();
        assert_eq!(kind(&tcp), Kind::Tcp(p));
        assert_eq!(kind(&quic), Kind::Quic(p));
        assert_eq!(kind(&relayed), Kind::Other);
        assert_eq!(kind(&no_peer), Kind::Other);
        assert_eq!(kind(&ws), Kind::Other);
    }

    #[test]
    fn quic_waits_for_a_tcp_dial_under_way_for_the_head_start_at_most() {
        let (race, p, t0) = (DialRace::default(), peer(), Instant::now());
        assert!(race.quic_wait(&p, t0).is_none(), "no TCP dial: QUIC goes at once");
        let first = race.tcp_started(p, t0);
        let second = race.tcp_started(p, t0 + Duration::from_millis(100));
        let (until, _) = race.quic_wait(&p, t0 + Duration::from_millis(10)).expect("waits");
        assert_eq!(until, t0 + QUIC_HEAD_START, "from the oldest TCP dial under way");
        assert!(race.quic_wait(&p, t0 + QUIC_HEAD_START).is_none(), "not past the head start");
        assert!(race.quic_wait(&peer(), t0).is_none(), "another peer's QUIC does not wait");
        drop(first);
        assert!(race.quic_wait(&p, t0).is_some(), "one TCP dial still under way");
        drop(second);
        assert!(race.quic_wait(&p, t0).is_none(), "every TCP dial ended");
    }

    #[test]
    fn a_relayed_peer_is_dialled_over_every_address_at_once() {
        let (race, p, t0) = (DialRace::default(), peer(), Instant::now());
        let _tcp = race.tcp_started(p, t0);
        race.set_relayed(p, true);
        assert!(race.quic_wait(&p, t0).is_none());
        race.set_relayed(p, false);
        assert!(race.quic_wait(&p, t0).is_some());
    }

    /// A swarm with the node's transport and nothing else, listening on `listen`.
    async fn swarm(
        race: DialRace,
        listen: &[&str],
    ) -> (libp2p::Swarm<libp2p::swarm::dummy::Behaviour>, Vec<Multiaddr>) {
        use libp2p::futures::StreamExt;
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_other_transport(|key| build(key, 16, race))
            .unwrap()
            .with_behaviour(|_| libp2p::swarm::dummy::Behaviour)
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        let mut addrs = Vec::new();
        for addr in listen {
            swarm.listen_on(addr.parse().unwrap()).unwrap();
            loop {
                if let libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                    addrs.push(address);
                    break;
                }
            }
        }
        (swarm, addrs)
    }

    /// `dialer` dials `target` at `addrs` (in that order) while `target` runs: the address of the
    /// connection, or the dial's error.
    async fn connect(
        dialer: &mut libp2p::Swarm<libp2p::swarm::dummy::Behaviour>,
        target: &mut libp2p::Swarm<libp2p::swarm::dummy::Behaviour>,
        addrs: Vec<Multiaddr>,
    ) -> Result<Multiaddr, String> {
        use libp2p::futures::StreamExt;
        use libp2p::swarm::{dial_opts::DialOpts, SwarmEvent};
        let peer = *target.local_peer_id();
        dialer.dial(DialOpts::peer_id(peer).addresses(addrs).build()).unwrap();
        let wait = async {
            loop {
                tokio::select! {
                    event = dialer.select_next_some() => match event {
                        SwarmEvent::ConnectionEstablished { endpoint, .. } => {
                            return Ok(endpoint.get_remote_address().clone())
                        }
                        SwarmEvent::OutgoingConnectionError { error, .. } => return Err(error.to_string()),
                        _ => {}
                    },
                    _ = target.select_next_some() => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), wait).await.unwrap_or(Err("no connection in 20 s".into()))
    }

    /// A TCP proxy on loopback to `to` (a TCP multiaddr) that waits `delay` before it connects.
    async fn slow_proxy(to: &Multiaddr, delay: Duration) -> Multiaddr {
        let port = to.iter().find_map(|p| if let Protocol::Tcp(port) = p { Some(port) } else { None }).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        format!("/ip4/127.0.0.1/tcp/{proxy}").parse().unwrap()
    }

    fn is_quic(addr: &Multiaddr) -> bool {
        addr.iter().any(|p| matches!(p, Protocol::QuicV1))
    }

    #[tokio::test]
    async fn a_peer_listening_on_both_is_connected_over_tcp_even_with_quic_dialled_first() {
        // A head start no loaded machine runs out: the connection is TCP by the rule, not by luck.
        let race = DialRace::new(Duration::from_secs(30));
        let (mut target, addrs) =
            swarm(DialRace::default(), &["/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.1/tcp/0"]).await;
        // TCP reaches the target through a proxy that holds each connection for 200 ms first:
        // without the head start, QUIC would win.
        let slow_tcp = slow_proxy(&addrs[1], Duration::from_millis(200)).await;
        let (mut dialer, _) = swarm(race, &[]).await;
        let addr =
            connect(&mut dialer, &mut target, vec![addrs[0].clone(), slow_tcp.clone()]).await.expect("connected");
        assert!(addr.to_string().starts_with(&slow_tcp.to_string()), "connected over {addr}");
        assert!(!is_quic(&addr), "connected over {addr}");
    }

    #[tokio::test]
    async fn quic_goes_at_once_when_the_tcp_dial_is_refused() {
        // Within the 20 s `connect` waits, far less than the head start: QUIC went when TCP failed.
        let race = DialRace::new(Duration::from_secs(60));
        let (mut target, quic) = swarm(DialRace::default(), &["/ip4/127.0.0.1/udp/0/quic-v1"]).await;
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let tcp: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        let (mut dialer, _) = swarm(race, &[]).await;
        let addr = connect(&mut dialer, &mut target, vec![tcp, quic[0].clone()]).await.expect("connected");
        assert!(is_quic(&addr), "connected over {addr}");
    }

    #[tokio::test]
    async fn quic_goes_after_the_head_start_when_the_tcp_dial_hangs() {
        // A TCP port that accepts in the kernel and never answers: the TCP dial hangs in Noise.
        let (mut target, quic) = swarm(DialRace::default(), &["/ip4/127.0.0.1/udp/0/quic-v1"]).await;
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let tcp: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        let (mut dialer, _) = swarm(DialRace::default(), &[]).await;
        let addr = connect(&mut dialer, &mut target, vec![tcp, quic[0].clone()]).await.expect("connected");
        assert!(is_quic(&addr), "connected over {addr}");
        drop(silent);
    }

    #[tokio::test]
    async fn the_end_of_the_tcp_dials_lets_quic_go_before_the_head_start() {
        let (race, p) = (DialRace::default(), peer());
        let tcp = race.tcp_started(p, Instant::now());
        let (until, ended) = race.quic_wait(&p, Instant::now()).expect("waits");
        let ended = ended.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        drop(tcp);
        let woke = tokio::time::timeout_at(until.into(), ended).await;
        assert!(woke.is_ok(), "told when the TCP dial ended, not at the head start's end");
    }
}
