//! The NAT lab: an "internet" in network namespaces with one public host and two home sites,
//! each a host behind its own NAT router. Needs root, `ip`, `nft` (nftables) and python3 (the
//! WAN delay, through iptables' NFQUEUE); without them a test fails loudly: NAT traversal is part of the suite.
//!
//! ```text
//!   pub 198.51.100.10 ─┐                       (198.51.100.0/24: a documentation range that
//!   r0  198.51.100.100 ┼─ internet (bridge)      exists only inside the lab)
//!   r1  198.51.100.101 ┘
//!   r0 ── LAN 10.78.0.0/24 ── h0 10.78.0.10      r1 ── LAN 10.78.1.0/24 ── h1 10.78.1.10
//! ```
//!
//! Routers masquerade: a cone NAT keeps the source port (`masquerade persistent`), so a hole
//! punch works; a symmetric one picks a random port per destination, so it does not. Each
//! router lets in only replies to what went out. WAN latency (every packet entering a router
//! from the internet is held, before connection tracking) comes from `tests/nat/wan_delay.py`
//! through NFQUEUE (no netem on this kernel): hole punching needs it, as real links have it;
//! with none, one side's first packet reaches the other router before that side sent its own,
//! and conntrack moves the second mapping to another port.
//!
//! Names carry the test's tag and the process id, so labs of tests running at once never meet;
//! addresses repeat from lab to lab (namespaces keep them apart). Nothing touches the root
//! namespace.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

use crate::support::*;

pub const PUBLIC_IP: &str = "198.51.100.10";
pub const SITES: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatKind {
    Cone,
    Symmetric,
}

pub struct NatLab {
    prefix: String,
    created: Vec<String>,
    delays: Vec<Child>,
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run(Command::new("ip").args(args))
}

/// Fails the test, loudly, when the lab cannot be built.
pub fn needs_root(e: &str) -> ! {
    panic!(
        "the NAT lab needs root, network namespaces, nftables (nft), iptables, conntrack and python3 (run the tests as \
         root, as CI does, after .ci/run installed them): {e}\nNAT tests must not be skipped."
    )
}

impl NatLab {
    pub fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn add_ns(&mut self, name: &str) -> Result<String, String> {
        let ns = self.ns(name);
        ip(&["netns", "add", &ns])?;
        self.created.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A veth from `ns` (named `dev` there) to the bridge `bridge` in `switch`.
    fn plug(&self, ns: &str, dev: &str, switch: &str, bridge: &str, port: &str) -> Result<(), String> {
        ip(&["link", "add", dev, "netns", ns, "type", "veth", "peer", "name", port, "netns", switch])?;
        ip(&["-n", switch, "link", "set", port, "master", bridge, "up"])?;
        ip(&["-n", ns, "link", "set", dev, "up"])
    }

    fn bridge(ns: &str, name: &str) -> Result<(), String> {
        ip(&["-n", ns, "link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0"])?;
        ip(&["-n", ns, "link", "set", name, "up"])
    }

    /// The lab with both sites behind cone NATs and no WAN delay yet. `tag`: a letter or two,
    /// unique per test.
    pub fn up(tag: &str) -> Result<Self, String> {
        for tool in ["nft", "iptables", "conntrack", "python3"] {
            if Command::new(tool).arg("--version").output().is_err() {
                return Err(format!("{tool} not found"));
            }
        }
        let mut lab =
            Self { prefix: format!("gn{tag}{}", std::process::id() % 100_000), created: vec![], delays: vec![] };
        let inet = lab.add_ns("i")?;
        Self::bridge(&inet, "sw")?;
        let public = lab.add_ns("p")?;
        lab.plug(&public, "eth0", &inet, "sw", "pubport")?;
        ip(&["-n", &public, "addr", "add", &format!("{PUBLIC_IP}/24"), "dev", "eth0"])?;
        for s in 0..SITES {
            let router = lab.add_ns(&format!("r{s}"))?;
            lab.plug(&router, "wan0", &inet, "sw", &format!("rport{s}"))?;
            ip(&["-n", &router, "addr", "add", &format!("198.51.100.{}/24", 100 + s), "dev", "wan0"])?;
            Self::bridge(&router, "lan0")?;
            ip(&["-n", &router, "addr", "add", &format!("10.78.{s}.1/24"), "dev", "lan0"])?;
            run(Command::new("ip").args(["netns", "exec", &router, "sysctl", "-qw", "net.ipv4.ip_forward=1"]))?;
            let host = lab.add_ns(&format!("h{s}"))?;
            lab.plug(&host, "eth0", &router, "lan0", "hostport")?;
            ip(&["-n", &host, "addr", "add", &format!("10.78.{s}.10/24"), "dev", "eth0"])?;
            ip(&["-n", &host, "route", "add", "default", "via", &format!("10.78.{s}.1")])?;
            lab.nat(s, NatKind::Cone)?;
        }
        Ok(lab)
    }

    /// Site `s`'s NAT: cone or symmetric.
    pub fn nat(&self, s: usize, kind: NatKind) -> Result<(), String> {
        let masquerade = match kind {
            NatKind::Cone => "masquerade persistent",
            NatKind::Symmetric => "masquerade random,fully-random",
        };
        let rules = format!(
            "table ip nat\nflush table ip nat\ntable ip filter\nflush table ip filter\n\
             table ip nat {{\n chain masq_wan {{\n type nat hook postrouting priority srcnat; policy accept;\n \
               oifname \"wan0\" {masquerade}\n }}\n}}\n\
             table ip filter {{\n chain forward_lan {{\n type filter hook forward priority filter; policy drop;\n \
               iifname \"lan0\" accept\n ct state established,related accept\n }}\n}}\n"
        );
        self.nft(&format!("r{s}"), &rules)?;
        // Mappings made under the old type would outlive it (UDP flows for 30 s, TCP for days).
        let flushed =
            Command::new("ip").args(["netns", "exec", &self.ns(&format!("r{s}")), "conntrack", "-F"]).output();
        match flushed {
            Ok(out) if out.status.success() || String::from_utf8_lossy(&out.stderr).contains("0 flow entries") => {
                Ok(())
            }
            Ok(out) => Err(format!("conntrack -F: {}", String::from_utf8_lossy(&out.stderr).trim())),
            Err(e) => Err(format!("cannot run conntrack (apt-get install conntrack): {e}")),
        }
    }

    fn nft(&self, name: &str, rules: &str) -> Result<(), String> {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns(name), "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run nft: {e}"))?;
        child.stdin.take().expect("piped").write_all(rules.as_bytes()).map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("nft in {name}: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    /// `ms` of latency on every router's WAN ingress (site to public host: `ms` round trip; site
    /// to site: twice that).
    pub fn delay(&mut self, ms: u32) -> Result<(), String> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/nat/wan_delay.py");
        for s in 0..SITES {
            let router = format!("r{s}");
            // The raw table: before connection tracking, as on a real link. (iptables' NFQUEUE
            // target: nftables' own `queue` needs a kernel module this kernel lacks.)
            run(Command::new("ip").args(["netns", "exec", &self.ns(&router), "iptables", "-t", "raw", "-I"]).args([
                "PREROUTING",
                "-i",
                "wan0",
                "-j",
                "NFQUEUE",
                "--queue-num",
                "0",
                "--queue-bypass",
            ]))?;
            let mut child = Command::new("ip")
                .args(["netns", "exec", &self.ns(&router), "python3", script, &ms.to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot start the WAN delay: {e}"))?;
            let mut line = String::new();
            let stdout = child.stdout.take().expect("piped");
            std::io::BufReader::new(stdout).read_line(&mut line).map_err(|e| e.to_string())?;
            if line.trim() != "ready" {
                let _ = child.kill();
                let out = child.wait_with_output().map_err(|e| e.to_string())?;
                return Err(format!("the WAN delay did not start: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
            self.delays.push(child);
        }
        Ok(())
    }

    /// A node in host `name` ("p", "h0", "h1"): mDNS off, listening on its own address.
    pub fn node(&self, name: &str, who: &str) -> Node {
        let addr = match name {
            "p" => PUBLIC_IP.to_string(),
            h => format!("10.78.{}.10", &h[1..]),
        };
        let mut node = Node::bare(who);
        node.wrapper = vec!["ip".into(), "netns".into(), "exec".into(), self.ns(name)];
        node.config(&["p2p.mdns", "false"]);
        node.config(&["--add", "p2p.listen", &format!("/ip4/{addr}/tcp/0")]);
        node.config(&["--add", "p2p.listen", &format!("/ip4/{addr}/udp/0/quic-v1")]);
        node
    }
}

impl Drop for NatLab {
    fn drop(&mut self) {
        for child in &mut self.delays {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.created.iter().rev() {
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
