//! SVG charts of a run's figures, one file per chart, drawn with `plotters`'s SVG
//! backend (no font files: the SVG names a generic font and the viewer lays it out).
//!
//! Two shapes cover every scenario: horizontal bars (one per contender: throughput,
//! or a latency's median with its min–max range as a whisker) and lines (peak RSS
//! against the number of items).

use std::path::Path;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::BoxError;

/// One bar: a contender's name, its value and, optionally, the range it spanned.
#[derive(Debug, Clone)]
pub struct Bar {
    pub name: String,
    pub value: f64,
    pub range: Option<(f64, f64)>,
}

/// One line of a line chart: a name and its points (x, y).
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// What a chart shows.
#[derive(Debug, Clone)]
pub enum Plot {
    /// Horizontal bars, in the order given, against `unit` on the x axis.
    Bars { unit: String, bars: Vec<Bar> },
    /// Lines over a logarithmic x axis (`x_desc`) and a linear y axis (`y_desc`).
    Lines {
        x_desc: String,
        y_desc: String,
        series: Vec<Series>,
    },
}

/// A chart to write: the file's stem (`<stem>.svg`), its title and what it shows.
#[derive(Debug, Clone)]
pub struct Chart {
    pub stem: String,
    pub title: String,
    pub plot: Plot,
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

type DrawResult<T> = Result<T, BoxError>;

fn plot_err<E: std::fmt::Debug>(e: E) -> BoxError {
    format!("could not draw the chart: {e:?}").into()
}

impl Chart {
    /// The chart as an SVG document.
    pub fn render(&self) -> DrawResult<String> {
        let mut svg = String::new();
        match &self.plot {
            Plot::Bars { unit, bars } => self.bars(&mut svg, unit, bars)?,
            Plot::Lines {
                x_desc,
                y_desc,
                series,
            } => self.lines(&mut svg, x_desc, y_desc, series)?,
        }
        Ok(svg)
    }

    /// Render into `dir/<stem>.svg` (creating `dir`); returns the path written.
    pub fn write(&self, dir: &Path) -> DrawResult<std::path::PathBuf> {
        let svg = self.render()?;
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("could not create {}: {e}", dir.display()))?;
        let path = dir.join(format!("{}.svg", self.stem));
        std::fs::write(&path, svg)
            .map_err(|e| format!("could not write {}: {e}", path.display()))?;
        Ok(path)
    }

    fn bars(&self, svg: &mut String, unit: &str, bars: &[Bar]) -> DrawResult<()> {
        let bars: Vec<&Bar> = bars.iter().filter(|b| b.value.is_finite()).collect();
        let n = bars.len().max(1);
        let height = 90 + 42 * n as u32;
        let top = bars
            .iter()
            .map(|b| b.range.map_or(b.value, |(_, hi)| hi.max(b.value)))
            .fold(0.0f64, f64::max);
        let top = if top > 0.0 { top * 1.12 } else { 1.0 };
        let root = SVGBackend::with_string(svg, (900, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let names: Vec<String> = bars.iter().map(|b| b.name.clone()).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(330)
            .build_cartesian_2d(0f64..top, (0..n).into_segmented())
            .map_err(plot_err)?;
        let label = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .max_light_lines(1)
            .y_labels(n)
            .y_label_formatter(&label)
            .x_desc(unit)
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, b)| {
                let mut r = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(i)),
                        (b.value, SegmentValue::Exact(i + 1)),
                    ],
                    PALETTE[i % PALETTE.len()].filled(),
                );
                r.set_margin(6, 6, 0, 0);
                r
            }))
            .map_err(plot_err)?;
        chart
            .draw_series(bars.iter().enumerate().filter_map(|(i, b)| {
                b.range.map(|(lo, hi)| {
                    PathElement::new(
                        vec![
                            (lo, SegmentValue::CenterOf(i)),
                            (hi, SegmentValue::CenterOf(i)),
                        ],
                        BLACK.stroke_width(2),
                    )
                })
            }))
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
        Ok(())
    }

    fn lines(
        &self,
        svg: &mut String,
        x_desc: &str,
        y_desc: &str,
        series: &[Series],
    ) -> DrawResult<()> {
        let points = series.iter().flat_map(|s| s.points.iter().copied());
        let (mut x_lo, mut x_hi, mut y_hi) = (f64::INFINITY, 0.0f64, 0.0f64);
        for (x, y) in points {
            x_lo = x_lo.min(x);
            x_hi = x_hi.max(x);
            y_hi = y_hi.max(y);
        }
        if !(x_lo.is_finite() && x_lo > 0.0) {
            x_lo = 1.0;
        }
        if x_hi <= x_lo {
            x_hi = x_lo * 10.0;
        }
        let y_hi = if y_hi > 0.0 { y_hi * 1.2 } else { 1.0 };
        let root = SVGBackend::with_string(svg, (900, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((x_lo / 2.0..x_hi * 2.0).log_scale(), 0f64..y_hi)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .max_light_lines(1)
            .x_label_formatter(&|x| crate::report::count(x.round() as u64))
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(plot_err)?;
        for (i, s) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(plot_err)?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(plot_err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal XML well-formedness check: every tag closes in order, attributes
    /// are quoted, and there is exactly one root element (`<svg>`).
    fn well_formed(doc: &str) -> Result<(), String> {
        let mut stack: Vec<String> = Vec::new();
        let mut roots = 0;
        let mut rest = doc.trim();
        if let Some(after) = rest.strip_prefix("<?xml") {
            rest = &after[after.find("?>").ok_or("unterminated XML declaration")? + 2..];
        }
        while let Some(open) = rest.find('<') {
            let text = &rest[..open];
            if stack.is_empty() && !text.trim().is_empty() {
                return Err(format!("text outside the root element: {text:?}"));
            }
            if text.contains('>') {
                return Err(format!("a stray '>' in text: {text:?}"));
            }
            let close = rest[open..].find('>').ok_or("an unterminated tag")? + open;
            let tag = &rest[open + 1..close];
            rest = &rest[close + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                let top = stack.pop().ok_or(format!("</{name}> closes nothing"))?;
                if top != name.trim() {
                    return Err(format!("<{top}> closed by </{name}>"));
                }
                continue;
            }
            if tag.starts_with('!') {
                continue;
            }
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name = body.split_whitespace().next().ok_or("an empty tag")?;
            if body.matches('"').count() % 2 != 0 {
                return Err(format!("unbalanced quotes in <{body}>"));
            }
            if stack.is_empty() {
                roots += 1;
            }
            if !self_closing {
                stack.push(name.to_string());
            }
        }
        if !rest.trim().is_empty() {
            return Err(format!("trailing text: {rest:?}"));
        }
        if let Some(open) = stack.pop() {
            return Err(format!("<{open}> never closed"));
        }
        if roots != 1 {
            return Err(format!("{roots} root elements"));
        }
        if !doc.contains("<svg") {
            return Err("no <svg> element".into());
        }
        Ok(())
    }

    #[test]
    fn the_checker_rejects_broken_documents() {
        assert!(well_formed("<svg><g></svg>").is_err());
        assert!(well_formed("<svg></svg><svg></svg>").is_err());
        assert!(well_formed("<svg a=\"1></svg>").is_err());
        assert!(well_formed("<svg><text>a</text></svg>").is_ok());
    }

    #[test]
    fn a_bar_chart_is_well_formed_and_names_its_contenders() {
        let chart = Chart {
            stem: "double-throughput".into(),
            title: "double over 10,000,000 i64: throughput".into(),
            plot: Plot::Bars {
                unit: "million items/s".into(),
                bars: vec![
                    Bar {
                        name: "pstream ProcessPool::map".into(),
                        value: 41.5,
                        range: Some((39.0, 43.0)),
                    },
                    Bar {
                        name: "reference pool".into(),
                        value: 33.2,
                        range: None,
                    },
                    Bar {
                        name: "Python Pool.imap".into(),
                        value: 2.1,
                        range: None,
                    },
                ],
            },
        };
        let svg = chart.render().unwrap();
        well_formed(&svg).unwrap_or_else(|e| panic!("{e}:\n{svg}"));
        for name in [
            "pstream ProcessPool::map",
            "reference pool",
            "Python Pool.imap",
            "million items/s",
        ] {
            assert!(svg.contains(name), "{name:?} missing from:\n{svg}");
        }
        // One filled bar per contender, each in its own colour.
        for c in &PALETTE[..3] {
            let fill = format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2);
            assert!(svg.contains(&fill), "no bar filled {fill}:\n{svg}");
        }
    }

    #[test]
    fn a_line_chart_is_well_formed_and_names_its_series() {
        let chart = Chart {
            stem: "rss".into(),
            title: "coordinator peak RSS".into(),
            plot: Plot::Lines {
                x_desc: "items".into(),
                y_desc: "MiB".into(),
                series: vec![Series {
                    name: "peak RSS at the end".into(),
                    points: vec![(1e6, 4.1), (1e7, 4.2), (1e8, 4.3)],
                }],
            },
        };
        let svg = chart.render().unwrap();
        well_formed(&svg).unwrap_or_else(|e| panic!("{e}:\n{svg}"));
        assert!(svg.contains("peak RSS at the end"));
        assert!(svg.contains("100,000,000"), "no x label for 1e8:\n{svg}");
    }

    #[test]
    fn a_chart_is_written_where_asked() {
        let dir = tempfile::tempdir().unwrap();
        let chart = Chart {
            stem: "sha-throughput".into(),
            title: "t".into(),
            plot: Plot::Bars {
                unit: "u".into(),
                bars: vec![Bar {
                    name: "only".into(),
                    value: 1.0,
                    range: None,
                }],
            },
        };
        let path = chart.write(&dir.path().join("charts")).unwrap();
        assert_eq!(path, dir.path().join("charts/sha-throughput.svg"));
        well_formed(&std::fs::read_to_string(path).unwrap()).unwrap();
    }
}
