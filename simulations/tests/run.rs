//! End-to-end checks of `shoal-sim`: determinism by trace hash, the `small` scenario's sanity
//! and speed, every shipped scenario loads, and bad input leaves no output directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal_sim::bench::TrafficCores;
use shoal_sim::cores::NoCores;
use shoal_sim::output;
use shoal_sim::scenario;
use shoal_sim::shoal::ShoalCores;
use shoal_sim::sim::World;

fn scenario_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(format!("{name}.toml"))
}

fn small() -> scenario::Scenario {
    scenario::load(&scenario_path("small"), &[])
        .expect("small loads")
        .scenario
}

#[test]
fn every_shipped_scenario_loads() {
    for name in [
        "small",
        "spotify-2010",
        "flash-crowd",
        "nat-heavy",
        "superpeer-crash",
    ] {
        let l = scenario::load(&scenario_path(name), &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.scenario.run.name, name);
    }
}

#[test]
fn same_seed_same_trace_hash_workload_only() {
    let s = small();
    let a = World::new(&s, 5, NoCores).run(&mut |_, _| {});
    let b = World::new(&s, 5, NoCores).run(&mut |_, _| {});
    let c = World::new(&s, 6, NoCores).run(&mut |_, _| {});
    assert_eq!(a.summary.trace_hash, b.summary.trace_hash);
    assert_ne!(a.summary.trace_hash, c.summary.trace_hash);
    // Everything but wall_s is identical.
    let strip = |r: &shoal_sim::sim::RunOutput| {
        let mut s = r.summary.clone();
        s.wall_s = 0.0;
        serde_json::to_string(&s).expect("serialises")
    };
    assert_eq!(strip(&a), strip(&b));
}

#[test]
fn same_seed_same_trace_hash_with_traffic_through_links() {
    // Messages, timers, NAT relays, churn and a super-peer crash all go through the engine.
    let s = small();
    let run = |seed| {
        let nodes =
            u64::from(s.population.peers + s.population.superpeers + s.population.origins + 1);
        let cores = TrafficCores {
            nodes,
            period: Duration::from_secs(2),
            replies: 0,
        };
        World::new(&s, seed, cores).run(&mut |_, _| {})
    };
    let a = run(11);
    let b = run(11);
    assert!(a.summary.events > 50_000, "{} events", a.summary.events);
    assert_eq!(a.summary.trace_hash, b.summary.trace_hash);
    assert_eq!(a.summary.superpeer_load, b.summary.superpeer_load);
    let load = a.summary.superpeer_load.expect("traffic measured");
    assert!(load.relayed_bytes > 0, "symmetric-NAT pairs are relayed");
    assert_ne!(run(12).summary.trace_hash, a.summary.trace_hash);
}

#[test]
fn small_scenario_is_fast_and_sane() {
    let s = small();
    let t = Instant::now();
    let r = World::new(&s, s.run.seed, NoCores).run(&mut |_, _| {});
    assert!(t.elapsed() < Duration::from_secs(30));
    let sm = &r.summary;
    assert!(sm.workload.plays > 100, "{} plays", sm.workload.plays);
    assert!(sm.workload.skips < sm.workload.plays);
    assert!(sm.workload.mean_online > 0.0);
    assert_eq!(
        r.series.len(),
        (s.run.duration_s / s.run.sample_interval_s) as usize
    );
    // Zipf α = 1.1 over 5000 tracks: most plays go to the top 12%.
    assert!(
        sm.workload.top12pct_play_share > 0.7,
        "{}",
        sm.workload.top12pct_play_share
    );
    // Without the peer core, playback statistics are absent, not invented.
    assert!(sm.time_to_first_audio_ms.is_none());
    assert!(sm.stutter_rate.is_none());
    assert!(sm.share_by_source.is_none());
    assert!(!sm.notes.is_empty());
    // When measured, shares sum to 1 (checked on whatever is present).
    if let Some(sh) = sm.share_by_source {
        assert!((sh.cache + sh.peers + sh.superpeers + sh.origin - 1.0).abs() < 1e-9);
    }
}

#[test]
fn run_writes_outputs_and_refuses_non_empty_dir() {
    let base = std::env::temp_dir().join(format!("shoal-sim-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("tmp");
    let out = base.join("run");
    let s = small();
    let r = World::new(&s, 1, NoCores).run(&mut |_, _| {});
    output::write_run_dir(&out, &r).expect("writes");
    for f in [
        "summary.json",
        "timeseries.csv",
        "popularity.csv",
        "online_peers.png",
        "online_peers.svg",
        "plays.png",
        "popularity.svg",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).expect("read"))
            .expect("json");
    for k in [
        "time_to_first_audio_ms",
        "stutter_rate",
        "bytes_by_source",
        "share_by_source",
        "events",
        "wall_s",
    ] {
        assert!(json.get(k).is_some(), "summary lacks {k}");
    }
    // A non-empty destination is refused and no staging directory is left behind.
    assert!(output::write_run_dir(&out, &r).is_err());
    let leftovers: Vec<_> = std::fs::read_dir(&base)
        .expect("ls")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty());
    std::fs::remove_dir_all(&base).expect("cleanup");
}

#[test]
fn cli_bad_input_is_one_clear_error_and_no_output() {
    let bin = env!("CARGO_BIN_EXE_shoal-sim");
    let base = std::env::temp_dir().join(format!("shoal-sim-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("tmp");
    let bad = base.join("bad.toml");
    std::fs::write(&bad, "[population]\npeers = 10\nsuperpeers = 20\n").expect("write");
    let out = base.join("out");
    let o = std::process::Command::new(bin)
        .args([
            "run",
            bad.to_str().expect("utf8"),
            "--out",
            out.to_str().expect("utf8"),
        ])
        .output()
        .expect("runs");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.toml:3") && err.contains("population.superpeers"),
        "{err}"
    );
    assert!(!out.exists());
    // --set errors name the assignment.
    let o = std::process::Command::new(bin)
        .args([
            "run",
            scenario_path("small").to_str().expect("utf8"),
            "--out",
            out.to_str().expect("utf8"),
            "--set",
            "catalog.zipf_alpha=-1",
        ])
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--set catalog.zipf_alpha=-1"),
        "{err}"
    );
    assert!(!out.exists());
    std::fs::remove_dir_all(&base).expect("cleanup");
}

#[test]
fn sweep_runs_grid_and_keeps_churn_fixed_across_listening_values() {
    let base = std::env::temp_dir().join(format!("shoal-sim-sweep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let axes = vec![shoal_sim::sweep::parse_vary("catalog.zipf_alpha=0.9,1.2").expect("vary")];
    let dir = shoal_sim::sweep::sweep(
        &scenario_path("small"),
        &["run.duration_s=700".to_string()],
        &axes,
        Some(3),
        &base,
        |_, _| NoCores,
        |_, _| {},
    )
    .expect("sweep");
    let csv = std::fs::read_to_string(dir.join("sweep.csv")).expect("csv");
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(dir.join("compare_plays.png").is_file());
    assert!(dir.join("compare_plays.svg").is_file());
    // Churn has its own random stream: online peers do not depend on the popularity model.
    let online: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(12).unwrap_or(""))
        .collect();
    assert_eq!(online[0], online[1], "{csv}");
    std::fs::remove_dir_all(&base).expect("cleanup");
}

fn small_real(seed: u64) -> shoal_sim::sim::RunOutput {
    // Shorter than the file's 900 s to keep CI quick; the super-peer crash at 600 s stays in.
    let s = scenario::load(&scenario_path("small"), &["run.duration_s=660".to_string()])
        .expect("small loads")
        .scenario;
    World::new(&s, seed, ShoalCores::new(&s, seed)).run(&mut |_, _| {})
}

#[test]
fn real_cores_run_is_deterministic_and_sane() {
    // Peers, origin and tracker all run their real cores; P2P goes through the registry.
    let t = Instant::now();
    let a = small_real(8);
    assert!(t.elapsed() < Duration::from_secs(40), "{:?}", t.elapsed());
    let b = small_real(8);
    assert_eq!(a.summary.trace_hash, b.summary.trace_hash);
    assert_eq!(a.summary.bytes_by_source, b.summary.bytes_by_source);
    assert_eq!(
        a.summary.time_to_first_audio_ms,
        b.summary.time_to_first_audio_ms
    );
    assert_eq!(a.summary.notes, b.summary.notes);
    assert_ne!(small_real(9).summary.trace_hash, a.summary.trace_hash);
    let sm = &a.summary;
    assert_eq!(sm.cores.len(), 3, "{:?}", sm.cores);
    assert!(
        sm.cores.iter().any(|c| c.contains("TrackerCore")),
        "{:?}",
        sm.cores
    );
    // Playback statistics are measured from the peer core's events.
    let lat = sm.time_to_first_audio_ms.expect("plays started");
    assert!(
        lat.p50 >= 0.0 && lat.p90 >= lat.p50 && lat.p99 >= lat.p90,
        "{lat:?}"
    );
    assert!(lat.p99 > 0.0);
    assert!(a.latencies_ms.iter().all(|&v| v >= 0.0));
    let stutter = sm.stutter_rate.expect("plays ended");
    assert!((0.0..=1.0).contains(&stutter));
    let sh = sm.share_by_source.expect("bytes moved");
    assert!(
        (sh.cache + sh.peers + sh.superpeers + sh.origin - 1.0).abs() < 1e-9,
        "{sh:?}"
    );
    assert!(sh.origin > 0.0 && sh.cache > 0.0, "{sh:?}");
    // Peers learnt of holders from the tracker and fetched from them.
    assert!(sh.peers > 0.05, "{sh:?}");
    assert!(sm.origin_egress_peak_mbps.expect("origin served") > 0.0);
    let tracker = sm
        .notes
        .iter()
        .find(|n| n.starts_with("tracker:"))
        .expect("tracker note");
    assert!(!tracker.contains(" 0 answered"), "{tracker}");
    assert!(tracker.contains(" 0 rejected"), "{tracker}");
    // What is not integrated is said, not hidden.
    assert!(
        sm.notes
            .iter()
            .any(|n| n.contains("super-peer core not integrated"))
    );
}

#[test]
fn sweep_runs_match_single_runs_with_real_cores() {
    let base = std::env::temp_dir().join(format!("shoal-sim-sweep-real-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let sets = vec![
        "run.duration_s=300".to_string(),
        "population.peers=80".to_string(),
        "cache.history_plays=5".to_string(),
        "faults=[]".to_string(),
    ];
    let axes = vec![shoal_sim::sweep::parse_vary("latency.rtt_scale=1,3").expect("vary")];
    let dir = shoal_sim::sweep::sweep(
        &scenario_path("small"),
        &sets,
        &axes,
        Some(4),
        &base,
        ShoalCores::new,
        |_, _| {},
    )
    .expect("sweep");
    for (i, v) in ["1", "3"].iter().enumerate() {
        let mut all = sets.clone();
        all.push(format!("latency.rtt_scale={v}"));
        let s = scenario::load(&scenario_path("small"), &all)
            .expect("loads")
            .scenario;
        let single = World::new(&s, 4, ShoalCores::new(&s, 4)).run(&mut |_, _| {});
        let run_dir = std::fs::read_dir(&dir)
            .expect("ls")
            .filter_map(Result::ok)
            .find(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("run-{i:03}"))
            })
            .expect("run dir");
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run_dir.path().join("summary.json")).expect("read"),
        )
        .expect("json");
        assert_eq!(json["trace_hash"], single.summary.trace_hash.as_str());
    }
    std::fs::remove_dir_all(&base).expect("cleanup");
}

#[test]
fn play_setup_round_trips_travel_the_network_before_the_core_plays() {
    // The same run with and without two set-up round trips to the origin per play: they are
    // real messages (more events) and every play that does not continue a prefetched playlist
    // waits for them, so far fewer plays start within 20 ms (two round trips take more than
    // two same-region RTTs of 10 ms).
    let run = |rounds: u32| {
        let sets = [
            "run.duration_s=300".to_string(),
            "population.peers=200".to_string(),
            "catalog.tracks=229".to_string(),
            format!("client.play_setup_round_trips={rounds}"),
        ];
        let s = scenario::load(&scenario_path("spotify-2010"), &sets)
            .expect("spotify-2010 loads")
            .scenario;
        World::new(&s, 5, ShoalCores::new(&s, 5)).run(&mut |_, _| {})
    };
    let (plain, setup) = (run(0), run(2));
    assert!(setup.summary.events > plain.summary.events);
    let fast = |o: &shoal_sim::sim::RunOutput| o.latencies_ms.iter().filter(|&&v| v < 20.0).count();
    assert!(!plain.latencies_ms.is_empty() && !setup.latencies_ms.is_empty());
    assert!(
        fast(&setup) * 2 < fast(&plain),
        "plays starting within 20 ms: {} with set-up, {} without",
        fast(&setup),
        fast(&plain)
    );
}
