//! The benchmark harness: real daemons on loopback (mDNS off) driven through the real CLI.
//! Prints a table and one JSON line per metric. Run: `cargo bench --bench harness` (full) or
//! `cargo bench --bench harness -- --smoke` (tiny sizes; CI runs it so the harness never rots).

#[path = "../tests/it/support.rs"]
#[allow(dead_code)]
mod support;

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::Node;

#[path = "harness/fetch.rs"]
mod fetch;
#[path = "harness/nat.rs"]
mod nat;
#[path = "../tests/it/natlab.rs"]
#[allow(dead_code)]
mod natlab;
#[path = "harness/sparse.rs"]
mod sparse;
#[path = "harness/sync.rs"]
mod sync;

struct Metric {
    name: &'static str,
    unit: &'static str,
    samples: Vec<f64>,
    nodes: usize,
    goal: &'static str,
}

impl Metric {
    fn percentile(&self, p: f64) -> f64 {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        if s.is_empty() {
            return f64::NAN;
        }
        let idx = ((s.len() - 1) as f64 * p).round() as usize;
        s[idx]
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// CPU time of some processes (every thread, and the children they reaped: git processes a
/// node runs) over a stretch of the run, read from /proc; with `BENCH_PERF=1` only. This VM has
/// no hardware counters for `perf stat -e instructions`; CPU time per message is the next most
/// repeatable measure of work on a noisy machine (wall-clock latency is not).
struct Perf {
    pids: Vec<i32>,
    /// Threads of this process instead (`gettid`s).
    threads: bool,
    at_start: f64,
}

/// A thread's time on a CPU in ms, from its schedstat file (0 when unreadable).
fn schedstat_ms(path: impl AsRef<std::path::Path>) -> f64 {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    s.split(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 1e6
}

/// CPU ms of process `pid`: its threads' time on a CPU (/proc/PID/task/*/schedstat) plus its
/// reaped children's (clock ticks, /proc/PID/stat).
fn cpu_ms(pid: i32) -> f64 {
    let threads: f64 = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .filter_map(|t| Some(schedstat_ms(t.ok()?.path().join("schedstat"))))
        .sum();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: cutime and cstime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [13, 14].iter().filter_map(|&i| fields.get(i)?.parse::<f64>().ok()).sum();
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    threads + ticks * 1000.0 / hz
}

/// CPU ms of thread `tid` of this process.
fn thread_cpu_ms(tid: i32) -> f64 {
    schedstat_ms(format!("/proc/self/task/{tid}/schedstat"))
}

impl Perf {
    /// Starts counting `pids` (None without `BENCH_PERF=1`).
    fn start(pids: &[i32]) -> Option<Perf> {
        Self::start_as(pids, false)
    }

    /// The same for threads of this process (`gettid`s).
    fn start_threads(tids: &[i32]) -> Option<Perf> {
        Self::start_as(tids, true)
    }

    fn start_as(pids: &[i32], threads: bool) -> Option<Perf> {
        std::env::var_os("BENCH_PERF")?;
        let mut perf = Perf { pids: pids.to_vec(), threads, at_start: 0.0 };
        perf.at_start = perf.total();
        Some(perf)
    }

    fn total(&self) -> f64 {
        self.pids.iter().map(|&p| if self.threads { thread_cpu_ms(p) } else { cpu_ms(p) }).sum()
    }

    /// Sleeps for `d`, not counting what the processes spend meanwhile (idle work).
    fn pause(perfs: [&mut Option<Perf>; 2], d: Duration) {
        let before: Vec<f64> = perfs.iter().map(|p| p.as_ref().map_or(0.0, Perf::total)).collect();
        std::thread::sleep(d);
        for (perf, before) in perfs.into_iter().zip(before) {
            if let Some(perf) = perf {
                perf.at_start += perf.total() - before;
            }
        }
    }

    /// CPU ms since the start.
    fn stop(self) -> f64 {
        self.total() - self.at_start
    }
}

/// Pushes the CPU time per message [`Perf`] counted.
fn push_perf(metrics: &mut Vec<Metric>, perf: Option<Perf>, messages: usize, name: &'static str, nodes: usize) {
    let Some(cpu_ms) = perf.map(Perf::stop) else { return };
    let samples = vec![cpu_ms / messages.max(1) as f64];
    metrics.push(Metric { name, unit: "ms", samples, nodes, goal: "(CPU per message)" });
}

/// Waits until the processes `pids` (a network just formed) are quiet, as the floor's network is
/// when it is measured: their CPU in a second under [`QUIET_MS`] and no longer falling (within a
/// fifth of the second before), after `at_least`, at most [`SETTLE_AT_MOST`]. Ours start work of
/// their own after a first announcement (in a crowd, each peer fetches the commit a few seconds
/// later): what is measured then is announcements, not the network forming. Records, as
/// `names`, how long that took and what the processes use per second once quiet.
fn settle(metrics: &mut Vec<Metric>, pids: &[i32], nodes: usize, names: [&'static str; 2], at_least: Duration) {
    let start = Instant::now();
    let total = || pids.iter().map(|&p| cpu_ms(p)).sum::<f64>();
    let (mut used, mut before) = (f64::INFINITY, f64::INFINITY);
    let steady = |used: f64, before: f64| used <= QUIET_MS && used <= before * 1.2;
    while (!steady(used, before) || start.elapsed() < at_least) && start.elapsed() < SETTLE_AT_MOST {
        let (cpu, t) = (total(), Instant::now());
        std::thread::sleep(Duration::from_secs(1));
        (before, used) = (used, (total() - cpu) / t.elapsed().as_secs_f64());
    }
    if !steady(used, before) {
        eprintln!("{}: still busy after {SETTLE_AT_MOST:?} ({used:.0} ms of CPU a second)", names[0]);
    }
    let [name, idle] = names;
    metrics.push(Metric {
        name,
        unit: "s",
        samples: vec![start.elapsed().as_secs_f64()],
        nodes,
        goal: "(until quiet)",
    });
    metrics.push(Metric { name: idle, unit: "ms/s", samples: vec![used], nodes, goal: "(all nodes, quiet)" });
}

/// CPU a second (ms, all nodes together) over which a network is still busy: 15 % of a
/// 2-core machine.
const QUIET_MS: f64 = 300.0;
const SETTLE_AT_MOST: Duration = Duration::from_secs(60);

/// Resident set size of a process in MiB, from /proc.
fn rss_mib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Announcements in a network of `nodes` daemons (all bootstrap to the first): `commits` commits
/// in the first node's repository; per node, from `git commit` returning until that node's
/// feed stream has it (timed by a [`FollowChild`]); and until the last node has it. Plus the
/// delivery ratio and RSS.
fn announce_many(metrics: &mut Vec<Metric>, nodes: usize, commits: usize) {
    let all: Vec<Node> = (0..nodes).map(|i| Node::new(&format!("m{i}"))).collect();
    // BENCH_REPLICATE=false: announcements without the background fetches they start (to see
    // what those cost the announcements that follow).
    if let Ok(replicate) = std::env::var("BENCH_REPLICATE") {
        for node in &all {
            node.config(&["p2p.replicate", &replicate]);
        }
    }
    all[0].start();
    let boot = all[0].tcp_addr();
    let origin = all[0].repo("proj", 1);
    let mut repos = vec![origin.clone()];
    for node in &all[1..] {
        node.config(&["p2p.bootstrap", &boot]);
        node.git(&node.path("home"), &["clone", "-q", origin.to_str().expect("utf-8"), "proj"]);
        repos.push(node.path("home/proj"));
        node.start();
    }
    for (node, repo) in all.iter().zip(&repos) {
        node.ok_in(repo, &["init"]);
    }
    support::eventually(Duration::from_secs(120), "every node to have peers", || {
        all.iter().all(|n| n.peers().len() >= (nodes - 1).min(4)).then_some(())
    });
    let repo_id = repo_id_of(&all[0], &origin);
    let (tx, rx) = std::sync::mpsc::channel::<(usize, String, u64)>();
    // Each node's follower is a process of its own, as `git p2p log --follow` in a terminal is.
    let _followers: Vec<FollowChild> =
        all.iter().enumerate().skip(1).map(|(i, node)| FollowChild::spawn(node, &repo_id, i, tx.clone())).collect();
    // Warm-up commit: the mesh forms.
    time_commit(&all[0], &origin, 0, false);
    let warm = all[0].git(&origin, &["rev-parse", "HEAD"]).trim().to_string();
    let mut got = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < nodes - 1 && Instant::now() < deadline {
        if let Ok((i, c, _)) = rx.recv_timeout(Duration::from_secs(1)) {
            if c == warm {
                got.insert(i);
            }
        }
    }
    let (mut per_node, mut until_all) = (Vec::new(), Vec::new());
    let (mut delivered, mut expected) = (0usize, 0usize);
    let pids: Vec<i32> = all.iter().filter_map(|n| n.pid()).collect();
    // As the floor's network: two heartbeats for the mesh, then quiet, which in a crowd is after
    // the peers' fetches of the warm-up commit (they start within the crowd's wait).
    use git_p2p::node::service::mirror::{CROWD_SPREAD, CROWD_WAIT};
    let crowd = CROWD_WAIT + CROWD_SPREAD + Duration::from_secs(2);
    settle(metrics, &pids, nodes, ["announce_n_settle", "announce_n_idle_cpu"], crowd);
    let perf = Perf::start(&pids);
    let mut done = std::collections::HashSet::from([warm]);
    for k in 1..=commits {
        time_commit(&all[0], &origin, k, false);
        let committed = monotonic_ns();
        // The one commit not seen before is this one (its id is read once it arrived: a git
        // process started meanwhile would compete with the nodes, which the floor's run has not).
        expected += nodes - 1;
        let mut seen: std::collections::HashMap<String, Vec<(usize, u64)>> = std::collections::HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.values().all(|s| s.len() < nodes - 1) && Instant::now() < deadline {
            if let Ok((i, c, at)) = rx.recv_timeout(Duration::from_millis(200)) {
                if !done.contains(&c) {
                    let s = seen.entry(c).or_default();
                    if s.iter().all(|(j, _)| *j != i) {
                        s.push((i, at));
                    }
                }
            }
        }
        let commit = all[0].git(&origin, &["rev-parse", "HEAD"]).trim().to_string();
        let seen = seen.remove(&commit).unwrap_or_default();
        done.insert(commit);
        delivered += seen.len();
        let mut last = committed;
        for (_, at) in &seen {
            per_node.push(at.saturating_sub(committed) as f64 / 1e6);
            last = last.max(*at);
        }
        if seen.len() == nodes - 1 {
            until_all.push(last.saturating_sub(committed) as f64 / 1e6);
        }
    }
    push_perf(metrics, perf, commits, "announce_n_cpu_ours", nodes);
    let rss: Vec<f64> = all.iter().filter_map(|n| n.pid()).map(rss_mib).collect();
    metrics.push(Metric { name: "announce_n_per_node", unit: "ms", samples: per_node, nodes, goal: "p99 <= 100 ms" });
    metrics.push(Metric {
        name: "announce_n_until_all",
        unit: "ms",
        samples: until_all,
        nodes,
        goal: "(all nodes have it)",
    });
    metrics.push(Metric {
        name: "announce_n_delivery",
        unit: "%",
        samples: vec![100.0 * delivered as f64 / expected.max(1) as f64],
        nodes,
        goal: "100 %",
    });
    metrics.push(Metric { name: "rss_in_network", unit: "MiB", samples: rss, nodes, goal: "(per node)" });
}

/// Our gossip path against bare rust-libp2p: one message at a time from node A to node B.
/// Ours: a signed chat message through A's control socket, validated, stored and streamed to a
/// follower of B. Bare: two gossipsub swarms (same libp2p, TCP, same gossipsub settings) in this
/// process, publish → `Message` event; then in two processes, unsigned as ours and with
/// gossipsub's signatures (the crypto work ours does in its envelopes). The ratios are our
/// overhead over the stack.
fn gossip_vs_bare(metrics: &mut Vec<Metric>, count: usize) {
    use git_p2p::control::Client;
    use git_p2p::proto::chat::{ChatMessage, KIND};
    use git_p2p::proto::envelope::Envelope;
    use git_p2p::proto::repo::RepoInfo;

    let alice = Node::new("galice");
    let bob = Node::new("gbob");
    // BENCH_NOSTR=1: both bridged to Nostr, as a user with `p2p.relay` set; the relay is a closed
    // port on 127.0.0.1, so the events wait in the queue (and the bridge redials now and then).
    if std::env::var_os("BENCH_NOSTR").is_some() {
        for node in [&alice, &bob] {
            node.config(&["p2p.relay", "ws://127.0.0.1:9"]);
        }
    }
    bob.start();
    alice.config(&["p2p.bootstrap", &bob.tcp_addr()]);
    let repo = alice.repo("proj", 1);
    bob.git(&bob.path("home"), &["clone", "-q", repo.to_str().expect("utf-8"), "proj"]);
    alice.ok_in(&repo, &["init"]);
    bob.ok_in(&bob.path("home/proj"), &["init"]);
    support::eventually(Duration::from_secs(30), "alice and bob connected", || {
        (!alice.peers().is_empty()).then_some(())
    });
    let repo_id = repo_id_of(&alice, &repo);
    let info = RepoInfo { id: repo_id.clone(), name: "proj".into(), git_dir: None };
    // Alice's own messages, signed with her key as her chat window signs them (her node checks
    // them by signing again). Her node sends an author's messages at once up to its pacer's
    // burst, then at its rate: the harness sends bursts a little smaller, and waits for the
    // bucket to fill again between them, so that every message is timed on the path it takes
    // at once.
    use git_p2p::node::service::{CHAT_BURST, CHAT_RATE, SEND_SHARE};
    let key = git_p2p::identity::Identity::load_or_create_libp2p(&paths(&alice).data_dir).expect("alice's key");
    let burst = (CHAT_BURST * SEND_SHARE) as usize - 5;
    let refill = Duration::from_secs_f64(burst as f64 / (CHAT_RATE * SEND_SHARE)) + Duration::from_millis(200);
    let rx = follow_chat(&bob, repo_id.as_str());
    let mut sender = Client::connect(&paths(&alice)).expect("alice's node");
    let mut ours = Vec::new();
    let (mut perf_a, mut perf_b) = (None, None);
    for i in 0..=count {
        if i > 0 && i % burst == 0 {
            Perf::pause([&mut perf_a, &mut perf_b], refill);
        }
        if i == 1 {
            // After the first message (which waits for the mesh).
            perf_a = Perf::start(&alice.pid().into_iter().collect::<Vec<_>>());
            perf_b = Perf::start(&bob.pid().into_iter().collect::<Vec<_>>());
        }
        let m =
            ChatMessage { thread: None, text: format!("g{i} {}", "x".repeat(400)), name: None, nonce: format!("{i}") };
        let ts = git_p2p::clock::unix_now_ms();
        let envelope = Envelope::sign(&key, KIND, &repo_id, ts, m.to_body());
        let t = Instant::now();
        let _ = sender.chat_send(info.clone(), envelope, None);
        let prefix = format!("g{i} ");
        let arrived = loop {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok((at, text)) if text.starts_with(&prefix) => break Some(at),
                Ok(_) => {}
                Err(_) => break None,
            }
        };
        // The first one waits for the mesh; a lost one is simply not counted.
        if let (Some(at), true) = (arrived, i > 0) {
            ours.push(ms(at - t));
        }
    }
    push_perf(metrics, perf_a, count, "gossip_cpu_sender_ours", 1);
    push_perf(metrics, perf_b, count, "gossip_cpu_receiver_ours", 1);
    // Our path has two control-socket hops (client → alice, bob → follower): about one round trip
    // of a request the node answers at once.
    let mut socket = Vec::new();
    for _ in 0..count {
        let t = Instant::now();
        // One page of an empty room (a limit of 0 would not ask the node at all).
        let _ = sender.chat_history("none", 1);
        socket.push(ms(t.elapsed()));
    }
    let bare = bare_gossip(count);
    let bare_processes = bare_gossip_processes(count, Signing::Anonymous, None);
    let bare_signed = bare_gossip_processes(count, Signing::Signed, Some(&mut *metrics));
    let ratio = vec![median(&ours) / median(&bare)];
    let node_to_node: Vec<f64> = vec![(median(&ours) - median(&socket)).max(0.0)];
    let ratio_processes = vec![node_to_node[0] / median(&bare_processes)];
    let ratio_signed = vec![node_to_node[0] / median(&bare_signed)];
    metrics.push(Metric { name: "gossip_2_nodes_ours", unit: "ms", samples: ours, nodes: 2, goal: "(vs bare)" });
    metrics.push(Metric { name: "gossip_socket_rtt", unit: "ms", samples: socket, nodes: 1, goal: "(part of ours)" });
    metrics.push(Metric {
        name: "gossip_ours_minus_socket",
        unit: "ms",
        samples: node_to_node,
        nodes: 2,
        goal: "(node to node)",
    });
    metrics.push(Metric {
        name: "gossip_2_nodes_bare",
        unit: "ms",
        samples: bare,
        nodes: 2,
        goal: "(floor, 1 thread)",
    });
    metrics.push(Metric {
        name: "gossip_bare_2_processes",
        unit: "ms",
        samples: bare_processes,
        nodes: 2,
        goal: "(floor, 2 processes)",
    });
    metrics.push(Metric {
        name: "gossip_bare_2_processes_signed",
        unit: "ms",
        samples: bare_signed,
        nodes: 2,
        goal: "(floor, 2 processes, signed)",
    });
    metrics.push(Metric { name: "gossip_ratio_p50", unit: "x", samples: ratio, nodes: 2, goal: "<= 1.2x" });
    metrics.push(Metric {
        name: "gossip_ratio_node_to_node",
        unit: "x",
        samples: ratio_processes,
        nodes: 2,
        goal: "<= 1.2x (vs 2 processes)",
    });
    metrics.push(Metric {
        name: "gossip_ratio_node_to_node_signed",
        unit: "x",
        samples: ratio_signed,
        nodes: 2,
        goal: "<= 1.5x (vs signed pair)",
    });
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A bare gossipsub swarm's message authenticity.
#[derive(Clone, Copy)]
enum Signing {
    /// As our nodes' gossip: no gossipsub signature (ours signs an envelope instead).
    Anonymous,
    /// Gossipsub's own signatures, checked strictly on every copy: the crypto work ours does.
    Signed,
}

impl Signing {
    /// The argument after `--bare-child` that selects it in a child process.
    fn arg(self) -> &'static str {
        match self {
            Signing::Anonymous => "anonymous",
            Signing::Signed => "signed",
        }
    }

    fn from_arg(arg: Option<&str>) -> Self {
        match arg {
            Some("anonymous") => Signing::Anonymous,
            Some("signed") => Signing::Signed,
            other => panic!("--bare-child anonymous|signed, not {other:?}"),
        }
    }
}

type BareGossip =
    libp2p::gossipsub::Behaviour<libp2p::gossipsub::IdentityTransform, libp2p::gossipsub::AllowAllSubscriptionFilter>;

/// A bare gossipsub swarm configured as our nodes' gossip is (content ids, same heartbeat), with
/// nothing of ours on top; `signing` says whether gossipsub signs and checks messages itself.
fn bare_swarm(signing: Signing) -> libp2p::Swarm<BareGossip> {
    use libp2p::{gossipsub, noise, tcp, yamux};
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .expect("tcp")
        .with_behaviour(|key| {
            let (authenticity, validation) = match signing {
                Signing::Anonymous => (gossipsub::MessageAuthenticity::Anonymous, gossipsub::ValidationMode::Anonymous),
                Signing::Signed => {
                    (gossipsub::MessageAuthenticity::Signed(key.clone()), gossipsub::ValidationMode::Strict)
                }
            };
            let config = gossipsub::ConfigBuilder::default()
                .heartbeat_initial_delay(Duration::from_millis(500))
                .heartbeat_interval(Duration::from_secs(1))
                .validation_mode(validation)
                .message_id_fn(git_p2p::node::behaviour::message_id)
                .build()
                .expect("config");
            gossipsub::Behaviour::<gossipsub::IdentityTransform, gossipsub::AllowAllSubscriptionFilter>::new(
                authenticity,
                config,
            )
            .expect("gossipsub")
        })
        .expect("behaviour")
        // Our nodes keep idle connections for an hour; gossipsub keeps only its mesh's alive, so a
        // shorter timeout would thin the bare network's full mesh of connections during a slow run.
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build()
}

/// The payload of bare message `i`: `g<i> ` and `padding` bytes; receivers report it by `i`.
fn bare_message(i: usize, padding: usize) -> Vec<u8> {
    format!("g{i} {}", "x".repeat(padding)).into_bytes()
}

/// CLOCK_MONOTONIC in ns: one clock for every process of this machine.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we own; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Two bare gossipsub swarms on loopback TCP, both in this thread; `count` publish → receive
/// latencies. No process boundary: the lowest the stack can do.
fn bare_gossip(count: usize) -> Vec<f64> {
    use libp2p::futures::StreamExt;
    use libp2p::gossipsub;
    use libp2p::swarm::SwarmEvent;

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let (mut a, mut b) = (bare_swarm(Signing::Anonymous), bare_swarm(Signing::Anonymous));
        let topic = gossipsub::IdentTopic::new("bench");
        a.behaviour_mut().subscribe(&topic).expect("subscribe");
        b.behaviour_mut().subscribe(&topic).expect("subscribe");
        b.listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr")).expect("listen");
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = b.select_next_some().await {
                break address;
            }
        };
        a.dial(addr).expect("dial");
        let b_id = *b.local_peer_id();
        loop {
            tokio::select! {
                e = a.select_next_some() => {
                    if let SwarmEvent::Behaviour(gossipsub::Event::Subscribed { peer_id, .. }) = e {
                        if peer_id == b_id { break; }
                    }
                }
                _ = b.select_next_some() => {}
            }
        }
        let mut out = Vec::new();
        for i in 0..=count {
            let t = Instant::now();
            if a.behaviour_mut().publish(topic.clone(), bare_message(i, 600)).is_err() {
                continue;
            }
            let received = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    tokio::select! {
                        e = b.select_next_some() => {
                            if let SwarmEvent::Behaviour(gossipsub::Event::Message { .. }) = e { break; }
                        }
                        _ = a.select_next_some() => {}
                    }
                }
            })
            .await;
            if received.is_ok() && i > 0 {
                out.push(ms(t.elapsed()));
            }
        }
        out
    })
}

/// A line a bare child prints on stdout (after its `ADDR` line).
enum ChildReport {
    /// `R <i> <ns>`: it received message `i` at monotonic time `ns`.
    Received(usize, u64),
    /// `P <i> <ns>`: it published message `i` at `ns` (just before signing and sending).
    Published(usize, u64),
    /// `S <n>`: it knows of `n` connected peers subscribed to the topic.
    Subscribed(usize),
}

impl ChildReport {
    fn parse(line: &str) -> Option<Self> {
        let mut parts = line.split(' ');
        let (kind, n) = (parts.next()?, parts.next()?.parse().ok()?);
        let at = parts.next().and_then(|at| at.parse().ok());
        match kind {
            "R" => Some(ChildReport::Received(n, at?)),
            "P" => Some(ChildReport::Published(n, at?)),
            "S" => Some(ChildReport::Subscribed(n)),
            _ => None,
        }
    }
}

/// A bare gossipsub node, run as `harness --bare-child <signing>`: listens on loopback, prints
/// `ADDR <address>`, subscribes to the topic and prints [`ChildReport`] lines. Commands come on
/// stdin: `DIAL <address>`, `PUB <i> <padding>` (publish [`bare_message`] `i`). It exits when its
/// stdin closes, so that it does not outlive the harness whatever happens to the harness.
fn bare_child(signing: Signing) {
    use libp2p::futures::StreamExt;
    use libp2p::gossipsub;
    use libp2p::swarm::SwarmEvent;
    use std::io::Write;

    // The runtime has no async stdin (tokio's io-std is off): a thread reads it.
    let (tx, mut commands) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let mut b = bare_swarm(signing);
        let topic = gossipsub::IdentTopic::new("bench");
        b.behaviour_mut().subscribe(&topic).expect("subscribe");
        b.listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr")).expect("listen");
        let mut out = std::io::stdout().lock();
        loop {
            let line = tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    match command.split_once(' ') {
                        Some(("DIAL", addr)) => {
                            b.dial(addr.parse::<libp2p::Multiaddr>().expect("multiaddr")).expect("dial");
                        }
                        Some(("PUB", args)) => {
                            let (i, padding) = args.split_once(' ').expect("PUB <i> <padding>");
                            let (i, padding) = (i.parse().expect("i"), padding.parse().expect("padding"));
                            let at = monotonic_ns();
                            // Reported only once published: the harness counts a failure as lost.
                            match b.behaviour_mut().publish(topic.clone(), bare_message(i, padding)) {
                                Ok(_) => {
                                    let _ = writeln!(out, "P {i} {at}").and_then(|_| out.flush());
                                }
                                Err(e) => eprintln!("bare child: publish {i}: {e}"),
                            }
                        }
                        _ => panic!("bare child: unknown command {command:?}"),
                    }
                    continue;
                }
                event = b.select_next_some() => match event {
                    SwarmEvent::NewListenAddr { address, .. } => format!("ADDR {address}/p2p/{}", b.local_peer_id()),
                    SwarmEvent::Behaviour(gossipsub::Event::Message { message, .. }) => {
                        let at = monotonic_ns();
                        let text = String::from_utf8_lossy(&message.data);
                        let Some(i) = text.strip_prefix('g').and_then(|t| t.split(' ').next()) else { continue };
                        format!("R {i} {at}")
                    }
                    SwarmEvent::Behaviour(gossipsub::Event::Subscribed { .. }) => {
                        let hash = topic.hash();
                        let n = b.behaviour().all_peers().filter(|(_, topics)| topics.contains(&&hash)).count();
                        format!("S {n}")
                    }
                    _ => continue,
                },
            };
            if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                return;
            }
        }
    })
}

/// A running `--bare-child` process. Dropping it kills and reaps the process, so that no path
/// out of a measurement (a panic included) leaves one behind.
struct BareChild {
    process: std::process::Child,
    stdin: std::process::ChildStdin,
}

impl BareChild {
    /// Starts a child and waits for its address; from then on `report` gets every line it prints
    /// (on a thread of its own) until `report` returns false.
    fn spawn(
        signing: Signing,
        mut report: impl FnMut(ChildReport) -> bool + Send + 'static,
    ) -> (Self, libp2p::Multiaddr) {
        let exe = std::env::current_exe().expect("own path");
        let mut process = Command::new(exe)
            .args(["--bare-child", signing.arg()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("child");
        let (stdin, stdout) = (process.stdin.take().expect("stdin"), process.stdout.take().expect("stdout"));
        let child = BareChild { process, stdin };
        let mut lines = std::io::BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines.next().expect("child address").expect("read");
            if let Some(a) = line.strip_prefix("ADDR ") {
                break a.parse().expect("multiaddr");
            }
        };
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if ChildReport::parse(&line).is_some_and(|r| !report(r)) {
                    return;
                }
            }
        });
        (child, addr)
    }

    fn command(&mut self, line: &str) {
        use std::io::Write;
        writeln!(self.stdin, "{line}").expect("child's stdin");
    }
}

impl Drop for BareChild {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A follower of one of our nodes' feed, run as `harness --follow-child <data dir> <socket dir>
/// <repo>`: prints `F <commit> <ns>` (CLOCK_MONOTONIC when the node's line arrived) per
/// announcement. Timed in a process of its own, in a session of its own, as a bare node times
/// what it receives in its own process: a thread of the harness, in the harness's session, would
/// share one CPU share among all 49 followers (the kernel's autogroups are per session, and
/// every daemon has its own), and would time its own wait for a CPU.
fn follow_child(args: &[String]) {
    use git_p2p::control::{Client, Feed};
    use std::io::Write;
    let [data_dir, socket_dir, repo, ..] = args else { panic!("--follow-child <data dir> <socket dir> <repo>") };
    let paths = git_p2p::paths::Paths { data_dir: data_dir.into(), socket_dir: socket_dir.into() };
    let repo = repo.parse().expect("repository id");
    let mut follower = Client::follow(&paths, &Feed::all(repo)).expect("follow");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "READY").and_then(|_| out.flush());
    while let Ok(entry) = follower.recv() {
        let at = monotonic_ns();
        if writeln!(out, "F {} {at}", entry.commit.id).and_then(|_| out.flush()).is_err() {
            return;
        }
    }
}

/// A running `--follow-child` process, killed and reaped when dropped.
struct FollowChild(std::process::Child);

impl FollowChild {
    /// Starts a follower of `node`'s feed of `repo` in a session of its own and waits until it
    /// follows; from then on sends `(index, commit, ns)` per announcement to `tx`.
    fn spawn(
        node: &Node,
        repo: &git_p2p::proto::repo::RepoId,
        index: usize,
        tx: std::sync::mpsc::Sender<(usize, String, u64)>,
    ) -> Self {
        use std::os::unix::process::CommandExt;
        let paths = paths(node);
        let mut cmd = Command::new(std::env::current_exe().expect("own path"));
        cmd.arg("--follow-child").arg(&paths.data_dir).arg(&paths.socket_dir).arg(repo.as_str());
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| if libc::setsid() == -1 { Err(std::io::Error::last_os_error()) } else { Ok(()) });
        }
        let mut process = cmd.spawn().expect("follower");
        let mut lines = std::io::BufReader::new(process.stdout.take().expect("stdout")).lines();
        assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("READY"), "follower {index} did not start");
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut parts = line.split(' ').skip(1);
                let (Some(commit), Some(at)) = (parts.next(), parts.next().and_then(|a| a.parse().ok())) else {
                    continue;
                };
                if tx.send((index, commit.to_string(), at)).is_err() {
                    return;
                }
            }
        });
        FollowChild(process)
    }
}

impl Drop for FollowChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The same publish → receive with the two swarms in two processes, as our nodes are: the cost
/// of crossing processes (wake-ups, scheduling) is in this floor too. Both swarms sign as
/// `signing` says.
fn bare_gossip_processes(count: usize, signing: Signing, metrics: Option<&mut Vec<Metric>>) -> Vec<f64> {
    use libp2p::futures::StreamExt;
    use libp2p::gossipsub;
    use libp2p::swarm::SwarmEvent;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (child, addr) = BareChild::spawn(signing, move |report| match report {
        ChildReport::Received(i, at) => tx.send((i, at)).is_ok(),
        _ => true,
    });
    let child_pid = child.process.id() as i32;
    let count_perf = metrics.is_some();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (out, perf) = runtime.block_on(async move {
        let mut a = bare_swarm(signing);
        let topic = gossipsub::IdentTopic::new("bench");
        a.behaviour_mut().subscribe(&topic).expect("subscribe");
        a.dial(addr).expect("dial");
        loop {
            if let SwarmEvent::Behaviour(gossipsub::Event::Subscribed { .. }) = a.select_next_some().await {
                break;
            }
        }
        let mut out = Vec::new();
        let mut perf = (None, None);
        for i in 0..=count {
            if i == 1 && count_perf {
                // SAFETY: gettid(2) has no arguments and cannot fail.
                let me = unsafe { libc::gettid() };
                perf = (Perf::start_threads(&[me]), Perf::start(&[child_pid]));
            }
            let t = monotonic_ns();
            if a.behaviour_mut().publish(topic.clone(), bare_message(i, 600)).is_err() {
                continue;
            }
            let received = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    tokio::select! {
                        r = rx.recv() => match r {
                            Some((n, at)) if n == i => return Some(at),
                            Some(_) => {}
                            None => return None,
                        },
                        _ = a.select_next_some() => {}
                    }
                }
            })
            .await;
            if let (Ok(Some(at)), true) = (received, i > 0) {
                out.push(at.saturating_sub(t) as f64 / 1e6);
            }
        }
        (out, perf)
    });
    // Before the child is gone (its CPU time with it).
    if let Some(metrics) = metrics {
        push_perf(metrics, perf.0, count, "gossip_cpu_sender_bare", 1);
        push_perf(metrics, perf.1, count, "gossip_cpu_receiver_bare", 1);
    }
    drop(child);
    out
}

/// The size of one of our commit announcements as it travels (a signed envelope's bytes).
fn announcement_len() -> usize {
    use git_p2p::proto::announce::{Announcement, Commit};
    let announcement = Announcement {
        commit: Commit {
            ref_name: Some("refs/heads/main".into()),
            id: "a".repeat(40),
            parents: vec!["b".repeat(40)],
            author: "m0".into(),
            summary: "bench 1".into(),
            time: 1_700_000_000,
        },
        name: None,
    };
    let key = libp2p::identity::Keypair::generate_ed25519();
    let repo = git_p2p::proto::repo::RepoId::try_from("c".repeat(40)).expect("a repo id");
    announcement.sign(&key, &repo, 1_700_000_000_000).encode().len()
}

/// The floor of `announce_many`: a bare gossipsub network of `nodes` processes with our topology
/// (every node connected to every other, as ours end up: they dial every peer Kademlia finds),
/// signed and strictly checked (the crypto work ours does). Node 0 publishes `messages` messages
/// the size of one of our announcements, one at a time, each once the previous reached all (or
/// 10 s passed, as ours). Per node and until-all latencies (ms), and ours' until-all over it.
fn announce_many_bare(metrics: &mut Vec<Metric>, nodes: usize, messages: usize) {
    let (tx, rx) = std::sync::mpsc::channel();
    let (mut children, mut addrs) = (Vec::with_capacity(nodes), Vec::with_capacity(nodes));
    for k in 0..nodes {
        let tx = tx.clone();
        let (child, addr) = BareChild::spawn(Signing::Signed, move |report| tx.send((k, report)).is_ok());
        children.push(child);
        addrs.push(addr);
    }
    // Node k dials nodes 0..k: one connection per pair.
    for (k, child) in children.iter_mut().enumerate() {
        for addr in &addrs[..k] {
            child.command(&format!("DIAL {addr}"));
        }
    }
    // Each node knows every other's subscription once all connections are up.
    let mut subscribed = vec![0; nodes];
    let deadline = Instant::now() + Duration::from_secs(60);
    while subscribed.iter().any(|&n| n < nodes - 1) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((k, ChildReport::Subscribed(n))) => subscribed[k] = n,
            Ok(_) => {}
            Err(_) => {
                eprintln!("bare network: not fully connected after 60 s (subscribed peers: {subscribed:?})");
                break;
            }
        }
    }
    let padding = announcement_len();
    // Warm-up message, as ours' first commit. Node 0 floods its own messages to every subscribed
    // peer, so the warm-up arrives before the mesh exists; two heartbeats (1 s) later every node
    // has grafted its mesh and forwards (and checks) copies as ours do.
    bare_deliver(&mut children[0], &rx, 0, padding, nodes, Duration::from_secs(60));
    let (mut per_node, mut until_all) = (Vec::new(), Vec::new());
    let pids: Vec<i32> = children.iter().map(|c| c.process.id() as i32).collect();
    let names = ["announce_n_bare_settle", "announce_n_bare_idle_cpu"];
    settle(metrics, &pids, nodes, names, Duration::from_secs(2));
    let perf = Perf::start(&pids);
    for i in 1..=messages {
        let (Some(published), received) =
            bare_deliver(&mut children[0], &rx, i, padding, nodes, Duration::from_secs(10))
        else {
            continue;
        };
        let latencies: Vec<f64> = received.iter().map(|at| at.saturating_sub(published) as f64 / 1e6).collect();
        if latencies.len() == nodes - 1 {
            until_all.push(latencies.iter().copied().fold(0.0, f64::max));
        }
        per_node.extend(latencies);
    }
    push_perf(metrics, perf, messages, "announce_n_cpu_bare", nodes);
    drop(children);
    let ours = metrics.iter().rev().find(|m| m.name == "announce_n_until_all").map_or(f64::NAN, |m| median(&m.samples));
    let ratio = vec![ours / median(&until_all)];
    metrics.push(Metric {
        name: "announce_n_bare_per_node",
        unit: "ms",
        samples: per_node,
        nodes,
        goal: "(floor, signed)",
    });
    metrics.push(Metric {
        name: "announce_n_bare_until_all",
        unit: "ms",
        samples: until_all,
        nodes,
        goal: "(floor, signed)",
    });
    metrics.push(Metric {
        name: "announce_n_ratio_until_all",
        unit: "x",
        samples: ratio,
        nodes,
        goal: "<= 1.5x (vs bare network)",
    });
}

/// Has `publisher` (node 0) publish bare message `i` and waits until the `nodes - 1` others have
/// it or `timeout` passed. When it was published (None if it was not) and when each node that
/// got it received it, in monotonic ns.
fn bare_deliver(
    publisher: &mut BareChild,
    reports: &std::sync::mpsc::Receiver<(usize, ChildReport)>,
    i: usize,
    padding: usize,
    nodes: usize,
    timeout: Duration,
) -> (Option<u64>, Vec<u64>) {
    publisher.command(&format!("PUB {i} {padding}"));
    let deadline = Instant::now() + timeout;
    let (mut published, mut received) = (None, std::collections::HashMap::new());
    while published.is_none() || received.len() < nodes - 1 {
        match reports.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((0, ChildReport::Published(n, at))) if n == i => published = Some(at),
            Ok((k, ChildReport::Received(n, at))) if n == i && k != 0 => {
                received.entry(k).or_insert(at);
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    (published, received.into_values().collect())
}

/// The DHT: `nodes` daemons bootstrapping to the first; a warm node sets and gets keys through
/// the control socket (what `git p2p kv` does, without the process start). Also records how many
/// peers each query asked.
fn kv_bench(metrics: &mut Vec<Metric>, nodes: usize, ops: usize) {
    use git_p2p::control::Client;
    use git_p2p::proto::repo::RepoInfo;

    let names: Vec<String> = (0..nodes).map(|i| format!("k{i}")).collect();
    let all: Vec<Node> = names.iter().map(|n| Node::new(n)).collect();
    all[0].start();
    let boot = all[0].tcp_addr();
    for node in &all[1..] {
        node.config(&["p2p.bootstrap", &boot]);
        node.start();
    }
    // Warm: every node knows a good part of the network.
    support::eventually(Duration::from_secs(60), "the DHT network to form", || {
        all.iter().all(|n| n.peers().len() >= (nodes - 1).min(8)).then_some(())
    });
    let repo = RepoInfo::bare(git_p2p::proto::repo::RepoId::try_from("b".repeat(40)).expect("a repo id"));
    let (setter, getter) = (&all[1], &all[nodes - 1]);
    let mut set_client = Client::connect(&paths(setter)).expect("node");
    let mut get_client = Client::connect(&paths(getter)).expect("node");
    let (mut set_ms, mut get_ms, mut set_asked, mut get_asked) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..ops {
        let key = format!("bench/b{i}");
        let value = b"0123456789abcdef0123456789abcdef01234567";
        let t = Instant::now();
        match set_client.kv_put(repo.clone(), &key, Some(value), None) {
            Ok(stored) if stored.replicas > 0 => {
                set_ms.push(ms(t.elapsed()));
                set_asked.push(f64::from(stored.requests));
            }
            other => eprintln!("kv set {key}: {other:?}"),
        }
        let t = Instant::now();
        match get_client.kv_get(repo.id.clone(), &key) {
            Ok(found) if found.record.is_some() => {
                get_ms.push(ms(t.elapsed()));
                get_asked.push(f64::from(found.requests));
            }
            other => eprintln!("kv get: {other:?}"),
        }
    }
    metrics.push(Metric { name: "kv_set", unit: "ms", samples: set_ms, nodes, goal: "p50 <= 50 ms" });
    metrics.push(Metric { name: "kv_get", unit: "ms", samples: get_ms, nodes, goal: "p50 <= 10 ms" });
    metrics.push(Metric { name: "kv_set_peers_asked", unit: "", samples: set_asked, nodes, goal: "(lookup size)" });
    metrics.push(Metric { name: "kv_get_peers_asked", unit: "", samples: get_asked, nodes, goal: "(lookup size)" });
}

/// `git p2p chat` in a tmux pane, warm node: from starting the command until the window is on
/// the screen (tmux's capture-pane polled; each poll is a process, so ±2 ms).
fn tui_first_frame(metrics: &mut Vec<Metric>, runs: usize) {
    let gina = Node::new("gina");
    let repo = gina.repo("proj", 1);
    gina.ok_in(&repo, &["init"]);
    let script = gina.path("chat.sh");
    let mut text = String::from("#!/bin/sh\n");
    for (k, v) in gina.env_pairs() {
        text.push_str(&format!("export {k}='{v}'\n"));
    }
    text.push_str(&format!("cd '{}'\nexec git-p2p chat\n", repo.display()));
    std::fs::write(&script, text).expect("script");
    let mut samples = Vec::new();
    for run in 0..runs {
        // A server per run: a killed server may still hold its socket when the next one starts.
        let socket = gina.path(&format!("tmux-{run}.sock"));
        let tmux = |args: &[&str]| {
            Command::new("tmux")
                .arg("-S")
                .arg(&socket)
                .arg("-f")
                .arg("/dev/null")
                .args(args)
                .env_remove("TMUX")
                .output()
        };
        let t0 = Instant::now();
        let started =
            tmux(&["new-session", "-d", "-s", "g", "-x", "100", "-y", "30", &format!("sh {}", script.display())]);
        match started {
            Ok(o) if o.status.success() => {}
            other => {
                eprintln!("tmux failed, tui_first_frame not measured: {other:?}");
                break;
            }
        }
        let deadline = t0 + Duration::from_secs(10);
        while Instant::now() < deadline {
            let screen =
                tmux(&["capture-pane", "-p", "-t", "g"]).map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            if screen.is_ok_and(|s| s.contains("message (Enter")) {
                samples.push(ms(t0.elapsed()));
                break;
            }
        }
        let _ = tmux(&["kill-server"]);
    }
    metrics.push(Metric { name: "tui_first_frame", unit: "ms", samples, nodes: 1, goal: "<= 100 ms" });
}

/// The control-socket paths of a test node.
/// `node`'s room `room` as it arrives: (when, text) per message, read on a thread of its own.
fn follow_chat(node: &Node, room: &str) -> std::sync::mpsc::Receiver<(Instant, String)> {
    use git_p2p::control::{Client, Room};
    let mut follower = Client::follow(&paths(node), &Room::named(room)).expect("follow");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        while let Ok(message) = follower.recv() {
            if tx.send((Instant::now(), message.text)).is_err() {
                return;
            }
        }
    });
    rx
}

/// The repository id (root commit) of `repo`, as `node`'s git sees it.
fn repo_id_of(node: &Node, repo: &Path) -> git_p2p::proto::repo::RepoId {
    let root = node.git(repo, &["rev-list", "--max-parents=0", "HEAD"]);
    git_p2p::proto::repo::RepoId::try_from(root.trim()).expect("the root commit is a repo id")
}

fn paths(node: &Node) -> git_p2p::paths::Paths {
    git_p2p::paths::Paths { data_dir: node.data_dir(), socket_dir: node.path("run/git-p2p") }
}

/// Chat through the node: 3 nodes (bob and carol bootstrap to alice), alice's user sends
/// `count` messages as fast as the control socket takes them, signed by 100 authors in turn (a
/// busy room; each author stays under the receivers' per-author rate limit); carol's node streams
/// them to a follower. Throughput over the whole run, per-message latency send → follower.
fn chat_bench(metrics: &mut Vec<Metric>, count: usize) {
    use git_p2p::control::api::ChatSent;
    use git_p2p::control::proto::Request;
    use git_p2p::control::Client;
    use git_p2p::proto::chat::{ChatMessage, KIND};
    use git_p2p::proto::envelope::Envelope;
    use git_p2p::proto::repo::RepoInfo;

    let alice = Node::new("alice");
    let bob = Node::new("bob");
    let carol = Node::new("carol");
    alice.start();
    let boot = alice.tcp_addr();
    bob.config(&["p2p.bootstrap", &boot]);
    carol.config(&["p2p.bootstrap", &boot]);
    let repo = alice.repo("proj", 1);
    for node in [&bob, &carol] {
        node.git(&node.path("home"), &["clone", "-q", repo.to_str().expect("utf-8"), "proj"]);
    }
    alice.ok_in(&repo, &["init"]);
    bob.ok_in(&bob.path("home/proj"), &["init"]);
    carol.ok_in(&carol.path("home/proj"), &["init"]);
    support::eventually(Duration::from_secs(30), "a full mesh of 3", || {
        [&alice, &bob, &carol].iter().all(|n| n.peers().len() == 2).then_some(())
    });
    let repo_id = repo_id_of(&alice, &repo);
    let info = RepoInfo { id: repo_id.clone(), name: "proj".into(), git_dir: None };
    let authors: Vec<libp2p::identity::Keypair> =
        (0..100).map(|_| libp2p::identity::Keypair::generate_ed25519()).collect();
    let start_ms = git_p2p::clock::unix_now_ms();
    let envelopes: Vec<Envelope> = (0..count)
        .map(|i| {
            let m = ChatMessage { thread: None, text: format!("bench {i}"), name: None, nonce: format!("{i:x}") };
            // Dated now (receivers drop what is dated far off), distinct per message.
            Envelope::sign(&authors[i % authors.len()], KIND, &repo_id, start_ms + i as u64, m.to_body())
        })
        .collect();

    let rx = follow_chat(&carol, repo_id.as_str());
    // Warm-up: one message end to end, so the room's subscriptions and mesh are in place.
    {
        let m = ChatMessage { thread: None, text: "warm-up".into(), name: None, nonce: "w".into() };
        let envelope = Envelope::sign(&authors[0], KIND, &repo_id, git_p2p::clock::unix_now_ms(), m.to_body());
        let mut client = Client::connect(&paths(&alice)).expect("alice's node");
        let answer = client.chat_send(info.clone(), envelope, None);
        assert!(answer.is_ok(), "{answer:?}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok((_, text)) if text == "warm-up" => break,
                _ => {}
            }
        }
    }
    // Four clients, each keeping up to 8 requests in flight, paced to 1000 messages/s in all:
    // latency is measured at the goal's rate, not at saturation (where it only shows queueing).
    // BENCH_CHAT_RATE (messages/s in all) to see latency at other loads; the goal is at 1000.
    let rate: u64 = std::env::var("BENCH_CHAT_RATE").ok().and_then(|r| r.parse().ok()).unwrap_or(1000).max(1);
    let interval = Duration::from_micros(4_000_000 / rate);
    let sent_at: std::sync::Arc<Vec<std::sync::OnceLock<Instant>>> =
        std::sync::Arc::new((0..count).map(|_| std::sync::OnceLock::new()).collect());
    let start = Instant::now();
    let mut senders = Vec::new();
    let per_client: Vec<Vec<(usize, Envelope)>> = (0..4)
        .map(|c| envelopes.iter().enumerate().filter(|(i, _)| i % 4 == c).map(|(i, e)| (i, e.clone())).collect())
        .collect();
    for mine in per_client {
        let (paths, info, sent_at) = (paths(&alice), info.clone(), sent_at.clone());
        senders.push(std::thread::spawn(move || {
            let mut client = Client::connect(&paths).expect("alice's node");
            let mut in_flight = std::collections::VecDeque::new();
            for (k, (i, envelope)) in mine.into_iter().enumerate() {
                let due = start + interval * k as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if in_flight.len() == 8 {
                    let id = in_flight.pop_front().expect("in flight");
                    client.answer::<ChatSent>(id).expect("sent");
                }
                let _ = sent_at[i].set(Instant::now());
                in_flight.push_back(
                    client.send(Request::ChatSend { repo: info.clone(), envelope, thread: None }).expect("send"),
                );
            }
            for id in in_flight {
                client.answer::<ChatSent>(id).expect("sent");
            }
        }));
    }
    for s in senders {
        s.join().expect("sender");
    }
    let mut latency = Vec::with_capacity(count);
    let mut last = start;
    while latency.len() < count {
        let Ok((at, text)) = rx.recv_timeout(Duration::from_secs(10)) else { break };
        if let Some(i) = text.strip_prefix("bench ").and_then(|n| n.parse::<usize>().ok()) {
            latency.push(ms(at - *sent_at[i].get().expect("sent")));
            last = at;
        }
    }
    let received = latency.len();
    if let Some(path) = std::env::var_os("BENCH_DUMP") {
        // Send time (ms since start) and latency of each message, to look at when tails happen.
        let rows: String = (0..count)
            .filter_map(|i| sent_at[i].get().map(|t| (i, ms(*t - start))))
            .zip(latency.iter())
            .map(|((i, t), l)| format!("{i} {t:.3} {l:.3}\n"))
            .collect();
        let _ = std::fs::write(path, rows);
    }
    let rate = received as f64 / (last - start).as_secs_f64();
    metrics.push(Metric { name: "chat_latency_3_nodes", unit: "ms", samples: latency, nodes: 3, goal: "p99 <= 10 ms" });
    metrics.push(Metric { name: "chat_throughput", unit: "/s", samples: vec![rate], nodes: 3, goal: ">= 1000 msg/s" });
    metrics.push(Metric {
        name: "chat_lost",
        unit: "msg",
        samples: vec![(count - received) as f64],
        nodes: 3,
        goal: "0",
    });
}

/// Times one `git commit --allow-empty` in `repo`; with `no_autostart` the hook may not start a node.
fn time_commit(node: &Node, repo: &Path, i: usize, no_autostart: bool) -> f64 {
    let mut cmd = Command::new("git");
    cmd.args(["commit", "-q", "--allow-empty", "-m", &format!("bench {i}")]).current_dir(repo);
    node.envs(&mut cmd);
    if no_autostart {
        cmd.env("GIT_P2P_NO_AUTOSTART", "1");
    }
    let t = Instant::now();
    let out = cmd.output().expect("git commit");
    let elapsed = ms(t.elapsed());
    assert!(out.status.success(), "{}", support::stderr(&out));
    elapsed
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--bare-child") {
        bare_child(Signing::from_arg(args.get(at + 1).map(String::as_str)));
        return;
    }
    if let Some(at) = args.iter().position(|a| a == "--follow-child") {
        follow_child(&args[at + 1..]);
        return;
    }
    let smoke = args.iter().any(|a| a == "--smoke");
    let runs = if smoke { 5 } else { 200 };
    let cold_runs = if smoke { 3 } else { 20 };
    let mut metrics = Vec::new();
    // BENCH_ONLY=chat,kv runs only those parts: basics (peers, cold start, idle RSS), hook,
    // announce, tui, gossip, many, kv, chat, start (start-up against the store's size), log,
    // fetch (clone from peers against a git daemon, replication, fetch with nothing new), sync
    // (catching up: 10 000 missed items, two nodes in sync, one node of many back), nat (the NAT
    // lab, root: hole punching, relayed vs direct announcements), sparse (30 nodes of at most 6
    // peers each: two peers of a repository finding each other).
    let only: Option<Vec<String>> =
        std::env::var("BENCH_ONLY").ok().map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let wants = |part: &str| only.as_ref().is_none_or(|o| o.iter().any(|p| p == part));

    if wants("basics") {
        basics(&mut metrics, runs, cold_runs, smoke);
    }
    if wants("hook") {
        hook_cost(&mut metrics, smoke);
    }
    if wants("announce") {
        announce_two(&mut metrics, smoke);
    }
    if wants("tui") {
        tui_first_frame(&mut metrics, if smoke { 2 } else { 20 });
    }
    // BENCH_REPEAT=n runs the floors' parts (gossip, many) n times, ours and the floor back to
    // back each time: one run's ratio moves by a fifth on a shared 2-core machine, so the
    // median of several is what tells a change. Each run's metrics are reported, then the
    // ratios of all runs together (`..._runs`).
    let repeat: usize = std::env::var("BENCH_REPEAT").ok().and_then(|n| n.parse().ok()).unwrap_or(1).max(1);
    if wants("gossip") {
        let count = std::env::var("BENCH_GOSSIP_COUNT").ok().and_then(|n| n.parse().ok()).unwrap_or(300);
        repeated(
            &mut metrics,
            repeat,
            "gossip_ratio_node_to_node_signed",
            "gossip_ratio_node_to_node_signed_runs",
            |m| gossip_vs_bare(m, if smoke { 10 } else { count }),
        );
    }
    if wants("many") {
        let many: usize = std::env::var("BENCH_NODES").ok().and_then(|n| n.parse().ok()).unwrap_or(50);
        let (nodes, commits) = if smoke { (4, 3) } else { (many, 20) };
        repeated(&mut metrics, repeat, "announce_n_ratio_until_all", "announce_n_ratio_until_all_runs", |m| {
            announce_many(m, nodes, commits);
            // After ours, whose daemons are gone by then: the floor has the machine to itself too.
            announce_many_bare(m, nodes, commits);
        });
    }
    if wants("kv") {
        kv_bench(&mut metrics, if smoke { 4 } else { 20 }, if smoke { 5 } else { 100 });
    }
    if wants("chat") {
        chat_bench(&mut metrics, if smoke { 50 } else { 3000 });
    }
    if wants("start") {
        start_bench(&mut metrics, smoke);
    }
    if wants("log") {
        log_filters(&mut metrics, if smoke { 5 } else { 50 });
    }
    if wants("fetch") {
        fetch::fetch_bench(&mut metrics, smoke);
    }
    if wants("sync") {
        sync::sync_bench(&mut metrics, smoke);
    }
    if wants("nat") {
        nat::nat_bench(&mut metrics, smoke);
    }
    if wants("sparse") {
        sparse::sparse_bench(&mut metrics, smoke);
    }
    report(&metrics);
}

/// `git p2p log -n 20` over a full feed (10 000 announcements), unfiltered and with a filter
/// that only the 20 oldest match: the node reads the whole feed for that page (wall time of the
/// command, which the node's event loop spends on the read).
fn log_filters(metrics: &mut Vec<Metric>, runs: usize) {
    use git_p2p::proto::announce::{Commit, FeedEntry};
    const OLD: &str = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";
    const NEW: &str = "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X";
    let gina = Node::new("gina");
    let repo = gina.repo("proj", 1);
    gina.ok_in(&repo, &["init"]);
    let repo_id = repo_id_of(&gina, &repo);
    gina.ok(&["daemon", "stop"]);
    let store = support::eventually(Duration::from_secs(10), "the stopped node's store", || {
        git_p2p::store::Store::open(&gina.data_dir().join("store.redb")).ok()
    });
    for i in 0..10_000u64 {
        let peer = if i < 20 { OLD } else { NEW };
        let entry = FeedEntry {
            repo: repo_id.clone(),
            peer: peer.into(),
            name: Some("peer".into()),
            commit: Commit {
                id: format!("{i:040x}"),
                parents: vec![format!("{:040x}", i + 1)],
                author: "peer".into(),
                summary: format!("commit {i} {}", "x".repeat(60)),
                time: 1_700_000_000 + i as i64,
                ref_name: Some("refs/heads/main".into()),
            },
            announced_at: 1_700_000_000_000 + i,
            received_at: 1_700_000_000_000 + i,
        };
        store.feed_insert(&entry).expect("insert");
    }
    store.sync().expect("sync");
    drop(store);
    gina.start();
    for (name, args) in [
        ("log_20_unfiltered", &["log", "--json", "-n", "20"][..]),
        ("log_20_author_scans_10000", &["log", "--json", "-n", "20", "--author", OLD]),
    ] {
        let mut samples = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            let out = gina.run_in(&repo, args);
            samples.push(ms(t.elapsed()));
            assert!(out.status.success() && out.stdout.iter().filter(|b| **b == b'\n').count() == 20);
        }
        metrics.push(Metric { name, unit: "ms", samples, nodes: 1, goal: "(wall time of the command)" });
    }
}

fn basics(metrics: &mut Vec<Metric>, runs: usize, cold_runs: usize, smoke: bool) {
    // 1. `git p2p peers` against a warm node with one connected peer.
    let alice = Node::new("alice");
    let bob = Node::new("bob");
    alice.start();
    bob.config(&["p2p.bootstrap", &alice.tcp_addr()]);
    bob.start();
    support::eventually(Duration::from_secs(20), "bob to connect", || (!alice.peers().is_empty()).then_some(()));
    let mut samples = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let out = alice.run(&["peers", "--json"]);
        samples.push(ms(t.elapsed()));
        assert!(out.status.success());
    }
    metrics.push(Metric { name: "peers_wall", unit: "ms", samples, nodes: 2, goal: "<= 10 ms" });

    // 2. Cold start: `git p2p id` when no node runs, until it has answered.
    let carol = Node::new("carol");
    let mut samples = Vec::new();
    for _ in 0..cold_runs {
        carol.run(&["daemon", "stop"]);
        let t = Instant::now();
        let out = carol.run(&["id", "--json"]);
        samples.push(ms(t.elapsed()));
        assert!(out.status.success(), "{}", support::stderr(&out));
    }
    metrics.push(Metric { name: "cold_start_id", unit: "ms", samples, nodes: 1, goal: "<= 300 ms" });

    // 3. Idle RSS: a node with one peer, after it has settled.
    std::thread::sleep(Duration::from_secs(if smoke { 1 } else { 5 }));
    let samples = [&alice, &bob].iter().filter_map(|n| n.pid()).map(rss_mib).collect();
    metrics.push(Metric { name: "idle_rss", unit: "MiB", samples, nodes: 2, goal: "<= 20 MiB" });
}

fn hook_cost(metrics: &mut Vec<Metric>, smoke: bool) {
    // 4. Hook cost: `git commit` with the hook minus without, interleaved in one run, node up;
    // then with the node down (the hook spools and, with autostart off, starts nothing).
    let commits = if smoke { 5 } else { 200 };
    let dave = Node::new("dave");
    let hooked = dave.repo("hooked", 1);
    let plain = dave.repo("plain", 1);
    // The floor of any post-commit hook: git running an `sh` script that does nothing.
    let empty = dave.repo("empty", 1);
    let empty_hook = empty.join(".git/hooks/post-commit");
    std::fs::write(&empty_hook, "#!/bin/sh\nexit 0\n").expect("write hook");
    std::fs::set_permissions(&empty_hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    dave.ok_in(&hooked, &["init"]);
    // The same with the runtime dir (and so the hook's notes) on the disk, as without a login
    // session's tmpfs `$XDG_RUNTIME_DIR`.
    let walt = Node::with_runtime_on_disk("walt");
    let on_disk = walt.repo("hooked", 1);
    walt.ok_in(&on_disk, &["init"]);
    let (mut with, mut without, mut floor, mut disk) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // The node announces a commit once git has exited; that work must not land in the next
    // commit's time (whichever repo it is in): each commit starts when the node took the last
    // note and then answered a request (its event loop is done with the announcement).
    // Polled finely: a long idle gap would slow the next commit (cold caches, idle CPU states).
    let idle = |node: &Node| {
        let notes = node.path("run/git-p2p/notes");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::read_dir(&notes).is_ok_and(|mut d| d.next().is_some()) {
            assert!(Instant::now() < deadline, "the node did not take the hook's note");
            std::thread::sleep(Duration::from_micros(200));
        }
        let mut client = git_p2p::control::Client::connect(&paths(node)).expect("the node's socket");
        client.status().expect("status");
    };
    for i in 0..commits {
        without.push(time_commit(&dave, &plain, i, false));
        with.push(time_commit(&dave, &hooked, i, false));
        idle(&dave);
        floor.push(time_commit(&dave, &empty, i, false));
        disk.push(time_commit(&walt, &on_disk, i, false));
        idle(&walt);
    }
    drop(walt);
    metrics.push(Metric { name: "commit_no_hook", unit: "ms", samples: without.clone(), nodes: 1, goal: "(baseline)" });
    metrics.push(Metric {
        name: "commit_empty_sh_hook",
        unit: "ms",
        samples: floor,
        nodes: 1,
        goal: "(floor of any hook)",
    });
    metrics.push(Metric {
        name: "commit_hook",
        unit: "ms",
        samples: with.clone(),
        nodes: 1,
        goal: "+2 ms over baseline",
    });
    metrics.push(Metric {
        name: "commit_hook_runtime_on_disk",
        unit: "ms",
        samples: disk,
        nodes: 1,
        goal: "(runtime dir on ext4)",
    });
    dave.ok(&["daemon", "stop"]);
    let mut down = Vec::new();
    for i in 0..commits {
        down.push(time_commit(&dave, &hooked, commits + i, true));
    }
    metrics.push(Metric {
        name: "commit_hook_node_down",
        unit: "ms",
        samples: down,
        nodes: 1,
        goal: "+50 ms over baseline",
    });
}

fn announce_two(metrics: &mut Vec<Metric>, smoke: bool) {
    let commits = if smoke { 5 } else { 200 };
    // 5. Announce latency: from the moment `git commit` in erin's repo returns (the commit exists
    // and the hook is done) until frank's `log -f` prints the announcement; and the same from the
    // start of `git commit`.
    let erin = Node::new("erin");
    let frank = Node::new("frank");
    frank.start();
    erin.config(&["p2p.bootstrap", &frank.tcp_addr()]);
    let erin_repo = erin.repo("proj", 1);
    frank.git(&frank.path("home"), &["clone", "-q", erin_repo.to_str().expect("utf-8 path"), "proj"]);
    let frank_repo = frank.path("home/proj");
    erin.ok_in(&erin_repo, &["init"]);
    frank.ok_in(&frank_repo, &["init"]);
    support::eventually(Duration::from_secs(20), "erin and frank to connect", || {
        (!erin.peers().is_empty()).then_some(())
    });
    let mut follower = frank.command(&["log", "-f", "--json", "-n", "0"]);
    let mut child = follower.current_dir(&frank_repo).stdout(Stdio::piped()).spawn().expect("log -f");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    // Warm-up: the first announcement waits for the gossip mesh.
    time_commit(&erin, &erin_repo, 0, false);
    rx.recv_timeout(Duration::from_secs(30)).expect("warm-up announcement");
    let (mut latency, mut from_start) = (Vec::new(), Vec::new());
    let mut lost = 0;
    for i in 1..=commits {
        let t0 = Instant::now();
        let took = time_commit(&erin, &erin_repo, i, false);
        let committed = t0 + Duration::from_secs_f64(took / 1000.0);
        let id = erin.git(&erin_repo, &["rev-parse", "HEAD"]);
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok((t1, line)) if line.contains(id.trim()) => {
                latency.push(ms(t1.saturating_duration_since(committed)));
                from_start.push(ms(t1 - t0));
            }
            _ => lost += 1,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let delivered = latency.len();
    metrics.push(Metric {
        name: "announce_2_nodes",
        unit: "ms",
        samples: latency,
        nodes: 2,
        goal: "p50 <= 5, p99 <= 20 ms",
    });
    metrics.push(Metric {
        name: "announce_delivery",
        unit: "%",
        samples: vec![100.0 * delivered as f64 / (delivered + lost) as f64],
        nodes: 2,
        goal: "100 %",
    });
}

/// Runs `part` `times` times, keeping every run's metrics, then the ratio `ratio` of each run
/// together as `runs` (its p50 the median run) when there was more than one.
fn repeated(
    metrics: &mut Vec<Metric>,
    times: usize,
    ratio: &'static str,
    runs: &'static str,
    mut part: impl FnMut(&mut Vec<Metric>),
) {
    let mut ratios = Vec::new();
    for _ in 0..times {
        let from = metrics.len();
        part(metrics);
        ratios.extend(metrics[from..].iter().filter(|m| m.name == ratio).flat_map(|m| m.samples.iter().copied()));
    }
    if times > 1 {
        let (goal, nodes) = metrics.iter().find(|m| m.name == ratio).map_or(("", 0), |m| (m.goal, m.nodes));
        metrics.push(Metric { name: runs, unit: "x", samples: ratios, nodes, goal });
    }
}

fn report(metrics: &[Metric]) {
    println!("{:<32} {:>10} {:>10} {:>5} {:>5}  goal", "metric", "p50", "p99", "n", "nodes");
    for m in metrics {
        println!(
            "{:<32} {:>7.2} {:<3}{:>7.2} {:<3}{:>4} {:>5}  {}",
            m.name,
            m.percentile(0.5),
            m.unit,
            m.percentile(0.99),
            m.unit,
            m.samples.len(),
            m.nodes,
            m.goal
        );
    }
    let missing: Vec<&str> = metrics.iter().filter(|m| m.samples.is_empty()).map(|m| m.name).collect();
    if !missing.is_empty() {
        eprintln!("harness: no samples for {missing:?}");
        std::process::exit(1);
    }
    for m in metrics {
        println!(
            "{}",
            serde_json::json!({
                "name": m.name, "unit": m.unit, "p50": m.percentile(0.5), "p99": m.percentile(0.99),
                "n": m.samples.len(), "nodes": m.nodes,
            })
        );
    }
}

/// Start-up against the store's size. A node's store is filled (before the node ever ran) as a
/// busy node's would be: 10 000 received announcements, 10 000 room messages in 10 rooms, and
/// Kademlia records (at most 10 000, the node's bound) making up the rest of the size. Then
/// `git p2p daemon start` (spawn until the node says it is ready) is timed: after a clean stop
/// (the common case), and when the node does not know the file as the one it closed cleanly
/// (after a crash, or a change made outside it: the node then verifies every page first). The
/// store's size on disk is recorded beside them. `BENCH_STORE_MB` (comma separated) overrides
/// the sizes; 16 MiB is what the announcements and messages alone take.
fn start_bench(metrics: &mut Vec<Metric>, smoke: bool) {
    let sizes: Vec<u64> = std::env::var("BENCH_STORE_MB")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| if smoke { vec![0, 2] } else { vec![0, 20, 50, 100] });
    let (runs, verified_runs) = if smoke { (3, 1) } else { (20, 5) };
    let nodes: Vec<(u64, Node)> = sizes
        .iter()
        .map(|&mb| {
            let node = Node::new(&format!("store{mb}"));
            if mb > 0 {
                fill_store(&node.data_dir().join("store.redb"), mb * 1024 * 1024, if smoke { 500 } else { 10_000 });
            }
            (mb, node)
        })
        .collect();
    // The start, and the stop after it (which verifies the file before it marks it clean).
    let time_start = |node: &Node| {
        let t = Instant::now();
        node.ok(&["daemon", "start"]);
        let start = ms(t.elapsed());
        let t = Instant::now();
        node.ok(&["daemon", "stop"]);
        (start, ms(t.elapsed()))
    };
    // Sizes take turns, so that each sees the same phases of this shared machine.
    let mut clean = vec![Vec::new(); nodes.len()];
    let (mut verified, mut stops) = (clean.clone(), clean.clone());
    for _ in 0..verified_runs {
        for (i, (_, node)) in nodes.iter().enumerate() {
            // Without the mark of a clean close, the file is read through before it is used.
            let _ = std::fs::remove_file(node.data_dir().join("store.redb.clean"));
            verified[i].push(time_start(node).0);
        }
    }
    for _ in 0..runs {
        for (i, (_, node)) in nodes.iter().enumerate() {
            let (start, stop) = time_start(node);
            clean[i].push(start);
            stops[i].push(stop);
        }
    }
    for (i, (mb, node)) in nodes.iter().enumerate() {
        let label = |what: &str| -> &'static str { format!("start_{what}_{mb}MB").leak() };
        metrics.push(Metric {
            name: label("size"),
            unit: "MiB",
            samples: vec![on_disk(&node.data_dir().join("store.redb")) as f64 / 1048576.0],
            nodes: 1,
            goal: "(store.redb on disk)",
        });
        metrics.push(Metric {
            name: label("clean"),
            unit: "ms",
            samples: std::mem::take(&mut clean[i]),
            nodes: 1,
            goal: "<= 300 ms",
        });
        metrics.push(Metric {
            name: label("verify"),
            unit: "ms",
            samples: std::mem::take(&mut verified[i]),
            nodes: 1,
            goal: "(after a crash)",
        });
        metrics.push(Metric {
            name: label("stop"),
            unit: "ms",
            samples: std::mem::take(&mut stops[i]),
            nodes: 1,
            goal: "(daemon stop; verifies)",
        });
    }
}

/// The bytes a file takes on the disk (redb's file has holes while it grows).
fn on_disk(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

/// Fills the store at `path` (no node running) to about `bytes`: `count` announcements, `count`
/// room messages, then (at most `count`) Kademlia records of the size that makes up the rest.
fn fill_store(path: &Path, bytes: u64, count: u64) {
    use git_p2p::proto::announce::{Commit, FeedEntry};
    use git_p2p::proto::chat::ChatEntry;
    use git_p2p::proto::repo::RepoId;
    use git_p2p::store::{DhtRecord, Store};

    std::fs::create_dir_all(path.parent().expect("a data dir")).expect("mkdir");
    let store = Store::open(path).expect("open the store");
    let hex = |i: u64, c: char| format!("{i:08x}{}", c.to_string().repeat(32));
    let repos: Vec<RepoId> = (0..10).map(|r| RepoId::try_from(hex(r, 'a')).expect("an id")).collect();
    for i in 0..count {
        let repo = repos[(i % 10) as usize].clone();
        let commit = Commit {
            ref_name: Some("refs/heads/main".into()),
            id: hex(i, 'c'),
            parents: vec![hex(i + 1, 'c')],
            author: "Some Author".into(),
            summary: format!("commit number {i}: a summary line of a typical length"),
            time: 1_700_000_000 + i as i64,
        };
        let peer = format!("12D3KooW{}", "p".repeat(44));
        let entry = FeedEntry { repo, peer, name: Some("bob".into()), commit, announced_at: i, received_at: i };
        store.feed_insert(&entry).expect("feed");
    }
    let chat: Vec<ChatEntry> = (0..count)
        .map(|i| ChatEntry {
            room: format!("room{}", i % 10),
            id: hex(i, 'm'),
            peer: format!("12D3KooW{}", "p".repeat(44)),
            name: Some("carol".into()),
            text: format!("message {i}: about as long as a line people type in a chat room"),
            sent_at: i,
            received_at: i,
            own: false,
            via: None,
            thread: None,
        })
        .collect();
    for batch in chat.chunks(500) {
        store.chat_insert_all(batch).expect("chat");
    }
    store.sync().expect("sync");
    // The rest in Kademlia records (values as a full multi-writer record would carry).
    let used = on_disk(path);
    let records = count;
    // JSON spends about 3.6 bytes per value byte; the file grows until it has the size.
    let value_len = (bytes.saturating_sub(used) * 10 / records / 36).max(64) as usize;
    let expires = Some(git_p2p::clock::unix_now_ms() + 40 * 3600 * 1000);
    for i in 0..records {
        let value: Vec<u8> = (0..value_len).map(|k| (k as u64 * 31 + i) as u8).collect();
        let record = DhtRecord { value, publisher: None, expires };
        store.dht_put(&i.to_be_bytes(), &record).expect("dht");
        if i % 200 == 199 {
            // Pages freed by commits that are not durable are only reused after a durable one.
            store.sync().expect("sync");
            if on_disk(path) >= bytes {
                break;
            }
        }
    }
    store.sync().expect("sync");
}
