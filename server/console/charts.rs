//! Charts for people, drawn on the server as inline SVG: no script and no asset from
//! elsewhere, so a chart shows without JavaScript and under the console's content security
//! policy, and every label (a status, a kind) is a text node maud escapes.
//!
//! Two shapes serve the flow page: horizontal bars (how many are where) and lines over days
//! on a logarithmic time axis (durations from seconds to weeks share one chart).

use maud::{Markup, html};

/// Width of every chart, in SVG units (it scales to the page's width).
const WIDTH: f64 = 640.0;
/// Room on the left of the bars for their labels.
const LABEL: f64 = 230.0;
/// Height of one bar's row.
const ROW: f64 = 24.0;

/// One bar: its label, its value, and the CSS class that colours it (`phase-failed`, ...).
pub(crate) struct Bar {
    pub(crate) label: String,
    pub(crate) value: u64,
    pub(crate) class: &'static str,
}

/// Horizontal bars, the longest across the chart; each bar says its value.
pub(crate) fn bars(title: &str, bars: &[Bar]) -> Markup {
    let most = bars.iter().map(|b| b.value).max().unwrap_or(0).max(1) as f64;
    let height = ROW * bars.len().max(1) as f64 + 4.0;
    let span = WIDTH - LABEL - 60.0;
    html! {
        svg.chart.bars role="img" aria-label=(title) viewBox={"0 0 " (WIDTH) " " (height)}
            width="100%" preserveAspectRatio="xMinYMin meet" {
            title { (title) }
            @for (i, bar) in bars.iter().enumerate() {
                @let y = ROW * i as f64 + 2.0;
                @let width = (bar.value as f64 / most * span).max(if bar.value > 0 { 2.0 } else { 0.0 });
                g.bar data-label=(bar.label) data-value=(bar.value) {
                    text.label x=(LABEL - 8.0) y=(y + ROW * 0.65) text-anchor="end" { (bar.label) }
                    rect class=(bar.class) x=(LABEL) y=(y + 3.0) width=(format!("{width:.1}")) height=(ROW - 6.0) rx="3" {}
                    text.value x=(LABEL + width + 6.0) y=(y + ROW * 0.65) { (bar.value) }
                }
            }
        }
    }
}

/// One line of a chart over days: its name (the legend), its CSS class, and its points,
/// (day, seconds), days ascending.
pub(crate) struct Line {
    pub(crate) name: String,
    pub(crate) class: &'static str,
    pub(crate) points: Vec<(i32, f64)>,
}

/// Durations by day, from `first_day` to `last_day` (UTC days since 1970), on a logarithmic
/// axis whose ticks are durations people say (1 min, 1 h, 1 d...).
pub(crate) fn lines_over_days(
    title: &str,
    first_day: i32,
    last_day: i32,
    lines: &[Line],
) -> Markup {
    const HEIGHT: f64 = 160.0;
    const LEFT: f64 = 64.0;
    const TOP: f64 = 10.0;
    const BOTTOM: f64 = 30.0;
    let values = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1.max(0.5)));
    let (low, high) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    // At least a decade, so that durations close together still get ticks around them.
    let (low, high) = if low.is_finite() {
        let (low, high) = (low.log10(), high.log10());
        let room = ((1.0 - (high - low)) / 2.0).max(0.15);
        (low - room, high + room)
    } else {
        (0.0, 1.0)
    };
    let days = f64::from((last_day - first_day).max(1));
    let x = |day: i32| LEFT + f64::from(day - first_day) / days * (WIDTH - LEFT - 16.0);
    let y = |seconds: f64| {
        let at = (seconds.max(0.5).log10() - low) / (high - low).max(0.1);
        TOP + (1.0 - at) * (HEIGHT - TOP - BOTTOM)
    };
    let ticks: Vec<(f64, &str)> = [
        (1.0, "1s"),
        (5.0, "5s"),
        (15.0, "15s"),
        (60.0, "1m"),
        (300.0, "5m"),
        (900.0, "15m"),
        (1800.0, "30m"),
        (3600.0, "1h"),
        (3.0 * 3600.0, "3h"),
        (12.0 * 3600.0, "12h"),
        (86_400.0, "1d"),
        (3.0 * 86_400.0, "3d"),
        (7.0 * 86_400.0, "1w"),
        (30.0 * 86_400.0, "30d"),
    ]
    .into_iter()
    .filter(|(s, _): &(f64, &str)| (low..=high).contains(&s.log10()))
    .collect();
    let day_text = |day: i32| {
        chrono::DateTime::from_timestamp(i64::from(day) * 86_400, 0)
            .map(|d| d.format("%m-%d").to_string())
            .unwrap_or_default()
    };
    html! {
        figure.chart {
            svg.chart.lines role="img" aria-label=(title) viewBox={"0 0 " (WIDTH) " " (HEIGHT)}
                width="100%" preserveAspectRatio="xMinYMin meet" {
                title { (title) }
                @for (seconds, label) in &ticks {
                    line.grid x1=(LEFT) x2=(WIDTH - 16.0) y1=(format!("{:.1}", y(*seconds))) y2=(format!("{:.1}", y(*seconds))) {}
                    text.tick x=(LEFT - 6.0) y=(format!("{:.1}", y(*seconds) + 4.0)) text-anchor="end" { (label) }
                }
                text.tick x=(LEFT) y=(HEIGHT - 8.0) { (day_text(first_day)) }
                text.tick x=(WIDTH - 16.0) y=(HEIGHT - 8.0) text-anchor="end" { (day_text(last_day)) }
                @for line in lines {
                    @let points: Vec<String> = line.points.iter().map(|(d, s)| format!("{:.1},{:.1}", x(*d), y(*s))).collect();
                    g class={"series " (line.class)} data-name=(line.name) {
                        @if points.len() > 1 { polyline points=(points.join(" ")) {} }
                        @for (day, seconds) in &line.points {
                            circle cx=(format!("{:.1}", x(*day))) cy=(format!("{:.1}", y(*seconds))) r="3" {
                                title { (line.name) " " (day_text(*day)) ": " (crate::console::pages::span(*seconds)) }
                            }
                        }
                    }
                }
            }
            figcaption {
                @for line in lines { span class={"legend " (line.class)} { (line.name) } }
            }
        }
    }
}
