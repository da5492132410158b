//! The latency-by-percentile plot, drawn as HdrHistogram's plotter draws it: x is
//! `1 / (1 − percentile)` on a log scale, labelled 0%, 90%, 99%, 99.9%…, y is latency in
//! milliseconds; one curve for corrected latency, one for uncorrected.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::error::BenchError;

/// One curve: a histogram (microseconds) and its legend.
pub struct Curve<'a> {
    /// Legend label.
    pub label: &'a str,
    /// Latencies in microseconds.
    pub hist: &'a Histogram<u64>,
    /// Line colour.
    pub color: RGBColor,
}

/// `(1/(1-p), ms)` points of a histogram's percentile distribution, capped at `x_max`.
pub fn points(hist: &Histogram<u64>, x_max: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for v in hist.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let x = if q >= 1.0 { x_max } else { (1.0 / (1.0 - q)).min(x_max) };
        out.push((x, v.value_iterated_to() as f64 / 1000.0));
        if q >= 1.0 {
            break;
        }
    }
    out
}

/// Axis label for `x = 1/(1-p)` at a power of ten: 1 → 0%, 10 → 90%, 1000 → 99.9%.
pub fn percentile_label(x: f64) -> String {
    let nines = x.log10().round() as i32;
    match nines {
        i32::MIN..=0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        n => format!("99.{}%", "9".repeat((n - 2) as usize)),
    }
}

/// Draws `curves` into an SVG file at `path`.
pub fn latency_svg(path: &Path, title: &str, curves: &[Curve<'_>]) -> Result<(), BenchError> {
    let err = |e: &dyn std::fmt::Display| BenchError::Plot(e.to_string());
    let count = curves.iter().map(|c| c.hist.len()).max().unwrap_or(1).max(10);
    let decades = ((count as f64).log10().ceil() as u32).clamp(1, 7);
    let x_max = 10f64.powi(decades as i32);
    let y_max = curves.iter().map(|c| c.hist.max() as f64 / 1000.0).fold(0.0, f64::max).max(0.01) * 1.1;
    let root = SVGBackend::new(path, (1000, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let keys: Vec<f64> = (0..=decades).map(|d| 10f64.powi(d as i32)).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .margin_right(60)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d((1f64..x_max).log_scale().with_key_points(keys), 0f64..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .draw()
        .map_err(|e| err(&e))?;
    for c in curves {
        let color = c.color;
        chart
            .draw_series(LineSeries::new(points(c.hist, x_max), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(format!("{} (n={}, max {:.2} ms)", c.label, c.hist.len(), c.hist.max() as f64 / 1000.0))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::new_hist;

    #[test]
    fn labels_read_as_percentiles() {
        let labels: Vec<String> = [1.0, 10.0, 100.0, 1000.0, 10000.0].iter().map(|&x| percentile_label(x)).collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%"]);
    }

    #[test]
    fn points_rise_with_the_percentile_and_end_at_the_max() {
        let mut h = new_hist();
        for v in 1..=1000u64 {
            h.record(v * 10).unwrap();
        }
        let pts = points(&h, 1e4);
        assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        let last = pts.last().unwrap();
        assert_eq!(last.0, 1e4);
        assert!((last.1 - 10.0).abs() < 0.02, "{last:?}");
    }

    #[test]
    fn draws_an_svg_with_both_curves() {
        let mut a = new_hist();
        let mut b = new_hist();
        for v in 1..=500u64 {
            a.record(v * 7).unwrap();
            b.record(v * 5).unwrap();
        }
        let dir = std::env::temp_dir().join(format!("bench-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("latency.svg");
        let curves =
            [Curve { label: "corrected", hist: &a, color: RED }, Curve { label: "uncorrected", hist: &b, color: BLUE }];
        latency_svg(&path, "test", &curves).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("<svg") && svg.contains("99.9%") && svg.contains("uncorrected"));
        assert!(svg.matches("<polyline").count() >= 2, "two curves");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
