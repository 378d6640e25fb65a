//! `grlo ctl job plot ID --out FILE.png`: the dashboard's charts of a job in one PNG, for
//! terminals and reports. Both draw from one list, the coordinator's `assets/charts.json`
//! (reward, response length, KL, throughput, budget, and every `val/...` key).
//!
//! Drawn with plotters into an RGB buffer and encoded with `png`; the font (DejaVu Sans) is
//! embedded in the binary, so the picture looks the same on a machine without fonts.

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{Context, bail};
use grlo_proto::security::Transport;
use grlo_proto::v1;
use grlo_proto::v1::coordinator_client::CoordinatorClient;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};
use serde_json::{Value, json};

use grlo_coordinator::charts::{ChartKind, ChartSpec, chart_list, rgb};

use crate::cli::ctl::status_name;

/// The picture's width in pixels; its height follows from the number of charts
/// ([`height`]).
pub const WIDTH: u32 = 1600;
/// Charts per row, and each row's height in pixels.
const COLUMNS: usize = 3;
const ROW_HEIGHT: u32 = 465;
/// The title bar and the margins around the cells.
const HEAD_HEIGHT: u32 = 70;
const MARGIN: u32 = 12;

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

const TEXT: RGBColor = RGBColor(17, 24, 39);
const MUTED: RGBColor = RGBColor(75, 85, 99);
const GRID: RGBColor = RGBColor(229, 231, 235);

/// Fetches the job and its step history and writes the PNG; the line `grlo ctl` prints.
pub async fn run(
    client: &mut CoordinatorClient<Transport>,
    id: &str,
    out: &Path,
    json_out: bool,
    explain: fn(tonic::Status) -> anyhow::Error,
) -> anyhow::Result<String> {
    check_output(out)?;
    let job = client
        .get_job(v1::JobRef {
            job_id: id.to_string(),
        })
        .await
        .map_err(explain)?
        .into_inner();
    let steps = client
        .list_steps(v1::JobRef {
            job_id: id.to_string(),
        })
        .await
        .map_err(explain)?
        .into_inner()
        .steps;
    let png = render(&job, &steps)?;
    std::fs::write(out, png)
        .with_context(|| format!("cannot write the plot to {}", out.display()))?;
    if json_out {
        return Ok(serde_json::to_string_pretty(&json!({
            "id": job.id,
            "path": out.display().to_string(),
            "steps": steps.len(),
            "width": WIDTH,
            "height": height(),
        }))?);
    }
    Ok(format!(
        "wrote {} ({} steps of job {})",
        out.display(),
        steps.len(),
        job.id
    ))
}

/// Refuses a path whose directory does not exist, before asking the coordinator anything.
fn check_output(out: &Path) -> anyhow::Result<()> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        bail!(
            "cannot write the plot to {}: the directory {} does not exist",
            out.display(),
            parent.display()
        );
    }
    if out.is_dir() {
        bail!(
            "cannot write the plot to {}: it is a directory (name a .png file)",
            out.display()
        );
    }
    Ok(())
}

/// One step's metrics and budget, as the charts read them.
struct Step {
    step: f64,
    metrics: Value,
    gpu_used: f64,
    gpu_limit: f64,
    cpu_used: f64,
    cpu_limit: f64,
}

impl Step {
    fn metric(&self, key: &str) -> Option<f64> {
        self.metrics[key].as_f64().filter(|v| v.is_finite())
    }
}

/// A line of one chart; `dashed` for a straight reference line (the budget).
struct Series {
    name: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
    dashed: bool,
}

/// One chart: a title, its lines, an optional band (reward ± std), and whether 0 is on the
/// y axis.
struct Chart {
    title: String,
    series: Vec<Series>,
    band: Vec<(f64, f64, f64)>,
    zero: bool,
}

/// A `#rrggbb` of the chart list as plotters' colour (grey if malformed: the list's tests
/// make sure none is).
fn color(text: &str) -> RGBColor {
    let [r, g, b] = rgb(text).unwrap_or([107, 114, 128]);
    RGBColor(r, g, b)
}

fn series(name: &str, color: RGBColor, steps: &[Step], key: &str) -> Series {
    Series {
        name: name.to_string(),
        color,
        points: steps
            .iter()
            .filter_map(|s| s.metric(key).map(|v| (s.step, v)))
            .collect(),
        dashed: false,
    }
}

/// The charts of the list, in its order.
fn charts(steps: &[Step]) -> Vec<Chart> {
    chart_list()
        .charts
        .iter()
        .map(|spec| match spec.kind {
            ChartKind::Series => series_chart(spec, steps),
            ChartKind::Prefix => prefix_chart(spec, steps),
            ChartKind::Budget => budget_chart(spec, steps),
        })
        .collect()
}

/// The named keys' lines (an optional one only when some step has it), with a band of
/// mean ± `band_std` where the list asks for one.
fn series_chart(spec: &ChartSpec, steps: &[Step]) -> Chart {
    let mut band = Vec::new();
    let mut lines = Vec::new();
    for line in &spec.series {
        let drawn = series(&line.key, color(&line.color), steps, &line.key);
        if line.optional && drawn.points.is_empty() {
            continue;
        }
        if let Some(std_key) = &line.band_std {
            band = steps
                .iter()
                .filter_map(|s| {
                    let (mean, std) = (s.metric(&line.key)?, s.metric(std_key)?);
                    Some((s.step, mean - std, mean + std))
                })
                .collect();
        }
        lines.push(drawn);
    }
    Chart {
        title: spec.title.clone(),
        series: lines,
        band,
        zero: spec.zero,
    }
}

/// Every key that starts with the chart's prefix, in the order the steps logged them, as
/// many as it has colours.
fn prefix_chart(spec: &ChartSpec, steps: &[Step]) -> Chart {
    let prefix = spec.prefix.as_deref().unwrap_or_default();
    let mut keys: Vec<&str> = Vec::new();
    for step in steps {
        if let Value::Object(metrics) = &step.metrics {
            for key in metrics.keys() {
                if key.starts_with(prefix) && !keys.contains(&key.as_str()) {
                    keys.push(key);
                }
            }
        }
    }
    Chart {
        title: spec.title.clone(),
        series: keys
            .iter()
            .zip(&spec.colors)
            .map(|(key, c)| series(key, color(c), steps, key))
            .collect(),
        band: Vec::new(),
        zero: spec.zero,
    }
}

/// What is left of the budget, or what was spent when there is none: GPU-hours, or CPU-hours
/// for a job that runs on CPUs only (as the dashboard does).
fn budget_chart(spec: &ChartSpec, steps: &[Step]) -> Chart {
    let (left_color, limit_color) = match spec.colors.as_slice() {
        [left, limit, ..] => (color(left), color(limit)),
        _ => (color(""), color("")),
    };
    let last = steps.last();
    let gpu_used = steps.iter().any(|s| s.gpu_used > 0.0);
    let cpu_used = steps.iter().any(|s| s.cpu_used > 0.0);
    let gpu = last.is_none_or(|l| l.gpu_limit > 0.0) || gpu_used || !cpu_used;
    let unit = if gpu { "GPU-hours" } else { "CPU-hours" };
    let used = |s: &Step| if gpu { s.gpu_used } else { s.cpu_used } / 3600.0;
    let limit = last.map_or(
        0.0,
        |l| if gpu { l.gpu_limit } else { l.cpu_limit } / 3600.0,
    );
    if limit > 0.0 {
        Chart {
            title: format!("{} burn-down: {unit} left of {}", spec.title, number(limit)),
            series: vec![
                Series {
                    name: "left".into(),
                    color: left_color,
                    points: steps
                        .iter()
                        .map(|s| (s.step, (limit - used(s)).max(0.0)))
                        .collect(),
                    dashed: false,
                },
                Series {
                    name: "budget".into(),
                    color: limit_color,
                    points: steps.iter().map(|s| (s.step, limit)).collect(),
                    dashed: true,
                },
            ],
            band: Vec::new(),
            zero: true,
        }
    } else {
        Chart {
            title: format!("{}: {unit} used (no budget set)", spec.title),
            series: vec![Series {
                name: "used".into(),
                color: left_color,
                points: steps.iter().map(|s| (s.step, used(s))).collect(),
                dashed: false,
            }],
            band: Vec::new(),
            zero: true,
        }
    }
}

/// The picture's height: a row of cells per three charts and the summary.
pub fn height() -> u32 {
    let cells = chart_list().charts.len() + 1;
    let rows = cells.div_ceil(COLUMNS) as u32;
    HEAD_HEIGHT + 2 * MARGIN + rows * ROW_HEIGHT
}

/// A value for people: about four significant digits.
fn number(value: f64) -> String {
    let size = value.abs();
    if !value.is_finite() {
        "-".into()
    } else if size == 0.0 {
        "0".into()
    } else if !(1e-3..1e6).contains(&size) {
        format!("{value:.2e}")
    } else {
        let decimals = (3 - size.log10().floor() as i32).max(0) as usize;
        let text = format!("{value:.decimals$}");
        if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            text
        }
    }
}

/// The PNG of the job's charts.
pub fn render(job: &v1::Job, records: &[v1::StepRecord]) -> anyhow::Result<Vec<u8>> {
    if records.is_empty() {
        bail!(
            "job {} has no finished steps yet (it is {}): plot it once a step has been trained",
            job.id,
            status_name(job.status)
        );
    }
    static FONT_ONCE: Once = Once::new();
    FONT_ONCE.call_once(|| {
        if register_font(FAMILY, FontStyle::Normal, FONT).is_err() {
            tracing::error!("the embedded font does not load");
        }
    });
    let steps: Vec<Step> = records
        .iter()
        .map(|r| Step {
            step: r.step as f64,
            metrics: serde_json::from_str(&r.metrics_json).unwrap_or(Value::Null),
            gpu_used: r.gpu_seconds_used,
            gpu_limit: r.gpu_seconds_limit,
            cpu_used: r.cpu_seconds_used,
            cpu_limit: r.cpu_seconds_limit,
        })
        .collect();
    let height = height();
    let mut pixels = vec![0u8; (WIDTH * height * 3) as usize];
    draw(&mut pixels, job, &steps).map_err(|e| anyhow::anyhow!("cannot draw the plot: {e}"))?;
    let mut png = Vec::new();
    let mut encoder = png::Encoder::new(&mut png, WIDTH, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&pixels)?;
    writer.finish()?;
    Ok(png)
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(pixels: &mut [u8], job: &v1::Job, steps: &[Step]) -> DrawResult {
    let root = BitMapBackend::with_buffer(pixels, (WIDTH, height())).into_drawing_area();
    root.fill(&RGBColor(243, 244, 246))?;
    let (head, body) = root.split_vertically(HEAD_HEIGHT);
    head.fill(&TEXT)?;
    let mut title = format!(
        "{} · {} · step {} of {}",
        job.id,
        status_name(job.status),
        job.step,
        job.total_steps
    );
    if job.name != job.id {
        title = format!("{} ({title})", job.name);
    }
    head.draw_text(
        &title,
        &TextStyle::from((FAMILY, 30).into_font()).color(&WHITE),
        (24, 18),
    )?;
    let body = body.margin(MARGIN, MARGIN, MARGIN, MARGIN);
    let charts = charts(steps);
    let rows = (charts.len() + 1).div_ceil(COLUMNS);
    let cells = body.split_evenly((rows, COLUMNS));
    for (cell, chart) in cells.iter().zip(&charts) {
        draw_chart(cell, chart)?;
    }
    if let (Some(cell), Some(last)) = (cells.get(charts.len()), steps.last()) {
        draw_summary(cell, last)?;
    }
    root.present()?;
    Ok(())
}

/// The y range: the values (with 0 when asked), padded by 5%.
fn y_range(chart: &Chart) -> (f64, f64) {
    let values = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .chain(chart.band.iter().flat_map(|b| [b.1, b.2]));
    let (mut low, mut high) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
        (l.min(v), h.max(v))
    });
    if !low.is_finite() {
        return (0.0, 1.0);
    }
    if chart.zero {
        low = low.min(0.0);
        high = high.max(0.0);
    }
    if high - low <= f64::EPSILON * high.abs().max(1.0) {
        let pad = if high != 0.0 { high.abs() * 0.1 } else { 1.0 };
        return (low - pad, high + pad);
    }
    let pad = (high - low) * 0.05;
    (
        if chart.zero && low >= 0.0 {
            0.0
        } else {
            low - pad
        },
        high + pad,
    )
}

fn draw_chart<DB: DrawingBackend>(
    cell: &DrawingArea<DB, Shift>,
    chart: &Chart,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let cell = cell.margin(6, 6, 6, 6);
    cell.fill(&WHITE)?;
    // The title and, under it, the legend (each line's name and newest value), above the
    // plot so that they never hide a line.
    cell.draw_text(
        &chart.title,
        &TextStyle::from((FAMILY, 21).into_font()).color(&TEXT),
        (18, 12),
    )?;
    let legend = TextStyle::from((FAMILY, 15).into_font()).color(&MUTED);
    let mut x = 18;
    for series in &chart.series {
        let last = series.points.last().map(|p| number(p.1));
        let text = format!("{} {}", series.name, last.unwrap_or_default());
        let segments: &[(i32, i32)] = if series.dashed {
            &[(0, 8), (14, 22)]
        } else {
            &[(0, 22)]
        };
        for &(from, to) in segments {
            cell.draw(&PathElement::new(
                vec![(x + from, 52), (x + to, 52)],
                series.color.stroke_width(3),
            ))?;
        }
        cell.draw_text(&text, &legend, (x + 28, 44))?;
        let (width, _) = cell.estimate_text_size(&text, &legend)?;
        x += 28 + width as i32 + 24;
    }
    let (_, plot) = cell.split_vertically(66);

    let xs = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0));
    let (mut x_low, mut x_high) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
        (l.min(v), h.max(v))
    });
    if !x_low.is_finite() {
        (x_low, x_high) = (0.0, 1.0);
    } else if x_high == x_low {
        (x_low, x_high) = ((x_low - 1.0).max(0.0), x_high + 1.0);
    }
    let (y_low, y_high) = y_range(chart);
    let span = (y_high - y_low).abs().max(f64::MIN_POSITIVE);
    // As many decimals as the ticks (about six of them) need to differ.
    let decimals = (-(span / 6.0).log10().floor()).clamp(0.0, 6.0) as usize;
    let scientific = y_high.abs().max(y_low.abs()) >= 1e6 || span < 1e-5;
    let y_label = move |v: &f64| {
        if scientific {
            format!("{v:.1e}")
        } else {
            format!("{v:.decimals$}")
        }
    };
    // Steps are whole numbers: no label between two of them.
    let x_label = |v: &f64| {
        if (v - v.round()).abs() < 1e-6 {
            format!("{}", v.round() as i64)
        } else {
            String::new()
        }
    };
    let mut context = ChartBuilder::on(&plot)
        .margin_left(10)
        .margin_right(26)
        .margin_top(6)
        .margin_bottom(8)
        .x_label_area_size(42)
        .y_label_area_size(74)
        .build_cartesian_2d(x_low..x_high, y_low..y_high)?;
    context
        .configure_mesh()
        .light_line_style(GRID.mix(0.0))
        .bold_line_style(GRID)
        .axis_style(RGBColor(156, 163, 175))
        .x_labels(7)
        .y_labels(6)
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .label_style((FAMILY, 15).into_font().color(&MUTED))
        .x_desc("step")
        .axis_desc_style((FAMILY, 15).into_font().color(&MUTED))
        .draw()?;
    if chart.series.iter().all(|s| s.points.is_empty()) {
        let (w, h) = plot.dim_in_pixel();
        plot.draw_text(
            "no values recorded",
            &TextStyle::from((FAMILY, 18).into_font()).color(&MUTED),
            (w as i32 / 2 - 80, h as i32 / 2 - 20),
        )?;
        return Ok(());
    }
    if chart.band.len() >= 2 {
        let color = chart.series[0].color;
        let outline: Vec<(f64, f64)> = chart
            .band
            .iter()
            .map(|b| (b.0, b.1))
            .chain(chart.band.iter().rev().map(|b| (b.0, b.2)))
            .collect();
        context.draw_series(std::iter::once(Polygon::new(
            outline,
            color.mix(0.13).filled(),
        )))?;
    }
    for series in &chart.series {
        let style = series.color.stroke_width(3);
        if series.dashed {
            context.draw_series(dashes(&series.points, style))?;
        } else {
            context.draw_series(LineSeries::new(series.points.iter().copied(), style))?;
        }
        if !series.dashed && series.points.len() <= 60 {
            context.draw_series(
                series
                    .points
                    .iter()
                    .map(|&p| Circle::new(p, 3.5, series.color.filled())),
            )?;
        }
    }
    Ok(())
}

/// A dashed straight line from the first of `points` to the last (a reference line such as
/// the budget), as 40 short segments: plotters draws no dashes itself.
fn dashes(points: &[(f64, f64)], style: ShapeStyle) -> Vec<PathElement<(f64, f64)>> {
    const DASHES: usize = 40;
    let (Some(&(x0, y0)), Some(&(x1, y1))) = (points.first(), points.last()) else {
        return Vec::new();
    };
    (0..DASHES)
        .map(|k| {
            let (a, b) = (k as f64 / DASHES as f64, (k as f64 + 0.6) / DASHES as f64);
            PathElement::new(
                vec![
                    (x0 + (x1 - x0) * a, y0 + (y1 - y0) * a),
                    (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b),
                ],
                style,
            )
        })
        .collect()
}

/// The newest step's numbers, in the sixth cell.
fn draw_summary<DB: DrawingBackend>(
    cell: &DrawingArea<DB, Shift>,
    last: &Step,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let cell = cell.margin(6, 6, 6, 6);
    cell.fill(&WHITE)?;
    cell.draw_text(
        &format!("Latest step: {}", last.step),
        &TextStyle::from((FAMILY, 21).into_font()).color(&TEXT),
        (18, 14),
    )?;
    let mut rows: Vec<(String, String)> = chart_list()
        .summary
        .iter()
        .filter_map(|key| Some((key.to_string(), number(last.metric(key)?))))
        .collect();
    for (name, used, limit) in [
        ("GPU-hours used", last.gpu_used, last.gpu_limit),
        ("CPU-hours used", last.cpu_used, last.cpu_limit),
    ] {
        let mut text = number(used / 3600.0);
        if limit > 0.0 {
            text += &format!(" of {}", number(limit / 3600.0));
        }
        rows.push((name.to_string(), text));
    }
    let key = TextStyle::from((FAMILY, 16).into_font()).color(&MUTED);
    let value = TextStyle::from((FAMILY, 16).into_font()).color(&TEXT);
    for (i, (name, text)) in rows.iter().enumerate() {
        let y = 54 + 23 * i as i32;
        cell.draw_text(name, &key, (18, y))?;
        cell.draw_text(text, &value, (230, y))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> v1::Job {
        v1::Job {
            id: "job-7".into(),
            name: "tiny".into(),
            status: v1::JobStatus::Running as i32,
            step: 3,
            total_steps: 10,
            ..Default::default()
        }
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(0.0), "0");
        assert_eq!(number(-11.4985), "-11.5");
        assert_eq!(number(446.2377), "446.2");
        assert_eq!(number(12345.6), "12346");
        assert_eq!(number(0.002155), "0.002155");
        assert_eq!(number(2.5e-5), "2.50e-5");
    }

    #[test]
    fn a_job_without_steps_is_refused_by_name() {
        let error = render(&job(), &[]).unwrap_err().to_string();
        assert!(
            error.contains("job-7") && error.contains("no finished steps"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("nope").join("plot.png");
        let error = check_output(&out).unwrap_err().to_string();
        assert!(
            error.contains(&dir.path().join("nope").display().to_string()),
            "{error}"
        );
        assert!(check_output(&dir.path().join("plot.png")).is_ok());
    }

    #[test]
    fn steps_become_a_png_of_the_promised_size() {
        let records: Vec<v1::StepRecord> = (1..=3)
            .map(|step| v1::StepRecord {
                step,
                time_ms: 1000 * step as i64,
                metrics_json: json!({
                    "reward_mean": -12.0 + step as f64,
                    "reward_std": 4.0,
                    "response_len_mean": 24.0,
                    "approx_kl": 0.001 * step as f64,
                    "kl_to_reference": null,
                    "tokens_per_s": 400.0 + step as f64,
                })
                .to_string(),
                gpu_seconds_used: 60.0 * step as f64,
                gpu_seconds_limit: 3600.0,
                cpu_seconds_used: 0.0,
                cpu_seconds_limit: 0.0,
            })
            .collect();
        let png = render(&job(), &records).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(png));
        let reader = decoder.read_info().unwrap();
        let info = reader.info();
        assert_eq!((info.width, info.height), (WIDTH, height()));
    }

    /// The charts are the list's, in its order; a `val/...` key logged by a step appears in
    /// the validation chart without being named anywhere.
    #[test]
    fn the_charts_follow_the_one_list_and_take_new_validation_keys() {
        let step = |n: f64, metrics: Value| Step {
            step: n,
            metrics,
            gpu_used: 0.0,
            gpu_limit: 0.0,
            cpu_used: 60.0 * n,
            cpu_limit: 0.0,
        };
        let steps = vec![
            step(1.0, json!({"reward_mean": -1.0, "reward_std": 0.5})),
            step(
                2.0,
                json!({"reward_mean": -0.5, "reward_std": 0.5,
                "val/reward_mean": 0.1, "val/gsm8k/accuracy": 0.25}),
            ),
        ];
        let drawn = charts(&steps);
        let list = chart_list();
        assert_eq!(drawn.len(), list.charts.len());
        let validation = list
            .charts
            .iter()
            .position(|c| c.kind == ChartKind::Prefix)
            .expect("the list has a prefix chart");
        let names: Vec<&str> = drawn[validation]
            .series
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["val/gsm8k/accuracy", "val/reward_mean"]);
        assert_eq!(drawn[validation].series[0].points, [(2.0, 0.25)]);
        let reward = &drawn[0];
        assert_eq!(reward.title, list.charts[0].title);
        assert_eq!(reward.band, [(1.0, -1.5, -0.5), (2.0, -1.0, 0.0)]);
        // kl_to_reference is optional and no step has it.
        let kl = list.charts.iter().position(|c| c.id == "kl").unwrap();
        assert_eq!(drawn[kl].series.len(), 1);
    }
}
