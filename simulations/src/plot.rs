//! Owns the figures: line plots written as PNG and SVG with plotters (latency CDF, byte shares
//! over time, origin egress, super-peer load, online peers, plays, popularity), for one run
//! and for sweep comparisons.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::output::OutputError;
use crate::sim::RunOutput;

/// A named series of (x, y) points.
pub type Series = (String, Vec<(f64, f64)>);

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

static FONT: &[u8] = include_bytes!("../data/DejaVuSans.ttf");

/// Registers the shipped font as "sans-serif" (once per process).
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The font is compiled in and known to parse (a test draws with it).
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    xl: &str,
    yl: &str,
    series: &[Series],
) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let pts = series.iter().flat_map(|(_, v)| v.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    y0 = y0.min(0.0);
    if y1 - y0 < 1e-9 {
        y1 = y0 + 1.0;
    }
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1 * 1.05)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(xl)
        .y_desc(yl)
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (name, v)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(v.iter().copied(), c.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        if v.len() <= 12 {
            chart
                .draw_series(v.iter().map(|&p| Circle::new(p, 4, c.filled())))
                .map_err(|e| e.to_string())?;
        }
    }
    if series.len() > 1 || series.first().is_some_and(|s| !s.0.is_empty()) {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

/// Writes `name.png` and `name.svg` in `dir`.
pub fn line_plot(
    dir: &Path,
    name: &str,
    title: &str,
    xl: &str,
    yl: &str,
    series: &[Series],
) -> Result<(), OutputError> {
    register_font();
    let err = |reason: String| OutputError::Plot {
        name: name.to_string(),
        reason,
    };
    let png = dir.join(format!("{name}.png"));
    draw(
        BitMapBackend::new(&png, (900, 560)).into_drawing_area(),
        title,
        xl,
        yl,
        series,
    )
    .map_err(err)?;
    let svg = dir.join(format!("{name}.svg"));
    draw(
        SVGBackend::new(&svg, (900, 560)).into_drawing_area(),
        title,
        xl,
        yl,
        series,
    )
    .map_err(err)
}

/// Every plot of one run; plots whose data needs an integrated core are drawn only when it is.
pub fn plot_run(dir: &Path, out: &RunOutput) -> Result<(), OutputError> {
    let s = &out.summary;
    let t_min = |f: &dyn Fn(&crate::stats::Sample) -> f64| -> Vec<(f64, f64)> {
        out.series.iter().map(|r| (r.t_s / 60.0, f(r))).collect()
    };
    line_plot(
        dir,
        "online_peers",
        &format!("{}: peers online", s.scenario),
        "time (min)",
        "peers",
        &[(String::new(), t_min(&|r| r.online_peers as f64))],
    )?;
    line_plot(
        dir,
        "plays",
        &format!("{}: plays started per interval", s.scenario),
        "time (min)",
        "plays",
        &[
            ("plays".into(), t_min(&|r| r.plays as f64)),
            ("skips".into(), t_min(&|r| r.skips as f64)),
        ],
    )?;
    let pop: Vec<(f64, f64)> = out
        .rank_plays
        .iter()
        .filter(|(_, _, n)| *n > 0)
        .map(|&(lo, hi, n)| {
            // Plays per rank in the bucket [lo, hi], at its geometric middle.
            let width = (hi - lo + 1) as f64;
            (
                ((lo as f64) * (hi as f64)).sqrt().log10(),
                (n as f64 / width).log10(),
            )
        })
        .collect();
    line_plot(
        dir,
        "popularity",
        &format!("{}: plays per track by popularity rank", s.scenario),
        "log10 rank",
        "log10 plays per track",
        &[(String::new(), pop)],
    )?;
    if !out.latencies_ms.is_empty() {
        let n = out.latencies_ms.len();
        let step = (n / 2000).max(1);
        let cdf: Vec<(f64, f64)> = out
            .latencies_ms
            .iter()
            .enumerate()
            .step_by(step)
            .map(|(i, &v)| (f64::from(v), (i + 1) as f64 / n as f64))
            .collect();
        line_plot(
            dir,
            "latency_cdf",
            &format!("{}: time to first audio", s.scenario),
            "ms",
            "CDF",
            &[(String::new(), cdf)],
        )?;
    }
    if s.bytes_by_source.is_some() {
        let share = |f: fn(&crate::stats::BySource<u64>) -> u64| {
            t_min(&move |r| {
                let t = r.bytes.total();
                if t == 0 {
                    0.0
                } else {
                    f(&r.bytes) as f64 / t as f64
                }
            })
        };
        line_plot(
            dir,
            "byte_shares",
            &format!("{}: share of audio bytes by source", s.scenario),
            "time (min)",
            "share",
            &[
                ("cache".into(), share(|b| b.cache)),
                ("peers".into(), share(|b| b.peers)),
                ("super-peers".into(), share(|b| b.superpeers)),
                ("origin".into(), share(|b| b.origin)),
            ],
        )?;
    }
    if s.origin_egress_peak_mbps.is_some() {
        line_plot(
            dir,
            "origin_egress",
            &format!("{}: origin egress", s.scenario),
            "time (min)",
            "Mbit/s",
            &[(String::new(), t_min(&|r| r.origin_egress_mbps))],
        )?;
    }
    if s.superpeer_load.is_some() {
        line_plot(
            dir,
            "superpeer_load",
            &format!("{}: super-peer egress (served + relayed)", s.scenario),
            "time (min)",
            "Mbit/s (all super-peers)",
            &[(String::new(), t_min(&|r| r.superpeer_mbps))],
        )?;
    }
    Ok(())
}
