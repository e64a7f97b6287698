//! `sensehat-dashboard render`: one node's chart of one field as a PNG or SVG file, drawn with
//! `plotters` from the same buckets the page shows: the average as a line, the min/max band
//! where a point stands for several readings, gaps left open, motion as marks on the time axis.
//!
//! Text uses a font built into the binary (Ubuntu Light, from `epaint_default_fonts`) through
//! plotters' `ab_glyph` feature, so nothing needs fontconfig or system fonts. PNG pixels are
//! encoded with the `png` crate the agent already uses.

use std::ops::Range;
use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::config::{Config, RenderArgs};
use super::query::{iso, Field, Window, WindowError};
use super::store::{Mark, Point, ReadError, Store};
use crate::mongo::MongoError;

/// The line colour of the average.
const LINE: RGBColor = RGBColor(0x1f, 0x6f, 0xb4);
/// The colour of motion marks.
const MOTION: RGBColor = RGBColor(0xd6, 0x27, 0x28);

/// Everything a chart shows.
#[derive(Debug, Clone)]
pub struct Chart {
    /// The node.
    pub node: String,
    /// The field.
    pub field: Field,
    /// The window drawn.
    pub window: Window,
    /// Bucket width, milliseconds.
    pub bucket_ms: i64,
    /// The buckets with readings, in time order.
    pub points: Vec<Point>,
    /// The buckets with motion.
    pub marks: Vec<Mark>,
}

/// Why no chart was written.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A bad `--to` or window.
    #[error("{0}")]
    Window(#[from] WindowError),
    /// The node has no readings at all.
    #[error("no readings from a node named {0:?}")]
    UnknownNode(String),
    /// The database failed.
    #[error("{0}")]
    Mongo(#[from] MongoError),
    /// A read failed, or took longer than `--query-timeout`.
    #[error("{0}")]
    Read(#[from] ReadError),
    /// Drawing or writing the file failed.
    #[error("cannot write {path}: {message}")]
    Write {
        /// The output file.
        path: String,
        /// Why.
        message: String,
    },
}

/// Read the chart's buckets from the database and write the file; returns what was drawn.
pub async fn render(config: &Config, args: &RenderArgs) -> Result<Chart, RenderError> {
    let to_ms = match &args.to {
        Some(t) => super::query::parse_time("to", t)?,
        None => crate::clock::now_ms(),
    };
    let window = Window::new(to_ms - args.window.as_millis() as i64, to_ms)?;
    let store = Store::new(config).await?;
    if !store.node_exists(&args.node).await? {
        return Err(RenderError::UnknownNode(args.node.clone()));
    }
    let bucket_ms = window.bucket_ms();
    let chart = Chart {
        node: args.node.clone(),
        field: args.field,
        window,
        bucket_ms,
        points: store
            .series(&args.node, &window, args.field, bucket_ms)
            .await?,
        marks: store.motion(&args.node, &window, bucket_ms).await?,
    };
    write(&chart, &args.out, (args.width, args.height))?;
    Ok(chart)
}

/// Draw `chart` into `out`: SVG for a `.svg` name, else PNG.
pub fn write(chart: &Chart, out: &Path, size: (u32, u32)) -> Result<(), RenderError> {
    let failed = |message: String| RenderError::Write {
        path: out.display().to_string(),
        message,
    };
    register_font();
    let is_svg = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    if is_svg {
        let mut text = String::new();
        draw(
            SVGBackend::with_string(&mut text, size).into_drawing_area(),
            chart,
        )
        .map_err(|e| failed(e.to_string()))?;
        return std::fs::write(out, text).map_err(|e| failed(e.to_string()));
    }
    let mut rgb = vec![0u8; size.0 as usize * size.1 as usize * 3];
    draw(
        BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area(),
        chart,
    )
    .map_err(|e| failed(e.to_string()))?;
    let png = encode_png(&rgb, size).map_err(|e| failed(e.to_string()))?;
    std::fs::write(out, png).map_err(|e| failed(e.to_string()))
}

/// RGB pixels as a PNG file's bytes.
fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(out)
}

/// The built-in font under the name plotters' text styles ask for.
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is a constant of a crate; it always parses.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// The chart on any plotters backend.
fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, chart: &Chart) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let w = chart.window;
    // Every time on the chart, the axis's too, is in UTC: the title says so.
    let title = format!(
        "{} {} ({}), {} to {} UTC",
        chart.node,
        chart.field.path(),
        chart.field.unit(),
        minutes(&iso(w.from_ms)),
        minutes(&iso(w.to_ms))
    );
    let y = y_range(&chart.points);
    let mut ctx = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(60)
        .build_cartesian_2d(w.from_ms..w.to_ms, y.clone())?;
    let span = w.to_ms - w.from_ms;
    let x_fmt = move |t: &i64| time_label(*t, span);
    let y_fmt = |v: &f64| format!("{v:.2}");
    ctx.configure_mesh()
        .x_labels(8)
        .y_labels(6)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style(("sans-serif", 13))
        .light_line_style(RGBColor(0xee, 0xee, 0xee))
        .draw()?;
    if chart.points.is_empty() {
        root.draw(&Text::new(
            "no readings in this window",
            (80, 60),
            ("sans-serif", 16).into_font().color(&BLACK),
        ))?;
    }
    for run in runs(&chart.points, chart.bucket_ms) {
        let mid = |p: &Point| p.t_ms + chart.bucket_ms / 2;
        if run.iter().any(|p| p.count > 1) {
            let band: Vec<(i64, f64)> = run
                .iter()
                .map(|p| (mid(p), p.max))
                .chain(run.iter().rev().map(|p| (mid(p), p.min)))
                .collect();
            ctx.draw_series(std::iter::once(Polygon::new(band, LINE.mix(0.18).filled())))?;
        }
        if run.len() == 1 {
            ctx.draw_series(
                run.iter()
                    .map(|p| Circle::new((mid(p), p.avg), 2, LINE.filled())),
            )?;
        } else {
            ctx.draw_series(LineSeries::new(
                run.iter().map(|p| (mid(p), p.avg)),
                LINE.stroke_width(2),
            ))?;
        }
    }
    let mark_h = (y.end - y.start) * 0.04;
    ctx.draw_series(chart.marks.iter().map(|m| {
        let x = m.t_ms + chart.bucket_ms / 2;
        PathElement::new(
            vec![(x, y.start), (x, y.start + mark_h)],
            MOTION.stroke_width(2),
        )
    }))?;
    root.present()
}

/// Runs of adjacent buckets: a missing bucket is a gap, never bridged by a line.
pub fn runs(points: &[Point], bucket_ms: i64) -> Vec<&[Point]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=points.len() {
        if i == points.len() || points[i].t_ms - points[i - 1].t_ms > bucket_ms {
            if i > start {
                out.push(&points[start..i]);
            }
            start = i;
        }
    }
    out
}

/// The value axis: every min and max, with a margin; a flat or empty series gets a unit range.
fn y_range(points: &[Point]) -> Range<f64> {
    let lo = points.iter().map(|p| p.min).fold(f64::INFINITY, f64::min);
    let hi = points
        .iter()
        .map(|p| p.max)
        .fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.08).max(0.05);
    (lo - pad)..(hi + pad)
}

/// `2026-12-04T10:00` of an [`iso`] time; all of it should that be shorter (the milliseconds
/// `iso` gives for a time beyond what it can print).
fn minutes(iso: &str) -> &str {
    iso.get(..16).unwrap_or(iso)
}

/// A time-axis label: the clock time within two days, the date and time beyond.
fn time_label(t_ms: i64, span_ms: i64) -> String {
    let s = iso(t_ms);
    match (s.get(5..10), s.get(11..16)) {
        (_, Some(clock)) if span_ms <= 2 * 86_400_000 => clock.to_owned(),
        (Some(day), Some(clock)) => format!("{day} {clock}"),
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(t_ms: i64) -> Point {
        Point {
            t_ms,
            avg: 1.0,
            min: 0.0,
            max: 2.0,
            count: 3,
        }
    }

    // A missing bucket splits the line; adjacent ones stay joined.
    #[test]
    fn gaps_split_runs() {
        let points = [pt(0), pt(10), pt(20), pt(50), pt(70), pt(80)];
        let lens: Vec<usize> = runs(&points, 10).iter().map(|r| r.len()).collect();
        assert_eq!(lens, [3, 1, 2]);
        assert!(runs(&[], 10).is_empty());
    }

    // Labels cut from what [`iso`] gives for a time it cannot print as a date (its
    // milliseconds, 15 digits or more) are not a panic; ordinary ones are the clock time, or
    // the day and time.
    #[test]
    fn labels_of_any_time() {
        assert_eq!(time_label(0, 1_000), "00:00");
        assert_eq!(time_label(0, 7 * 86_400_000), "01-01 00:00");
        assert_eq!(minutes(&iso(0)), "1970-01-01T00:00");
        assert_eq!(minutes("253402387139000"), "253402387139000");
        let far = i64::MAX / 2;
        assert_eq!(iso(far), far.to_string());
        assert!(!time_label(far, 1_000).is_empty());
    }

    // A chart with a gap and motion is drawn to PNG without any system font.
    #[test]
    fn draws_png_and_svg() {
        let dir = tempfile::tempdir().unwrap();
        let chart = Chart {
            node: "n".into(),
            field: Field::Humidity,
            window: Window::new(0, 100_000).unwrap(),
            bucket_ms: 10_000,
            points: vec![pt(0), pt(10_000), pt(40_000)],
            marks: vec![Mark {
                t_ms: 10_000,
                count: 2,
            }],
        };
        write(&chart, &dir.path().join("c.png"), (300, 200)).unwrap();
        let png = std::fs::read(dir.path().join("c.png")).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        write(&chart, &dir.path().join("c.svg"), (300, 200)).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("c.svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("humidity"));
    }
}
