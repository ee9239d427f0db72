//! Engine throughput and memory benchmark: `cargo run --release -p shoal-sim --example
//! engine_bench -- PEERS SIM_SECONDS`. Runs the `spotify-2010` population models with the
//! synthetic [`shoal_sim::bench::TrafficCores`] load (not a Shoal policy) and prints
//! events/s, wall time and peak memory per peer.

use std::time::Duration;

use shoal_sim::bench::TrafficCores;
use shoal_sim::scenario;
use shoal_sim::sim::World;

fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let peers: u32 = args.get(1).map_or(Ok(10_000), |a| a.parse())?;
    let secs: f64 = args.get(2).map_or(Ok(600.0), |a| a.parse())?;
    let period: f64 = args.get(3).map_or(Ok(2.0), |a| a.parse())?;
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/spotify-2010.toml");
    let sets = vec![
        format!("population.peers={peers}"),
        format!("run.duration_s={secs}"),
        "population.superpeers=".to_string() + &(peers / 200).max(1).to_string(),
    ];
    let s = scenario::load(&file, &sets)?.scenario;
    let base = peak_rss_kib().unwrap_or(0);
    let nodes = u64::from(s.population.peers + s.population.superpeers + s.population.origins + 1);
    let cores = TrafficCores {
        nodes,
        period: Duration::from_secs_f64(period),
        replies: 0,
    };
    let r = World::new(&s, 1, cores).run(&mut |_, _| {});
    let peak = peak_rss_kib().unwrap_or(0);
    let sm = &r.summary;
    println!(
        "peers {peers}, {secs} s simulated: {} events in {:.2} s = {:.0} events/s; peak RSS {} MiB ({:.1} KiB/peer over the {} MiB baseline); trace {}",
        sm.events,
        sm.wall_s,
        sm.events as f64 / sm.wall_s,
        peak / 1024,
        (peak.saturating_sub(base)) as f64 / f64::from(peers),
        base / 1024,
        &sm.trace_hash[..16]
    );
    Ok(())
}
