//! A real Nostr relay for tests: nostr-relay-builder's websocket relay on 127.0.0.1, in this
//! process, on a port the OS picks. It can be stopped and started again on the same port with
//! the same events, refuse every event, and be read back through a real subscription.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use nostr_relay_builder::builder::{PolicyResult, RateLimit, WritePolicy};
use nostr_relay_builder::prelude::{BoxedFuture, MemoryDatabase, MemoryDatabaseOptions};
use nostr_relay_builder::{LocalRelay, RelayBuilder};
use nostr_sdk::{Client, Event, Filter, Keys};

pub struct TestRelay {
    runtime: tokio::runtime::Runtime,
    relay: Option<LocalRelay>,
    database: Arc<MemoryDatabase>,
    refuse: Option<String>,
    port: u16,
}

/// Refuses every event with `reason` (the relay answers OK false).
#[derive(Debug)]
struct Refuse(String);

impl WritePolicy for Refuse {
    fn admit_event<'a>(&'a self, _: &'a Event, _: &'a std::net::SocketAddr) -> BoxedFuture<'a, PolicyResult> {
        Box::pin(async move { PolicyResult::Reject(self.0.clone()) })
    }
}

impl TestRelay {
    pub fn start() -> Self {
        Self::with(None)
    }

    /// A relay that answers every EVENT with OK false and this reason.
    pub fn refusing(reason: &str) -> Self {
        Self::with(Some(reason.to_string()))
    }

    fn with(refuse: Option<String>) -> Self {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("tokio runtime");
        let database = Arc::new(MemoryDatabase::with_opts(MemoryDatabaseOptions { events: true, max_events: None }));
        let mut this = Self { runtime, relay: None, database, refuse, port: 0 };
        this.up();
        this
    }

    /// Starts the relay (again, on the same port once it has one).
    pub fn up(&mut self) {
        assert!(self.relay.is_none(), "the relay is already up");
        let mut builder = RelayBuilder::default()
            .addr(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .database(self.database.clone())
            .rate_limit(RateLimit { max_reqs: 500, notes_per_minute: 100_000 });
        // The first start lets the relay find a free port; later ones take the same again.
        if self.port != 0 {
            builder = builder.port(self.port);
        }
        if let Some(reason) = &self.refuse {
            builder = builder.write_policy(Refuse(reason.clone()));
        }
        // On a restart the port may be briefly taken (another test's outgoing connection can get
        // it as its local port): try again for a while.
        let relay = crate::support::eventually(Duration::from_secs(10), "the relay to start", || {
            let relay = LocalRelay::new(builder.clone());
            match self.runtime.block_on(relay.run()) {
                Ok(()) => Some(relay),
                Err(e) if self.port != 0 => {
                    eprintln!("relay on port {}: {e}; retrying", self.port);
                    None
                }
                Err(e) => panic!("relay starts: {e}"),
            }
        });
        let url = self.runtime.block_on(relay.url());
        self.port = url.as_str().rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).expect("port");
        self.relay = Some(relay);
    }

    /// Stops the relay: connections close, the port refuses; stored events are kept.
    pub fn down(&mut self) {
        let Some(relay) = self.relay.take() else { return };
        let addr = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        crate::support::eventually(Duration::from_secs(10), "the relay's port to close", || {
            // The relay wakes only the tasks waiting at that moment (notify_waiters): one busy
            // accepting a connection misses it, so say it again until the port is closed.
            relay.shutdown();
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err().then_some(())
        });
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Events matching `filter`, read through a subscription (REQ until EOSE) as a client would.
    pub fn fetch(&self, filter: Filter) -> Vec<Event> {
        let url = self.url();
        self.runtime.block_on(async move {
            let client = Client::default();
            client.add_relay(&url).await.expect("add relay");
            client.connect().await;
            let events = client.fetch_events(filter, Duration::from_secs(5)).await.expect("fetch events");
            client.shutdown().await;
            events.into_iter().collect()
        })
    }

    /// Publishes an event as a plain Nostr client would.
    pub fn publish(&self, keys: &Keys, event: &Event) {
        let url = self.url();
        let (keys, event) = (keys.clone(), event.clone());
        self.runtime.block_on(async move {
            let client = Client::new(keys);
            client.add_relay(&url).await.expect("add relay");
            client.connect().await;
            client.wait_for_connection(Duration::from_secs(5)).await;
            client.send_event(&event).await.expect("send event");
            client.shutdown().await;
        })
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        if let Some(relay) = self.relay.take() {
            relay.shutdown();
        }
    }
}
