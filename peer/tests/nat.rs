//! Streaming through real NATs. Hosts are network namespaces joined by veth pairs: a public
//! network (bridge) holding the tracker and the super-peers, and NAT boxes (iptables
//! MASQUERADE, conntrack) each hiding a private host. `MASQUERADE --random-fully` makes a
//! symmetric NAT, where hole punching must fail and the relay carries the stream.
//!
//! Needs root and `ip`/`iptables` (installed by scripts/install-deps.sh); skipped otherwise,
//! except in CI (`SHOAL_REQUIRE_SERVICES=1`), where skipping fails. Every test builds its own
//! namespaces (unique names) and removes them when it ends, also when it fails.
#![cfg(feature = "net")]
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shoal_protocol::TrackId;

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} missing: build the workspace (cargo build --workspace) first",
        bin.display()
    );
    bin
}

/// True when this test can build namespaces; false (skip) on a laptop without root.
fn can_run() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let tools = ["ip", "iptables"].iter().all(|t| {
        Command::new(t)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    if root && tools {
        return true;
    }
    assert!(
        std::env::var("SHOAL_REQUIRE_SERVICES").is_err(),
        "SHOAL_REQUIRE_SERVICES is set but the NAT tests cannot run (need root, ip, iptables)"
    );
    eprintln!("skipped: needs root, ip and iptables");
    false
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn in_ns(ns: &str, args: &[&str]) {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    sh(&all);
}

/// The kind of NAT in front of a private host.
#[derive(Clone, Copy, PartialEq)]
enum Nat {
    /// MASQUERADE keeping ports: hole punching works.
    Cone,
    /// MASQUERADE --random-fully: a new port per destination, hole punching fails.
    Symmetric,
}

/// The namespaces of one test; removed on drop.
struct Topology {
    prefix: String,
    namespaces: Vec<String>,
}

const PUBLIC_IP: &str = "10.77.0.1";

impl Topology {
    /// A public network and one private host behind each NAT of `nats` (hosts 1, 2, ...).
    fn new(nats: &[Nat]) -> Self {
        // Unique per test process: several tests run at once.
        let prefix = format!("sh{}", std::process::id() % 100_000);
        let mut t = Self {
            prefix: prefix.clone(),
            namespaces: Vec::new(),
        };
        let public = t.ns("pub");
        in_ns(&public, &["ip", "link", "set", "lo", "up"]);
        in_ns(&public, &["ip", "link", "add", "br0", "type", "bridge"]);
        in_ns(
            &public,
            &["ip", "addr", "add", "10.77.0.1/24", "dev", "br0"],
        );
        in_ns(&public, &["ip", "link", "set", "br0", "up"]);
        // Extra public addresses for more public hosts (a second super-peer).
        in_ns(
            &public,
            &["ip", "addr", "add", "10.77.0.2/24", "dev", "br0"],
        );
        for (i, kind) in nats.iter().enumerate() {
            let i = i + 1;
            let nat = t.ns(&format!("nat{i}"));
            let host = t.ns(&format!("prv{i}"));
            let (wan_out, lan_out) = (format!("{prefix}w{i}"), format!("{prefix}l{i}"));
            sh(&[
                "ip", "link", "add", &wan_out, "netns", &public, "type", "veth", "peer", "name",
                "wan", "netns", &nat,
            ]);
            sh(&[
                "ip", "link", "add", &lan_out, "netns", &host, "type", "veth", "peer", "name",
                "lan", "netns", &nat,
            ]);
            in_ns(&public, &["ip", "link", "set", &wan_out, "master", "br0"]);
            in_ns(&public, &["ip", "link", "set", &wan_out, "up"]);
            let wan_ip = format!("10.77.0.{}/24", 10 + i);
            let lan_ip = format!("192.168.{i}.1/24");
            let host_ip = format!("192.168.{i}.2/24");
            let gw = format!("192.168.{i}.1");
            for (ns, dev, ip) in [
                (&nat, "wan", &wan_ip),
                (&nat, "lan", &lan_ip),
                (&host, lan_out.as_str(), &host_ip),
            ] {
                in_ns(ns, &["ip", "addr", "add", ip, "dev", dev]);
                in_ns(ns, &["ip", "link", "set", dev, "up"]);
            }
            in_ns(&nat, &["ip", "link", "set", "lo", "up"]);
            in_ns(&host, &["ip", "link", "set", "lo", "up"]);
            in_ns(&host, &["ip", "route", "add", "default", "via", &gw]);
            in_ns(&nat, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
            let mut masq = vec![
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "wan",
                "-j",
                "MASQUERADE",
            ];
            if *kind == Nat::Symmetric {
                masq.push("--random-fully");
            }
            in_ns(&nat, &masq);
            in_ns(&nat, &["iptables", "-P", "FORWARD", "DROP"]);
            in_ns(
                &nat,
                &[
                    "iptables", "-A", "FORWARD", "-i", "lan", "-o", "wan", "-j", "ACCEPT",
                ],
            );
            in_ns(
                &nat,
                &[
                    "iptables",
                    "-A",
                    "FORWARD",
                    "-i",
                    "wan",
                    "-o",
                    "lan",
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "ESTABLISHED,RELATED",
                    "-j",
                    "ACCEPT",
                ],
            );
            // Without this, the first unsolicited packet makes MASQUERADE pick another port and
            // hole punching fails for reasons that have nothing to do with Shoal.
            in_ns(
                &nat,
                &[
                    "iptables",
                    "-A",
                    "INPUT",
                    "-i",
                    "wan",
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "NEW",
                    "-j",
                    "DROP",
                ],
            );
        }
        t
    }

    fn ns(&mut self, name: &str) -> String {
        let full = format!("{}{name}", self.prefix);
        let _ = Command::new("ip").args(["netns", "del", &full]).output();
        sh(&["ip", "netns", "add", &full]);
        self.namespaces.push(full.clone());
        full
    }

    fn public(&self) -> String {
        format!("{}pub", self.prefix)
    }

    fn host(&self, i: usize) -> String {
        format!("{}prv{i}", self.prefix)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A child process, killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn spawn(ns: &str, program: &Path, args: &[String]) -> Self {
        Self(
            Command::new("ip")
                .args(["netns", "exec", ns])
                .arg(program)
                .args(args)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }

    fn wait_line(&mut self, prefix: &str) -> String {
        let out = self.0.stdout.as_mut().unwrap();
        let mut reader = BufReader::new(out);
        loop {
            let mut line = String::new();
            assert!(
                reader.read_line(&mut line).unwrap() > 0,
                "process ended before printing {prefix:?}"
            );
            if line.starts_with(prefix) {
                return line.trim().to_owned();
            }
        }
    }
}

fn s(v: &str) -> String {
    v.to_owned()
}

/// Tracker, super-peers and music in the public namespace.
struct Network {
    topo: Topology,
    dir: tempfile::TempDir,
    data: PathBuf,
    track: TrackId,
    reference: Vec<u8>,
    tracker_url: String,
    superpeers: Vec<Proc>,
    superpeer_addrs: Vec<String>,
    _tracker: Proc,
}

impl Network {
    fn new(nats: &[Nat], music: &str, excerpt: Option<(u32, u32)>, superpeers: usize) -> Self {
        let topo = Topology::new(nats);
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let src = match excerpt {
            Some((from, len)) => {
                let src = dir.path().join("excerpt.flac");
                sh(&[
                    "sox",
                    music,
                    src.to_str().unwrap(),
                    "trim",
                    &from.to_string(),
                    &len.to_string(),
                ]);
                src
            }
            None => PathBuf::from(music),
        };
        let out = Command::new(bin("shoal-tracker"))
            .arg("import")
            .arg("--data")
            .arg(&data)
            .arg(&src)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let track: TrackId = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let reference = dir.path().join("reference.wav");
        sh(&[
            bin("shoal-peer").to_str().unwrap(),
            "play",
            "--data",
            data.to_str().unwrap(),
            &track.to_string(),
            "--output",
            reference.to_str().unwrap(),
        ]);
        let public = topo.public();
        let mut tracker = Proc::spawn(
            &public,
            &bin("shoal-tracker"),
            &[
                s("serve"),
                s("--data"),
                data.to_str().unwrap().to_owned(),
                s("--http"),
                format!("{PUBLIC_IP}:7700"),
                s("--listen"),
                format!("/ip4/{PUBLIC_IP}/udp/7701/quic-v1"),
            ],
        );
        let tracker_url = tracker
            .wait_line("listening on ")
            .trim_start_matches("listening on ")
            .to_owned();
        let (mut sps, mut sp_addrs) = (Vec::new(), Vec::new());
        for i in 0..superpeers {
            let ip = format!("10.77.0.{}", 1 + i);
            let mut sp = Proc::spawn(
                &public,
                &bin("shoal-superpeer"),
                &[
                    s("serve"),
                    s("--data"),
                    dir.path()
                        .join(format!("sp{i}"))
                        .to_str()
                        .unwrap()
                        .to_owned(),
                    s("--listen"),
                    format!("/ip4/{ip}/udp/7702/quic-v1"),
                    s("--http"),
                    format!("{ip}:7703"),
                    s("--tracker"),
                    tracker_url.clone(),
                ],
            );
            sp.wait_line("listening on ");
            let addr = sp.wait_line("p2p ").trim_start_matches("p2p ").to_owned();
            sps.push(sp);
            sp_addrs.push(addr);
        }
        Self {
            reference: std::fs::read(&reference).unwrap(),
            topo,
            dir,
            data,
            track,
            tracker_url,
            superpeers: sps,
            superpeer_addrs: sp_addrs,
            _tracker: tracker,
        }
    }

    fn net_args(&self, cache: &Path) -> Vec<String> {
        let mut a = vec![
            s("--tracker"),
            self.tracker_url.clone(),
            s("--cache"),
            cache.to_str().unwrap().to_owned(),
            s("--listen"),
            s("/ip4/0.0.0.0/udp/0/quic-v1"),
        ];
        for addr in &self.superpeer_addrs {
            a.push(s("--superpeer"));
            a.push(addr.clone());
        }
        a
    }

    /// A seeder on private host `host`, announced (through its super-peer).
    fn seeder(&self, host: usize) -> Proc {
        let cache = self.dir.path().join(format!("seed{host}"));
        sh(&[
            bin("shoal-peer").to_str().unwrap(),
            "cache",
            "--cache",
            cache.to_str().unwrap(),
            "add",
            "--data",
            self.data.to_str().unwrap(),
        ]);
        let mut args = vec![s("serve")];
        args.extend(self.net_args(&cache));
        let mut p = Proc::spawn(&self.topo.host(host), &bin("shoal-peer"), &args);
        // Listeners look holders up through their super-peer: wait until it has indexed ours.
        p.wait_line("indexed by super-peer ");
        p
    }

    /// Plays the track on private host `host`; returns the JSON report after checking the WAV.
    fn listen(&self, host: usize, during: impl FnOnce()) -> serde_json::Value {
        let cache = self.dir.path().join(format!("listen{host}"));
        let wav = self.dir.path().join(format!("listen{host}.wav"));
        let mut args = vec![
            s("play"),
            s("--json"),
            s("--output"),
            wav.to_str().unwrap().to_owned(),
        ];
        args.extend(self.net_args(&cache));
        args.push(self.track.to_string());
        let child = Command::new("ip")
            .args(["netns", "exec", &self.topo.host(host)])
            .arg(bin("shoal-peer"))
            .args(&args)
            .env(
                "RUST_LOG",
                std::env::var("SHOAL_NAT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        during();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "listener failed: {stderr}");
        let report: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
        let got = std::fs::read(&wav).unwrap();
        assert_eq!(
            got.len(),
            self.reference.len(),
            "WAV length: {report}\n{stderr}"
        );
        assert!(got == self.reference, "WAV differs from the local decode");
        eprintln!("{report}\n{stderr}");
        report
    }
}

const MUSIC: &str = "/usr/share/games/singularity/music/Awakening.ogg";
/// 5 min 27 s: longer than libp2p's default 2-minute circuit limit.
const LONG_MUSIC: &str = "/usr/share/games/singularity/music/A New Journey.ogg";

fn n(report: &serde_json::Value, key: &str) -> u64 {
    report[key].as_u64().unwrap_or(0)
}

fn total(report: &serde_json::Value) -> u64 {
    ["cache", "peers", "superpeers", "origin"]
        .iter()
        .map(|k| n(&report["bytes_by_source"], k))
        .sum()
}

#[test]
fn cone_nats_stream_through_the_superpeer_then_directly() {
    if !can_run() {
        return;
    }
    // Two minutes of music: the first 30 s are asked for at once, over the relay, before the
    // hole punch completes; the rest must come directly.
    let net = Network::new(&[Nat::Cone, Nat::Cone], MUSIC, Some((30, 120)), 1);
    let _seeder = net.seeder(1);
    let report = net.listen(2, || {});
    let peers = n(&report["bytes_by_source"], "peers");
    assert!(
        peers > 0,
        "nothing came from the peer behind the other NAT: {report}"
    );
    assert!(
        n(&report, "direct_bytes") > n(&report, "relayed_bytes"),
        "the connection should have been upgraded to direct (DCUtR): {report}"
    );
    assert!(
        peers * 10 >= total(&report) * 8,
        "≥ 80% from the peer: {report}"
    );
}

#[test]
fn symmetric_nat_keeps_the_relay_for_a_whole_long_track() {
    if !can_run() {
        return;
    }
    let net = Network::new(&[Nat::Cone, Nat::Symmetric], LONG_MUSIC, None, 1);
    let _seeder = net.seeder(1);
    let report = net.listen(2, || {});
    assert!(
        n(&report, "relayed_bytes") > 1 << 20,
        "the relay must carry the stream: {report}"
    );
    assert_eq!(
        n(&report, "direct_bytes"),
        0,
        "no hole punch through a symmetric NAT: {report}"
    );
    let peers = n(&report["bytes_by_source"], "peers");
    let total: u64 = ["cache", "peers", "superpeers", "origin"]
        .iter()
        .map(|k| n(&report["bytes_by_source"], k))
        .sum();
    assert!(
        peers * 10 >= total * 8,
        "≥ 80% from the peer through the relay: {report}"
    );
}

#[test]
fn killing_the_superpeers_mid_stream_still_gives_a_complete_wav() {
    if !can_run() {
        return;
    }
    // A minute of music: with 30 s fetched ahead, the last half is still to come when the
    // super-peers die.
    let mut net = Network::new(&[Nat::Symmetric, Nat::Symmetric], MUSIC, Some((30, 60)), 2);
    let _seeder = net.seeder(1);
    let mut superpeers = std::mem::take(&mut net.superpeers);
    let report = net.listen(2, || {
        // One super-peer dies (the leaves move to the other), then the other: the seeder
        // behind its symmetric NAT is unreachable and the rest comes from the origin.
        std::thread::sleep(Duration::from_secs(6));
        drop(superpeers.remove(0));
        std::thread::sleep(Duration::from_secs(6));
        superpeers.clear();
    });
    assert!(n(&report["bytes_by_source"], "origin") > 0, "{report}");
}
