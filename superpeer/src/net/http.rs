//! The operator's HTTP surface: `GET /metrics` (Prometheus text), `GET /healthz`, and `GET /`
//! (a plain HTML status page).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;

use super::node::{Shared, lock};

/// The router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(status))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(shared)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render_metrics(&s),
    )
}

/// The Prometheus exposition.
pub fn render_metrics(s: &Shared) -> String {
    let c = &s.counters;
    let idx = lock(&s.index).stats();
    let adm = lock(&s.admission).stats();
    let (sync, forwarding) = {
        let sync = lock(&s.sync);
        (sync.stats(), sync.forwarding())
    };
    let max_leaves = lock(&s.index).config().max_leaves;
    let (served, announced) = {
        let v = lock(&s.cache);
        (v.served_bytes, v.announced && v.held_tracks > 0)
    };
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let rows: [(&str, &str, &str, u64); 42] = [
        (
            "shoal_superpeer_circuits_closed_total",
            "counter",
            "Relayed circuits closed (any way).",
            get(&c.circuits_closed),
        ),
        (
            "shoal_superpeer_circuits_closed_early_total",
            "counter",
            "Circuits the leaves closed cleanly within 30 s of opening. Leaves close the relayed connection once DCUtR gives them a direct one, so this approximates direct-upgrade successes; the relay cannot observe DCUtR itself (it runs end to end inside the encrypted circuit).",
            get(&c.circuits_closed_early),
        ),
        (
            "shoal_superpeer_circuits_closed_late_total",
            "counter",
            "Circuits that stayed open 30 s or more before closing: the leaves kept relaying (no direct upgrade, or it failed).",
            get(&c.circuits_closed_late),
        ),
        (
            "shoal_superpeer_index_max_leaves",
            "gauge",
            "Leaves the cluster index accepts (index.max_leaves; reloadable).",
            max_leaves as u64,
        ),
        (
            "shoal_superpeer_tracker_sync_forwarding",
            "gauge",
            "1 while the tracker has this cluster's aggregated holdings (leaves are told not to announce to it themselves).",
            u64::from(forwarding),
        ),
        (
            "shoal_superpeer_tracker_sync_sent_total",
            "counter",
            "Aggregated cluster announces sent to the tracker.",
            sync.sent,
        ),
        (
            "shoal_superpeer_tracker_sync_accepted_total",
            "counter",
            "Aggregated cluster announces the tracker accepted.",
            sync.accepted,
        ),
        (
            "shoal_superpeer_tracker_sync_failed_total",
            "counter",
            "Aggregated cluster announces rejected or lost (a snapshot follows).",
            sync.failed,
        ),
        (
            "shoal_superpeer_tracker_sync_snapshots_total",
            "counter",
            "Full snapshots of the cluster sent to the tracker.",
            sync.snapshots,
        ),
        (
            "shoal_superpeer_tracker_sync_tracks",
            "gauge",
            "Tracks the tracker lists for this cluster.",
            sync.tracks_listed as u64,
        ),
        (
            "shoal_superpeer_leaves",
            "gauge",
            "Leaves with an entry in the cluster index.",
            idx.leaves as u64,
        ),
        (
            "shoal_superpeer_index_tracks",
            "gauge",
            "Distinct tracks held in the cluster.",
            idx.tracks as u64,
        ),
        (
            "shoal_superpeer_index_listings",
            "gauge",
            "(leaf, track) listings in the cluster index.",
            idx.listings as u64,
        ),
        (
            "shoal_superpeer_connected_peers",
            "gauge",
            "Peers with an open connection.",
            get(&c.connected_peers),
        ),
        (
            "shoal_superpeer_reservations",
            "gauge",
            "Peers holding a relay reservation.",
            get(&c.reservations),
        ),
        (
            "shoal_superpeer_reservations_accepted_total",
            "counter",
            "Relay reservations accepted (new and renewed).",
            get(&c.reservations_accepted),
        ),
        (
            "shoal_superpeer_reservations_denied_total",
            "counter",
            "Relay reservations denied.",
            get(&c.reservations_denied),
        ),
        (
            "shoal_superpeer_circuits_open",
            "gauge",
            "Relayed circuits open now.",
            get(&c.circuits_open),
        ),
        (
            "shoal_superpeer_circuits_accepted_total",
            "counter",
            "Relayed circuits accepted.",
            get(&c.circuits_accepted),
        ),
        (
            "shoal_superpeer_circuits_denied_total",
            "counter",
            "Relayed circuits denied.",
            get(&c.circuits_denied),
        ),
        (
            "shoal_superpeer_circuits_failed_total",
            "counter",
            "Relayed circuits closed by an error or a limit.",
            get(&c.circuits_failed),
        ),
        (
            "shoal_superpeer_transport_read_bytes_total",
            "counter",
            "Bytes read from all connections (relayed audio dominates; each relayed byte is read once).",
            s.throttle.bytes_read(),
        ),
        (
            "shoal_superpeer_transport_written_bytes_total",
            "counter",
            "Bytes written to all connections.",
            s.throttle.bytes_written(),
        ),
        (
            "shoal_superpeer_relay_bandwidth_limit_bytes_per_second",
            "gauge",
            "The relay bandwidth cap (0: unlimited).",
            s.throttle.rate().unwrap_or(0),
        ),
        (
            "shoal_superpeer_throttled_reads_total",
            "counter",
            "Reads delayed by the bandwidth cap.",
            s.throttle.throttled_reads(),
        ),
        (
            "shoal_superpeer_announces_accepted_total",
            "counter",
            "Leaf announces accepted.",
            idx.announces_accepted,
        ),
        (
            "shoal_superpeer_announces_rejected_total",
            "counter",
            "Leaf announces rejected.",
            idx.announces_rejected,
        ),
        (
            "shoal_superpeer_lookups_total",
            "counter",
            "Lookups received (holders and search).",
            get(&c.lookups),
        ),
        (
            "shoal_superpeer_lookup_hits_total",
            "counter",
            "Holder lookups answered from the cluster index.",
            idx.lookup_hits,
        ),
        (
            "shoal_superpeer_lookups_forwarded_total",
            "counter",
            "Lookups forwarded to the tracker.",
            get(&c.lookups_forwarded),
        ),
        (
            "shoal_superpeer_autonat_probes_total",
            "counter",
            "AutoNAT dial-backs that reached the prober.",
            get(&c.autonat_probes),
        ),
        (
            "shoal_superpeer_cache_hits_total",
            "counter",
            "Holder lookups answered with the super-peer's cache peer (it holds the whole track).",
            get(&c.cache_hits),
        ),
        (
            "shoal_superpeer_cache_served_bytes_total",
            "counter",
            "Chunk bytes the cache peer uploaded to leaves.",
            served,
        ),
        (
            "shoal_superpeer_cache_announced",
            "gauge",
            "1 when the tracker has accepted the cache peer's holdings (it holds something).",
            u64::from(announced),
        ),
        (
            "shoal_superpeer_cache_tracks",
            "gauge",
            "Tracks the cache holds completely.",
            adm.cached_tracks as u64,
        ),
        (
            "shoal_superpeer_cache_chunks",
            "gauge",
            "Chunks of the tracks the cache holds.",
            adm.cached_chunks,
        ),
        (
            "shoal_superpeer_cache_bytes",
            "gauge",
            "Bytes of the tracks the cache holds.",
            adm.cached_bytes,
        ),
        (
            "shoal_superpeer_cache_admitted_total",
            "counter",
            "Tracks admitted to the cache (enough distinct leaves looked them up).",
            adm.admitted_total,
        ),
        (
            "shoal_superpeer_cache_fetch_queue",
            "gauge",
            "Admitted tracks waiting to be fetched or being fetched.",
            (adm.queued + adm.fetching) as u64,
        ),
        (
            "shoal_superpeer_cache_fetch_failures_total",
            "counter",
            "Cache fetches given up (stalled, invalid manifest).",
            adm.failed_total,
        ),
        (
            "shoal_superpeer_cache_evicted_total",
            "counter",
            "Tracks no longer listed to stay within the cache's size.",
            adm.evicted_total,
        ),
        (
            "shoal_superpeer_cache_tracked_tracks",
            "gauge",
            "Tracks whose lookups are being counted for admission.",
            adm.tracked as u64,
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in rows {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP shoal_superpeer_uptime_seconds Seconds since start.\n# TYPE shoal_superpeer_uptime_seconds gauge\nshoal_superpeer_uptime_seconds {}",
        s.started.elapsed().as_secs()
    );
    out
}

async fn status(State(s): State<Arc<Shared>>) -> Html<String> {
    Html(render_status(&s))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The status page.
pub fn render_status(s: &Shared) -> String {
    let c = &s.counters;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let idx = lock(&s.index).stats();
    let adm = lock(&s.admission).stats();
    let cache = lock(&s.cache).clone();
    let up = s.started.elapsed().as_secs();
    let uptime = format!("{}h {:02}m {:02}s", up / 3600, up / 60 % 60, up % 60);
    let list = |addrs: &[libp2p::Multiaddr]| {
        if addrs.is_empty() {
            return "<li>(none)</li>".to_owned();
        }
        addrs
            .iter()
            .map(|a| {
                format!(
                    "<li><code>{}/p2p/{}</code></li>",
                    esc(&a.to_string()),
                    s.peer_id
                )
            })
            .collect::<String>()
    };
    let listen = list(&lock(&s.listen_addrs));
    let external = list(&lock(&s.external_addrs));
    let tracker =
        lock(&s.tracker).map_or("not connected".to_owned(), |p| format!("<code>{p}</code>"));
    let cap = s.throttle.rate().map_or("unlimited".to_owned(), |r| {
        format!("{} Mbit/s", r * 8 / 1_000_000)
    });
    let rows = [
        ("Leaves", idx.leaves.to_string()),
        ("Tracks in the cluster", idx.tracks.to_string()),
        ("Connected peers", get(&c.connected_peers).to_string()),
        ("Reservations", get(&c.reservations).to_string()),
        ("Circuits open", get(&c.circuits_open).to_string()),
        (
            "Circuits since start",
            get(&c.circuits_accepted).to_string(),
        ),
        ("Circuits denied", get(&c.circuits_denied).to_string()),
        (
            "Bytes in / out",
            format!(
                "{} / {}",
                s.throttle.bytes_read(),
                s.throttle.bytes_written()
            ),
        ),
        ("Relay bandwidth cap", cap),
        ("Announces accepted", idx.announces_accepted.to_string()),
        ("Leaf limit", lock(&s.index).config().max_leaves.to_string()),
        ("Cluster at the tracker", {
            let sync = lock(&s.sync);
            format!(
                "{} ({} tracks listed, {} announces sent)",
                if sync.forwarding() { "yes" } else { "no" },
                sync.stats().tracks_listed,
                sync.stats().sent
            )
        }),
        ("Lookups", get(&c.lookups).to_string()),
        (
            "Lookups forwarded to the tracker",
            get(&c.lookups_forwarded).to_string(),
        ),
        ("Cache", esc(&cache.state)),
        (
            "Cache peer",
            cache
                .peer_id
                .map_or("-".to_owned(), |p| format!("<code>{p}</code>")),
        ),
        (
            "Cache addresses",
            cache
                .addrs
                .iter()
                .map(|a| format!("<code>{}</code>", esc(&a.to_string())))
                .collect::<Vec<_>>()
                .join("<br>"),
        ),
        (
            "Cached tracks / chunks / bytes",
            format!(
                "{} / {} / {}",
                adm.cached_tracks, adm.cached_chunks, adm.cached_bytes
            ),
        ),
        (
            "Tracks admitted / queued / failed",
            format!(
                "{} / {} / {}",
                adm.admitted_total,
                adm.queued + adm.fetching,
                adm.failed_total
            ),
        ),
        (
            "Fetching",
            cache
                .fetching
                .map_or("-".to_owned(), |t| format!("<code>{t}</code>")),
        ),
        (
            "Cache announced to the tracker",
            format!(
                "{} ({} tracks held)",
                if cache.announced { "yes" } else { "no" },
                cache.held_tracks
            ),
        ),
        ("Cache hits", get(&c.cache_hits).to_string()),
        ("Cache bytes served", cache.served_bytes.to_string()),
        ("Uptime", uptime),
    ];
    let table: String = rows
        .iter()
        .map(|(k, v)| format!("<tr><th>{k}</th><td>{v}</td></tr>\n"))
        .collect();
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Shoal super-peer</title>\
<meta http-equiv=\"refresh\" content=\"10\">\
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}th{{text-align:left;padding-right:2em}}code{{font-size:90%}}</style>\
</head><body>\n<h1>Shoal super-peer</h1>\n<p>PeerId <code>{peer}</code> &middot; version {version}</p>\n\
<table>\n{table}</table>\n<h2>Listening</h2><ul>{listen}</ul>\n<h2>Advertised</h2><ul>{external}</ul>\n\
<h2>Tracker</h2><p>{tracker}</p>\n<p><a href=\"/metrics\">/metrics</a> &middot; <a href=\"/healthz\">/healthz</a></p>\n</body></html>\n",
        peer = s.peer_id,
        version = env!("CARGO_PKG_VERSION"),
    )
}
