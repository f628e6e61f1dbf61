//! The benchmark harness: real daemons on loopback (mDNS off) driven through the real CLI.
//! Prints a table and one JSON line per metric. Run: `cargo bench --bench harness` (full) or
//! `cargo bench --bench harness -- --smoke` (tiny sizes; CI runs it so the harness never rots).

#[path = "../tests/it/support.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use support::Node;

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

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let runs = if smoke { 5 } else { 200 };
    let cold_runs = if smoke { 3 } else { 20 };
    let mut metrics = Vec::new();

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

    println!("{:<16} {:>10} {:>10} {:>5} {:>5}  goal", "metric", "p50", "p99", "n", "nodes");
    for m in &metrics {
        println!(
            "{:<16} {:>7.2} {:<3}{:>7.2} {:<3}{:>4} {:>5}  {}",
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
    for m in &metrics {
        println!(
            "{}",
            serde_json::json!({
                "name": m.name, "unit": m.unit, "p50": m.percentile(0.5), "p99": m.percentile(0.99),
                "n": m.samples.len(), "nodes": m.nodes,
            })
        );
    }
}
