//! LAN discovery in network namespaces: three nodes with mDNS on and no bootstrap find each
//! other. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN); without it the test fails, loudly: it is
//! part of the test suite, not an optional extra.
//!
//! Layout (like a small switch): one namespace per node with `eth0` in a private /24, and a
//! namespace holding a bridge that joins them. Nothing is added to the root namespace, so mDNS
//! multicast never leaves the lab.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

struct Lab {
    prefix: String,
    nodes: usize,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip (install iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Lab {
    fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }
    fn switch(&self) -> String {
        format!("{}sw", self.prefix)
    }

    /// A lab of `nodes` namespaces on `subnet` (`A.B.C`); `tag` (one letter) keeps the names of
    /// labs that run at the same time apart.
    fn up(tag: &str, nodes: usize, subnet: &str) -> Result<Self, String> {
        let prefix = format!("gp{tag}{}", std::process::id() % 100_000);
        let lab = Self { prefix, nodes };
        let sw = lab.switch();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &sw,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for i in 0..nodes {
            let ns = lab.ns(i);
            let port = format!("{}p{i}", lab.prefix);
            ip(&["netns", "add", &ns])?;
            // Both ends are created inside their namespaces: nothing appears in the root one.
            ip(&["link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port, "netns", &sw])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{subnet}.{}/24", i + 1), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            // Multicast (mDNS) without a default route.
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        }
        Ok(lab)
    }
}

impl Lab {
    /// Node `i` moves from address `old` to `new` (both `A.B.C.D`, in the lab's /24), as after
    /// a reboot with another DHCP lease.
    fn readdress(&self, i: usize, old: &str, new: &str) -> Result<(), String> {
        let ns = self.ns(i);
        ip(&["-n", &ns, "addr", "del", &format!("{old}/24"), "dev", "eth0"])?;
        ip(&["-n", &ns, "addr", "add", &format!("{new}/24"), "dev", "eth0"])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mut names: Vec<String> = (0..self.nodes).map(|i| self.ns(i)).collect();
        names.push(self.switch());
        for ns in &names {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse() {
                        unsafe_kill(pid, 9);
                    }
                }
            }
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

fn needs_root(e: &str) -> ! {
    panic!(
        "the LAN tests need network namespaces (run the tests as root, as CI does): {e}\n\
         They must not be skipped: they are the only ones that run mDNS."
    )
}

/// A node in the lab's namespace `i`, with mDNS on (every second) and these listen addresses.
fn lan_node(lab: &Lab, i: usize, name: &str, listen: &[&str]) -> Node {
    let mut node = Node::bare(name);
    node.wrapper = vec!["ip".into(), "netns".into(), "exec".into(), lab.ns(i)];
    node.config(&["p2p.mdns", "true"]);
    node.config(&["p2p.mdnsInterval", "1"]);
    for addr in listen {
        node.config(&["--add", "p2p.listen", addr]);
    }
    node
}

#[test]
fn three_nodes_on_a_lan_find_each_other_with_mdns_alone() {
    let subnet = format!("10.213.{}", std::process::id() % 250);
    let lab = Lab::up("t", 3, &subnet).unwrap_or_else(|e| needs_root(&e));
    let nodes: Vec<Node> = ["alice", "bob", "carol"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let ip = format!("{subnet}.{}", i + 1);
            lan_node(&lab, i, name, &[&format!("/ip4/{ip}/tcp/0"), &format!("/ip4/{ip}/udp/0/quic-v1")])
        })
        .collect();
    let ids: Vec<String> = nodes
        .iter()
        .map(|n| {
            let id = n.start();
            let status = n.status();
            assert_eq!(status["config"]["mdns"], true);
            assert!(status["config"]["bootstrap"].as_array().unwrap().is_empty(), "no bootstrap: mDNS alone");
            id["peer_id"].as_str().unwrap().to_string()
        })
        .collect();
    for (i, node) in nodes.iter().enumerate() {
        let others: BTreeSet<String> =
            ids.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, id)| id.clone()).collect();
        eventually(Duration::from_secs(30), &format!("{} to find the others on the LAN", node.name), || {
            let seen: BTreeSet<String> =
                node.peers().iter().filter_map(|p| p["peer_id"].as_str().map(str::to_string)).collect();
            others.is_subset(&seen).then_some(())
        });
        for peer in node.peers() {
            let addr = peer["addresses"][0].as_str().unwrap_or("");
            assert!(addr.contains(&subnet), "{}: connected over the lab LAN: {peer}", node.name);
        }
    }
    drop(nodes);
    drop(lab);
}

/// Two LAN nodes (mDNS on, no bootstrap) that met are killed and restarted together after both
/// got new addresses: the addresses each saved of the other are stale, and dials to them hang
/// until they time out (nobody answers ARP). The fresh addresses mDNS finds are dialled at once
/// all the same, and the two meet again within 5 s.
#[test]
fn two_lan_nodes_restarted_together_on_new_addresses_meet_again_within_five_seconds() {
    let subnet = format!("10.214.{}", std::process::id() % 250);
    let lab = Lab::up("m", 2, &subnet).unwrap_or_else(|e| needs_root(&e));
    let nodes: Vec<Node> = ["alice", "bob"]
        .iter()
        .enumerate()
        // All interfaces: the node keeps its ports whatever its address.
        .map(|(i, name)| lan_node(&lab, i, name, &["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"]))
        .collect();
    let ids: Vec<String> = nodes.iter().map(|n| n.start()["peer_id"].as_str().unwrap().to_string()).collect();
    let meet = |deadline: Instant, what: &str| {
        for (node, other) in [(&nodes[0], &ids[1]), (&nodes[1], &ids[0])] {
            let left = deadline.saturating_duration_since(Instant::now());
            eventually(left, &format!("{}: {what}", node.name), || {
                let peers = node.peers();
                let peer = peers.iter().find(|p| p["peer_id"] == other.as_str())?;
                Some(
                    peer["addresses"]
                        .as_array()?
                        .iter()
                        .filter_map(|a| a.as_str()?.parse().ok())
                        .collect::<Vec<String>>(),
                )
            });
        }
    };
    meet(Instant::now() + Duration::from_secs(30), "the first meeting");
    for node in &nodes {
        node.kill9();
    }
    for i in 0..2 {
        lab.readdress(i, &format!("{subnet}.{}", i + 1), &format!("{subnet}.{}", i + 101))
            .unwrap_or_else(|e| panic!("cannot move node {i}: {e}"));
    }
    let restarted = Instant::now();
    std::thread::scope(|s| {
        for node in &nodes {
            s.spawn(move || node.start());
        }
    });
    meet(restarted + Duration::from_secs(5), "to meet again within 5 s of the restart");
    for node in &nodes {
        for peer in node.peers() {
            let addr = peer["addresses"][0].as_str().unwrap_or("");
            assert!(addr.contains(&format!("{subnet}.10")), "{}: connected at a new address: {peer}", node.name);
        }
    }
    drop(nodes);
    drop(lab);
}

impl Lab {
    /// Moves the nodes `half` to a bridge of their own: the two halves no longer hear each other
    /// (packets are dropped, as by a broken link: connections die of silence).
    fn partition(&self, half: &[usize]) -> Result<(), String> {
        let sw = self.switch();
        if ip(&["-n", &sw, "link", "show", "br1"]).is_err() {
            ip(&["-n", &sw, "link", "add", "br1", "type", "bridge", "stp_state", "0", "forward_delay", "0"])?;
            ip(&["-n", &sw, "link", "set", "br1", "up"])?;
        }
        for i in half {
            ip(&["-n", &sw, "link", "set", &format!("{}p{i}", self.prefix), "master", "br1"])?;
        }
        Ok(())
    }

    /// Joins every node to the one bridge again.
    fn heal(&self) -> Result<(), String> {
        let sw = self.switch();
        for i in 0..self.nodes {
            ip(&["-n", &sw, "link", "set", &format!("{}p{i}", self.prefix), "master", "br0"])?;
        }
        Ok(())
    }
}

/// Four LAN nodes share a repository; the LAN splits in two halves that chat and commit apart
/// (each half hears only itself: what it says never reaches the other by gossip); once it heals,
/// every node has the same messages and announcements, caught up by sync.
#[test]
fn two_halves_of_a_partitioned_lan_converge_once_it_heals() {
    let subnet = format!("10.215.{}", std::process::id() % 250);
    let lab = Lab::up("p", 4, &subnet).unwrap_or_else(|e| needs_root(&e));
    let names = ["alice", "bob", "carol", "dave"];
    let nodes: Vec<Node> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let ip = format!("{subnet}.{}", i + 1);
            lan_node(&lab, i, name, &[&format!("/ip4/{ip}/tcp/0")])
        })
        .collect();
    let origin = nodes[0].repo("proj", 1);
    let repos: Vec<std::path::PathBuf> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            if i == 0 {
                return origin.clone();
            }
            node.git(&node.path("home"), &["clone", "-q", origin.to_str().expect("utf-8 path"), "proj"]);
            node.path("home/proj")
        })
        .collect();
    let ids: Vec<String> = nodes.iter().map(|n| n.start()["peer_id"].as_str().unwrap().to_string()).collect();
    for (node, repo) in nodes.iter().zip(&repos) {
        node.ok_in(repo, &["init"]);
    }
    let sees = |i: usize, others: &[usize]| {
        let peers = nodes[i].peers();
        others.iter().all(|j| {
            peers
                .iter()
                .any(|p| p["peer_id"] == ids[*j].as_str() && p["repos"].as_array().is_some_and(|r| !r.is_empty()))
        })
    };
    for (i, name) in names.iter().enumerate() {
        let others: Vec<usize> = (0..4).filter(|j| *j != i).collect();
        eventually(Duration::from_secs(60), &format!("{name} to share the repository with all"), || {
            sees(i, &others).then_some(())
        });
    }

    let halves = [[0, 1], [2, 3]];
    lab.partition(&halves[1]).unwrap_or_else(|e| panic!("cannot partition the LAN: {e}"));
    // Each half loses the other (pings fail on the silent connections).
    for (i, node) in nodes.iter().enumerate() {
        let away: Vec<&String> =
            ids.iter().enumerate().filter(|(j, _)| (*j < 2) != (i < 2)).map(|(_, id)| id).collect();
        let (start, mut told) = (std::time::Instant::now(), false);
        eventually(Duration::from_secs(90), &format!("{} to lose the other half", names[i]), || {
            let peers = node.peers();
            let lost = !peers.iter().any(|p| away.iter().any(|id| p["peer_id"] == id.as_str()));
            if !lost && !told && start.elapsed() > Duration::from_secs(80) {
                // Once, before the timeout: what the node still holds, and its log's last lines.
                told = true;
                eprintln!("{} still sees {peers:?}\nits log ends:\n{}", names[i], node.log_tail(60));
            }
            lost.then_some(())
        });
    }
    let mut said = Vec::new();
    let mut commits = Vec::new();
    // The halves take turns, so that what each side has in time order interleaves with what
    // the other sends it on the heal.
    for n in 0..5 {
        for half in halves {
            let text = format!("{} says {n} while apart", names[half[0]]);
            nodes[half[0]].ok_in(&repos[half[0]], &["chat", "--send", &text]);
            said.push(text);
        }
    }
    for half in halves {
        for n in 0..3 {
            let committer = half[1];
            commits.push(
                nodes[committer].commit(&repos[committer], &format!("{} commit {n} while apart", names[committer])),
            );
        }
    }
    let texts = |i: usize| -> BTreeSet<String> {
        nodes[i]
            .ok_in(&repos[i], &["chat", "--tail", "--json"])
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["text"].as_str().map(str::to_string))
            .collect()
    };
    let announced = |i: usize| -> BTreeSet<String> {
        nodes[i].feed(&repos[i]).iter().filter_map(|e| e["commit"].as_str().map(str::to_string)).collect()
    };
    // Apart: each half has only its own.
    for i in 0..4 {
        let own = |s: &String| (s.starts_with(names[0]) || s.starts_with(names[1])) == (i < 2);
        eventually(Duration::from_secs(30), &format!("{} to have its half's messages", names[i]), || {
            let t = texts(i);
            (said.iter().filter(|s| own(s)).all(|s| t.contains(s)) && !said.iter().any(|s| !own(s) && t.contains(s)))
                .then_some(())
        });
    }

    lab.heal().unwrap_or_else(|e| panic!("cannot heal the LAN: {e}"));
    let all_said: BTreeSet<String> = said.iter().cloned().collect();
    let all_commits: BTreeSet<String> = commits.iter().cloned().collect();
    for (i, name) in names.iter().enumerate() {
        // A node's feed shows what peers announced, not its own commits (bob made the first three,
        // dave the others).
        let own: &[String] = match i {
            1 => &commits[..3],
            3 => &commits[3..],
            _ => &[],
        };
        let expected: BTreeSet<String> = all_commits.iter().filter(|c| !own.contains(c)).cloned().collect();
        eventually(Duration::from_secs(150), &format!("{name} to converge after the heal"), || {
            (all_said.is_subset(&texts(i)) && expected.is_subset(&announced(i))).then_some(())
        });
    }
    for node in &nodes {
        let sync = node.status()["sync"].clone();
        assert!(sync["items"].as_u64() > Some(0), "{}: caught up by sync: {sync}", node.name);
    }
    // Every side shows the same room, in the order it was said (not in the order it arrived),
    // and its feed newest first.
    let room = |i: usize| -> Vec<(u64, String)> {
        nodes[i]
            .ok_in(&repos[i], &["chat", "--tail", "--json"])
            .lines()
            .filter_map(|l| {
                let m: serde_json::Value = serde_json::from_str(l).ok()?;
                Some((m["sent_at"].as_u64()?, m["text"].as_str()?.to_string()))
            })
            .collect()
    };
    let shown = room(0);
    assert_eq!(shown.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>(), said, "in the order it was said");
    assert!(shown.windows(2).all(|w| w[0].0 <= w[1].0), "in time order: {shown:?}");
    for (i, name) in names.iter().enumerate().skip(1) {
        assert_eq!(room(i), shown, "{name} shows the room as alice does");
    }
    for i in 0..4 {
        let times: Vec<u64> = nodes[i].feed(&repos[i]).iter().filter_map(|e| e["announced_at"].as_u64()).collect();
        assert!(times.windows(2).all(|w| w[0] >= w[1]), "{}: feed newest first: {times:?}", names[i]);
    }
    drop(nodes);
    drop(lab);
}
