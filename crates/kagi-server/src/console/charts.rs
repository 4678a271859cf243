//! Charts drawn on the server as SVG (no script, no inline styles: colours come from classes
//! in `console.css`, so the strict CSP holds). Every chart also carries its numbers as a
//! table for screen readers.

use maud::{html, Markup};

/// Series colours available in `console.css` (`.s0` … `.s7`); more series reuse them.
const PALETTE: usize = 8;

/// A small line of hourly counts, oldest first.
pub fn sparkline(values: &[u64], label: &str) -> Markup {
    let (w, h) = (120.0_f64, 24.0_f64);
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    let n = values.len().max(2) as f64 - 1.0;
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            format!(
                "{:.1},{:.1}",
                i as f64 * w / n,
                h - 2.0 - (*v as f64 / max) * (h - 4.0)
            )
        })
        .collect();
    let total: u64 = values.iter().sum();
    let peak = values.iter().copied().max().unwrap_or(0);
    let text = format!("{label}: {total} uses, at most {peak} in an hour");
    html! {
        svg class="spark" width="120" height="24" viewBox="0 0 120 24" role="img" aria-label=(text) {
            title { (text) }
            polyline points=(points.join(" ")) fill="none" stroke-width="1.5" {}
        }
    }
}

/// One bar of a stacked chart: its label and (series, count) parts.
#[derive(Debug, Clone)]
pub struct Bar {
    /// The x label (a time).
    pub label: String,
    /// Counts by series.
    pub parts: Vec<(String, u64)>,
}

/// A stacked bar chart with a legend; `series` fixes the order and colours.
pub fn stacked_bars(title: &str, bars: &[Bar], series: &[String]) -> Markup {
    let (w, h, pad_l, pad_b) = (640.0_f64, 180.0_f64, 36.0_f64, 18.0_f64);
    let max = bars
        .iter()
        .map(|b| b.parts.iter().map(|p| p.1).sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_w = w - pad_l;
    let plot_h = h - pad_b - 4.0;
    let slot = plot_w / bars.len().max(1) as f64;
    let bw = (slot * 0.8).max(1.0);
    let colour = |s: &str| {
        let i = series.iter().position(|x| x == s).unwrap_or(0) % PALETTE;
        format!("s{i}")
    };
    let label_every = (bars.len() / 6).max(1);
    html! {
        figure class="chart" {
            figcaption { (title) }
            svg width="640" height="180" viewBox="0 0 640 180" role="img" aria-label=(title) {
                line class="axis" x1=(pad_l) y1=(h - pad_b) x2=(w) y2=(h - pad_b) {}
                text class="tick" x="0" y="12" { (max) }
                text class="tick" x="0" y=(h - pad_b) { "0" }
                @for (i, b) in bars.iter().enumerate() {
                    @let x = pad_l + i as f64 * slot + (slot - bw) / 2.0;
                    @let mut y = h - pad_b;
                    @for (s, v) in b.parts.iter().filter(|p| p.1 > 0) {
                        @let bh = *v as f64 / max as f64 * plot_h;
                        @let top = { y -= bh; y };
                        rect class=(colour(s)) x=(format!("{x:.1}")) y=(format!("{top:.1}")) width=(format!("{bw:.1}")) height=(format!("{bh:.1}")) {
                            title { (b.label) " · " (s) ": " (v) }
                        }
                    }
                    @if i % label_every == 0 {
                        text class="tick" x=(format!("{x:.1}")) y=(h - 4.0) { (b.label) }
                    }
                }
            }
            ul class="legend" {
                @for s in series {
                    li { span class=(format!("swatch {}", colour(s))) aria-hidden="true" {} (s) }
                }
            }
            table class="sr-only" {
                caption { (title) }
                thead { tr { th scope="col" { "time" } @for s in series { th scope="col" { (s) } } } }
                tbody {
                    @for b in bars {
                        tr {
                            th scope="row" { (b.label) }
                            @for s in series {
                                td { (b.parts.iter().find(|p| &p.0 == s).map_or(0, |p| p.1)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_scales_to_its_peak_and_says_totals() {
        let s = sparkline(&[0, 2, 4], "24 hours").into_string();
        assert!(s.contains("6 uses, at most 4"), "{s}");
        // The peak touches the top margin, zero the bottom.
        assert!(s.contains("120.0,2.0") && s.contains("0.0,22.0"), "{s}");
    }

    #[test]
    fn stacked_bars_stack_series_and_tabulate_them() {
        let series = vec!["decrypt".to_string(), "generate".to_string()];
        let bars = vec![
            Bar {
                label: "10:00".into(),
                parts: vec![("decrypt".into(), 3), ("generate".into(), 1)],
            },
            Bar {
                label: "11:00".into(),
                parts: vec![],
            },
        ];
        let s = stacked_bars("Uses by operation", &bars, &series).into_string();
        assert_eq!(s.matches("<rect").count(), 2);
        assert!(
            s.contains("class=\"s1\""),
            "generate gets the second colour"
        );
        assert!(s.contains("<td>3</td><td>1</td>"), "{s}");
        assert!(!s.contains("style="), "no inline styles under the CSP");
    }

    #[test]
    fn labels_are_escaped() {
        let bars = vec![Bar {
            label: "<script>".into(),
            parts: vec![("<b>".into(), 1)],
        }];
        let s = stacked_bars("t", &bars, &["<b>".to_string()]).into_string();
        assert!(!s.contains("<script>") && !s.contains("<b>"));
    }
}
