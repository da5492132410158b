//! The `.hgrm` files of a run folder: HdrHistogram's percentile-distribution text, which
//! HdrHistogram's own online plotter loads.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// HdrHistogram's percentile distribution text (`outputPercentileDistribution`, 5 ticks
/// per half distance), values divided by `scale` (1000: microseconds → milliseconds).
pub fn hgrm(h: &Histogram<u64>, scale: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:>12} {:>14} {:>10} {:>14}\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let value = v.value_iterated_to() as f64 / scale;
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10} {:14.2}", 1.0 / (1.0 - q));
        } else {
            let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10}");
        }
    }
    let _ = writeln!(out, "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]", h.mean() / scale, h.stdev() / scale);
    let _ = writeln!(out, "#[Max     = {:12.3}, Total count    = {:12}]", h.max() as f64 / scale, h.len());
    let sub_buckets = (2.0 * 10f64.powi(i32::from(h.sigfig()))).log2().ceil().exp2() as u64;
    let _ = writeln!(out, "#[Buckets = {:12}, SubBuckets     = {:12}]", h.buckets(), sub_buckets);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::new_hist;

    #[test]
    fn hgrm_has_the_hdrhistogram_layout() {
        let mut h = new_hist();
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        let text = hgrm(&h, 1000.0);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
        );
        assert_eq!(lines[1], "");
        let first: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(first, ["0.001", "0.000000000000", "1", "1.00"]);
        let last_data = lines.iter().rev().find(|l| !l.starts_with('#')).unwrap();
        assert!(last_data.contains("1.000000000000") && last_data.trim_end().ends_with("1000"), "{last_data}");
        assert!(text.contains("#[Max     =        1.000, Total count    =         1000]"), "{text}");
        assert!(text.contains("SubBuckets     =         2048]"));
    }
}
