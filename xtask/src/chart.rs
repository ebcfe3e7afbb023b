//! A small SVG line chart, for the curves in `BENCHMARKS.md` that say more
//! than a table (durable rate against writers). Hand-written: one chart
//! type does not justify a plotting dependency in xtask.

use std::fmt::Write as _;

/// One line of the chart: its name and one y value per x.
pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) points: Vec<(f64, f64)>,
}

const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLOURS: &[&str] = &[
    "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// Draws `series` against a linear x axis and a log10 y axis (the values
/// compared here span three orders of magnitude).
pub(crate) fn log_line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> String {
    let points = series.iter().flat_map(|s| s.points.iter());
    let (mut x_min, mut x_max, mut y_min, mut y_max) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x_min = x_min.min(x);
        x_max = x_max.max(x);
        if y > 0.0 {
            y_min = y_min.min(y);
            y_max = y_max.max(y);
        }
    }
    if x_min > x_max || y_min > y_max {
        return String::from("<svg xmlns=\"http://www.w3.org/2000/svg\"/>\n");
    }
    let (decade_lo, decade_hi) = (
        y_min.log10().floor(),
        y_max.log10().ceil().max(y_min.log10().floor() + 1.0),
    );
    let x_span = (x_max - x_min).max(1.0);
    let px = |x: f64| LEFT + (x - x_min) / x_span * (W - LEFT - RIGHT);
    let py = |y: f64| {
        let t = (y.max(f64::MIN_POSITIVE).log10() - decade_lo) / (decade_hi - decade_lo);
        H - BOTTOM - t * (H - TOP - BOTTOM)
    };
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(svg, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">{}</text>",
        W / 2.0,
        escape(title)
    );
    // Axes, decade grid lines and x ticks.
    let _ = writeln!(
        svg,
        "<path d=\"M{LEFT},{TOP} V{} H{}\" stroke=\"black\" fill=\"none\"/>",
        H - BOTTOM,
        W - RIGHT
    );
    let mut decade = decade_lo;
    while decade <= decade_hi {
        let y = py(10f64.powf(decade));
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            si(10f64.powf(decade))
        );
        decade += 1.0;
    }
    let mut xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    for x in xs {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{x}</text>",
            px(x),
            H - BOTTOM + 18.0
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        (LEFT + W - RIGHT) / 2.0,
        H - 10.0,
        escape(x_label)
    );
    let _ = writeln!(
        svg,
        "<text transform=\"translate(18,{}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        (TOP + H - BOTTOM) / 2.0,
        escape(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>",
            path.join(" ")
        );
        for &(x, y) in &s.points {
            let _ = writeln!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>",
                px(x),
                py(y)
            );
        }
        let ly = TOP + 10.0 + i as f64 * 18.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{}</text>",
            W - RIGHT + 10.0,
            W - RIGHT + 30.0,
            W - RIGHT + 36.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn si(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.0}G", v / 1e9),
        v if v >= 1e6 => format!("{:.0}M", v / 1e6),
        v if v >= 1e3 => format!("{:.0}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::{Series, log_line_chart};

    #[test]
    fn draws_every_series_and_point() {
        let series = vec![
            Series {
                name: "naive <a>".into(),
                points: vec![(1.0, 1000.0), (8.0, 1200.0)],
            },
            Series {
                name: "sharded".into(),
                points: vec![(1.0, 3e5), (8.0, 1.4e6)],
            },
        ];
        let svg = log_line_chart("t", "writers", "records/s", &series);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(svg.contains("naive &lt;a&gt;"));
        assert!(
            svg.contains(">1M<") || svg.contains(">10M<"),
            "decade labels: {svg}"
        );
    }

    #[test]
    fn empty_input_is_an_empty_chart() {
        assert!(log_line_chart("t", "x", "y", &[]).contains("<svg"));
    }
}
