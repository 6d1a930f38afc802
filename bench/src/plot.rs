//! `--plot DIR`: the run's figures as charts, per workload: throughput (GB/s) and latency
//! (p50 and p99, log scale) of every system, op and phase, as SVG and PNG.
//!
//! Text needs a TrueType font, read from the system (Debian's fonts-dejavu-core) so that
//! no font is built into the binary; without one the charts are skipped with that reason.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::Record;

/// Fonts tried in turn; the first that exists is registered as sans-serif.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

const WIDTH: u32 = 1100;
const ROW: u32 = 22;

/// Writes the charts of `records` into `dir`; returns the files written.
pub fn write(records: &[Record], dir: &Path) -> Result<Vec<String>, String> {
    register_font()?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut workloads: Vec<&str> = records.iter().map(|r| r.workload).collect();
    workloads.dedup();
    let mut written = Vec::new();
    for workload in workloads {
        let rows: Vec<&Record> = records.iter().filter(|r| r.workload == workload).collect();
        let colours = Colours::of(&rows);
        let moving: Vec<&Record> = rows.iter().copied().filter(|r| r.bytes > 0).collect();
        let timed: Vec<&Record> = rows
            .iter()
            .copied()
            .filter(|r| r.p99_us.is_some())
            .collect();
        for ext in ["svg", "png"] {
            if !moving.is_empty() {
                let path = dir.join(format!("{workload}-throughput.{ext}"));
                let title = format!("{workload}: throughput (GB/s)");
                chart(&path, &title, &moving, &colours, Metric::Throughput)?;
                written.push(path.display().to_string());
            }
            if !timed.is_empty() {
                let path = dir.join(format!("{workload}-latency.{ext}"));
                let title = format!("{workload}: latency per operation (us, p50 and p99)");
                chart(&path, &title, &timed, &colours, Metric::Latency)?;
                written.push(path.display().to_string());
            }
        }
    }
    Ok(written)
}

fn register_font() -> Result<(), String> {
    let path = FONTS
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or("no TrueType font found (apt-get install fonts-dejavu-core)")?;
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    // plotters keeps fonts for the process's life; the run registers one font once.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("{path}: not a usable TrueType font"))
}

/// One colour per system of a workload, distinct within it and the same in each of its
/// charts: the systems in the order they first appear, along the palette.
struct Colours<'a> {
    systems: Vec<&'a str>,
}

impl<'a> Colours<'a> {
    fn of(rows: &[&'a Record]) -> Colours<'a> {
        let mut systems: Vec<&str> = Vec::new();
        for r in rows {
            if !systems.contains(&r.system) {
                systems.push(r.system);
            }
        }
        Colours { systems }
    }

    fn of_system(&self, system: &str) -> RGBAColor {
        let i = self.systems.iter().position(|&s| s == system);
        Palette99::pick(i.unwrap_or(self.systems.len())).to_rgba()
    }
}

#[derive(Clone, Copy)]
enum Metric {
    Throughput,
    Latency,
}

fn label(r: &Record) -> String {
    let size = crate::report::human_size(r.value_size);
    // A ceiling measured beside each system says which one (and when).
    let beside = match (r.extra.get("beside"), r.extra.get("when")) {
        (Some(system), Some(when)) => format!(
            " {} {}",
            when.as_str().unwrap_or_default(),
            system.as_str().unwrap_or_default()
        ),
        _ => String::new(),
    };
    format!(
        "{} {} {}{beside} {} c{}",
        r.system, r.op, r.phase, size, r.concurrency
    )
}

/// Pixels for the row labels: room for the longest at about 6 px a character (the
/// axis font), and never less than the 330 the short labels of most workloads need.
fn label_area(labels: &[String]) -> u32 {
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0) as u32;
    (longest * 6 + 16).clamp(330, WIDTH / 2)
}

fn chart(
    path: &Path,
    title: &str,
    rows: &[&Record],
    colours: &Colours<'_>,
    metric: Metric,
) -> Result<(), String> {
    let height = 90 + ROW * rows.len() as u32;
    let is_svg = path.extension().is_some_and(|e| e == "svg");
    let result = if is_svg {
        let area = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
        draw(&area, title, rows, colours, metric)
    } else {
        let area = BitMapBackend::new(path, (WIDTH, height)).into_drawing_area();
        draw(&area, title, rows, colours, metric)
    };
    result.map_err(|e| format!("{}: {e}", path.display()))
}

fn draw<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    rows: &[&Record],
    colours: &Colours<'_>,
    metric: Metric,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE)?;
    // The y axis counts up from the bottom: reversed, the first record is on top.
    let rows: Vec<&Record> = rows.iter().rev().copied().collect();
    let n = rows.len() as u32;
    let labels: Vec<String> = rows.iter().map(|r| label(r)).collect();
    let colour = |system: &str| colours.of_system(system);
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(label_area(&labels));
    let y = (0..n).into_segmented();
    let label_of = |v: &SegmentValue<u32>| match v {
        SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    match metric {
        Metric::Throughput => {
            let gbps: Vec<f64> = rows.iter().map(|r| r.bytes_per_s() / 1e9).collect();
            let max = gbps.iter().cloned().fold(0.0, f64::max).max(1e-3) * 1.1;
            let mut chart = builder.build_cartesian_2d(0.0..max, y)?;
            chart
                .configure_mesh()
                .y_labels(n as usize)
                .y_label_formatter(&label_of)
                .x_desc("GB/s")
                .light_line_style(WHITE)
                .draw()?;
            chart.draw_series(rows.iter().zip(&gbps).enumerate().map(|(i, (r, &v))| {
                let i = i as u32;
                let mut bar = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(i)),
                        (v, SegmentValue::Exact(i + 1)),
                    ],
                    colour(r.system).filled(),
                );
                bar.set_margin(3, 3, 0, 0);
                bar
            }))?;
        }
        Metric::Latency => {
            let p = |r: &Record| {
                (
                    r.p50_us.unwrap_or(0.0).max(0.1),
                    r.p99_us.unwrap_or(0.0).max(0.1),
                )
            };
            let max = rows.iter().map(|r| p(r).1).fold(1.0, f64::max) * 2.0;
            let mut chart = builder.build_cartesian_2d((0.1..max).log_scale(), y)?;
            chart
                .configure_mesh()
                .y_labels(n as usize)
                .y_label_formatter(&label_of)
                .x_desc("microseconds (bar: p50, line: p99)")
                .light_line_style(WHITE)
                .draw()?;
            chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
                let i = i as u32;
                let mut bar = Rectangle::new(
                    [
                        (0.1, SegmentValue::Exact(i)),
                        (p(r).0, SegmentValue::Exact(i + 1)),
                    ],
                    colour(r.system).filled(),
                );
                bar.set_margin(3, 3, 0, 0);
                bar
            }))?;
            chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
                let i = i as u32;
                PathElement::new(
                    vec![
                        (p(r).0, SegmentValue::CenterOf(i)),
                        (p(r).1, SegmentValue::CenterOf(i)),
                    ],
                    BLACK.stroke_width(2),
                )
            }))?;
        }
    }
    area.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 62-character ceiling label was cut at the chart's left edge.
    #[test]
    fn the_label_area_fits_the_longest_label_within_half_the_chart() {
        let labels = |n: usize| vec!["short".to_string(), "x".repeat(n)];
        assert_eq!(label_area(&labels(10)), 330);
        let long = label_area(&labels(62));
        assert!(long >= 62 * 6, "{long} px for 62 characters");
        assert_eq!(label_area(&labels(1000)), WIDTH / 2);
    }

    /// A hash of the name gave foyer and strata-shm the same orange.
    #[test]
    fn every_system_of_a_workload_has_its_own_colour() {
        let systems = [
            "raw-odirect",
            "memcached-extstore",
            "foyer",
            "strata-embedded",
            "strata-shm",
            "strata-tcp",
            "strata-quic",
        ];
        let records: Vec<Record> = systems
            .iter()
            .flat_map(|&s| {
                [
                    Record::new("mixed", s, "get", "mixed"),
                    Record::new("mixed", s, "put", "mixed"),
                ]
            })
            .collect();
        let rows: Vec<&Record> = records.iter().collect();
        let colours = Colours::of(&rows);
        let picked: Vec<RGBAColor> = systems.iter().map(|s| colours.of_system(s)).collect();
        for (i, a) in picked.iter().enumerate() {
            for (j, b) in picked.iter().enumerate().skip(i + 1) {
                assert_ne!(a.rgb(), b.rgb(), "{} and {}", systems[i], systems[j]);
            }
        }
    }

    #[test]
    fn charts_name_every_system_and_phase() {
        if !FONTS.iter().any(|f| Path::new(f).exists()) {
            let required = std::env::var("STRATA_REQUIRE_EXTERNAL").is_ok_and(|v| v == "1");
            assert!(!required, "no font: apt-get install fonts-dejavu-core");
            return println!("no TrueType font (apt-get install fonts-dejavu-core): skipped");
        }
        let mut h = crate::report::histogram();
        h.record(1_000).unwrap();
        h.record(90_000).unwrap();
        let records = vec![
            Record::new("kvcache", "strata-shm", "load", "warm")
                .size(1 << 20)
                .timed(10, 10 << 20, std::time::Duration::from_millis(5), Some(&h)),
            Record::new("kvcache", "redis", "load", "warm-cross")
                .size(1 << 20)
                .timed(10, 10 << 20, std::time::Duration::from_millis(20), Some(&h)),
            Record::new("kvcache", "strata-shm", "lookup", "warm").timed(
                10,
                0,
                std::time::Duration::from_millis(1),
                Some(&h),
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        let files = write(&records, dir.path()).unwrap();
        assert_eq!(files.len(), 4, "{files:?}");
        let svg = std::fs::read_to_string(dir.path().join("kvcache-throughput.svg")).unwrap();
        assert!(svg.contains("strata-shm load warm") && svg.contains("redis load warm-cross"));
        assert!(
            !svg.contains("lookup"),
            "a lookup moves no bytes: not a throughput bar"
        );
        let svg = std::fs::read_to_string(dir.path().join("kvcache-latency.svg")).unwrap();
        assert!(svg.contains("strata-shm lookup warm"));
        let png = std::fs::read(dir.path().join("kvcache-latency.png")).unwrap();
        assert!(png.starts_with(b"\x89PNG"));
    }
}
