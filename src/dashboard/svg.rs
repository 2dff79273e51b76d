//! Charts as server-rendered SVG: pictures that need no script, no chart library and no other
//! origin. Every mark carries its series and value (`data-series`, `data-value`) and a `<title>`
//! the browser shows on hover, so a reader and a test see the same numbers.

use std::fmt::Write;

/// Series colours, in order (colour-blind-safe, after Okabe and Ito).
const PALETTE: [&str; 10] = [
    "#0072b2", "#e69f00", "#009e73", "#d55e00", "#cc79a7", "#56b4e9", "#f0e442", "#000000",
    "#999999", "#882255",
];

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 240.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;

/// One named series of values, one per x position.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub values: Vec<f64>,
}

/// A horizontal reference line (a budget's soft or hard limit).
#[derive(Debug, Clone)]
pub struct Rule {
    pub label: String,
    pub value: f64,
}

/// How values read: the unit appended to axis labels and titles.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    Count,
    PerMinute,
    Millis,
    Dollars,
    Percent,
}

impl Unit {
    pub fn format(self, v: f64) -> String {
        match self {
            Self::Count => compact(v),
            Self::PerMinute => format!("{}/min", compact(v)),
            Self::Millis if v >= 1000.0 => format!("{:.1} s", v / 1000.0),
            Self::Millis => format!("{v:.0} ms"),
            Self::Dollars => dollars(v),
            Self::Percent => format!("{v:.1}%"),
        }
    }
}

/// Dollars with two significant digits below $1 (LLM calls cost fractions of a cent).
fn dollars(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "$0".into()
    } else if a < 1.0 {
        let decimals = (-a.log10()).floor().clamp(0.0, 8.0) as usize + 2;
        format!("${v:.decimals$}")
    } else {
        format!("${}", compact(v))
    }
}

fn compact(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Escapes text for HTML and SVG content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A round axis maximum at or above `max`.
fn nice_max(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * magnitude)
}

fn open(out: &mut String, label: &str) {
    let _ = write!(
        out,
        r#"<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">"#,
        escape(label)
    );
}

/// The y axis with four grid lines, and x labels at about six positions.
fn axes(out: &mut String, y_max: f64, unit: Unit, x_labels: &[String]) {
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let y = y_of(v, y_max);
        let _ = write!(
            out,
            r##"<line class="grid" x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end" font-size="10" fill="#555">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 4.0,
            y + 3.0,
            escape(&unit.format(v))
        );
    }
    let n = x_labels.len();
    let every = n.div_ceil(6).max(1);
    for (i, label) in x_labels.iter().enumerate().step_by(every) {
        let x = x_center(i, n);
        let _ = write!(
            out,
            r##"<text x="{x:.1}" y="{}" text-anchor="middle" font-size="10" fill="#555">{}</text>"##,
            HEIGHT - 8.0,
            escape(label)
        );
    }
}

fn y_of(v: f64, y_max: f64) -> f64 {
    TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - v / y_max)
}

fn x_center(i: usize, n: usize) -> f64 {
    let slot = (WIDTH - LEFT - RIGHT) / n.max(1) as f64;
    LEFT + slot * (i as f64 + 0.5)
}

/// Stacked bars over time: one bar per x position, one segment per series.
pub fn stacked_bars(label: &str, unit: Unit, x_labels: &[String], series: &[Series]) -> String {
    let n = x_labels.len();
    let totals: Vec<f64> = (0..n)
        .map(|i| series.iter().map(|s| value(s, i)).sum())
        .collect();
    let y_max = nice_max(totals.iter().copied().fold(0.0, f64::max));
    let mut out = String::new();
    open(&mut out, label);
    axes(&mut out, y_max, unit, x_labels);
    let slot = (WIDTH - LEFT - RIGHT) / n.max(1) as f64;
    let width = (slot * 0.8).max(1.0);
    for (i, x_label) in x_labels.iter().enumerate() {
        let mut base = 0.0;
        for (k, s) in series.iter().enumerate() {
            let v = value(s, i);
            if v <= 0.0 {
                continue;
            }
            let (y_top, y_bottom) = (y_of(base + v, y_max), y_of(base, y_max));
            let _ = write!(
                out,
                r#"<rect class="mark" data-series="{name}" data-x="{x}" data-value="{v}" x="{:.1}" y="{y_top:.1}" width="{width:.1}" height="{:.1}" fill="{}"><title>{name} {x}: {}</title></rect>"#,
                x_center(i, n) - width / 2.0,
                (y_bottom - y_top).max(0.5),
                PALETTE[k % PALETTE.len()],
                escape(&unit.format(v)),
                name = escape(&s.name),
                x = escape(x_label),
            );
            base += v;
        }
    }
    out.push_str("</svg>");
    out + &legend(series)
}

/// Lines over time, with optional horizontal rules (limits).
pub fn lines(
    label: &str,
    unit: Unit,
    x_labels: &[String],
    series: &[Series],
    rules: &[Rule],
) -> String {
    let n = x_labels.len();
    let highest = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .chain(rules.iter().map(|r| r.value))
        .fold(0.0, f64::max);
    let y_max = nice_max(highest);
    let mut out = String::new();
    open(&mut out, label);
    axes(&mut out, y_max, unit, x_labels);
    for rule in rules {
        let y = y_of(rule.value, y_max);
        let _ = write!(
            out,
            r##"<line class="rule" data-series="{name}" data-value="{}" x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#d55e00" stroke-dasharray="6 4"/><text x="{}" y="{:.1}" text-anchor="end" font-size="10" fill="#d55e00">{name}</text>"##,
            rule.value,
            WIDTH - RIGHT,
            WIDTH - RIGHT,
            y - 3.0,
            name = escape(&rule.label),
        );
    }
    for (k, s) in series.iter().enumerate() {
        let colour = PALETTE[k % PALETTE.len()];
        let points: Vec<String> = (0..n)
            .map(|i| format!("{:.1},{:.1}", x_center(i, n), y_of(value(s, i), y_max)))
            .collect();
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        for (i, x_label) in x_labels.iter().enumerate() {
            let v = value(s, i);
            let _ = write!(
                out,
                r#"<circle class="mark" data-series="{name}" data-x="{x}" data-value="{v}" cx="{:.1}" cy="{:.1}" r="2.5" fill="{colour}"><title>{name} {x}: {}</title></circle>"#,
                x_center(i, n),
                y_of(v, y_max),
                escape(&unit.format(v)),
                name = escape(&s.name),
                x = escape(x_label),
            );
        }
    }
    out.push_str("</svg>");
    out + &legend(series)
}

/// Horizontal bars, one row per category, one bar per series within it.
pub fn bars(label: &str, unit: Unit, categories: &[String], series: &[Series]) -> String {
    let row = 18.0 * series.len().max(1) as f64 + 10.0;
    let height = TOP + row * categories.len().max(1) as f64 + 8.0;
    let left = 180.0;
    let highest = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .fold(0.0, f64::max);
    let x_max = nice_max(highest);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">"#,
        escape(label)
    );
    let span = WIDTH - left - 90.0;
    for (c, category) in categories.iter().enumerate() {
        let y0 = TOP + row * c as f64;
        let _ = write!(
            out,
            r##"<text x="{}" y="{:.1}" text-anchor="end" font-size="11" fill="#222">{}</text>"##,
            left - 6.0,
            y0 + row / 2.0,
            escape(category)
        );
        for (k, s) in series.iter().enumerate() {
            let v = value(s, c);
            let y = y0 + 18.0 * k as f64;
            let w = (span * v / x_max).max(if v > 0.0 { 1.0 } else { 0.0 });
            let _ = write!(
                out,
                r##"<rect class="mark" data-series="{name}" data-x="{cat}" data-value="{v}" x="{left}" y="{y:.1}" width="{w:.1}" height="14" fill="{}"><title>{cat} {name}: {text}</title></rect><text x="{:.1}" y="{:.1}" font-size="10" fill="#333">{text}</text>"##,
                PALETTE[k % PALETTE.len()],
                left + w + 4.0,
                y + 11.0,
                name = escape(&s.name),
                cat = escape(category),
                text = escape(&unit.format(v)),
            );
        }
    }
    out.push_str("</svg>");
    out + &legend(series)
}

fn value(s: &Series, i: usize) -> f64 {
    s.values
        .get(i)
        .copied()
        .filter(|v| v.is_finite())
        .unwrap_or(0.0)
}

fn legend(series: &[Series]) -> String {
    let mut out = String::from(r#"<ul class="legend">"#);
    for (k, s) in series.iter().enumerate() {
        let _ = write!(
            out,
            r#"<li><svg width="10" height="10" aria-hidden="true"><rect width="10" height="10" fill="{}"/></svg> {}</li>"#,
            PALETTE[k % PALETTE.len()],
            escape(&s.name)
        );
    }
    out.push_str("</ul>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_maxima_are_round() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(120.0), 200.0);
        assert_eq!(nice_max(2.4), 2.5);
    }

    #[test]
    fn marks_carry_their_values_and_names_are_escaped() {
        let series = [Series {
            name: "<b>&".into(),
            values: vec![1.0, 0.0, 3.0],
        }];
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let svg = stacked_bars("t", Unit::Count, &labels, &series);
        assert_eq!(svg.matches(r#"class="mark""#).count(), 2);
        assert!(svg.contains(r#"data-value="3""#));
        assert!(svg.contains("&lt;b&gt;&amp;"));
        assert!(!svg.contains("<b>"));
    }

    #[test]
    fn units_read_as_people_write_them() {
        assert_eq!(Unit::Millis.format(1500.0), "1.5 s");
        assert_eq!(Unit::Dollars.format(0.0012), "$0.0012");
        assert_eq!(Unit::Dollars.format(0.000123), "$0.00012");
        assert_eq!(Unit::Dollars.format(0.5), "$0.50");
        assert_eq!(Unit::Dollars.format(1234.0), "$1234");
        assert_eq!(Unit::Count.format(12_345.0), "12.3k");
        assert_eq!(Unit::Percent.format(12.345), "12.3%");
    }
}
