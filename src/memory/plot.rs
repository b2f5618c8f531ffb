//! `dfengine profile --plot FILE.svg`: the memory timeline of a run folder — GPU memory
//! used by every process (NVML), the pool's reserved and allocated bytes at each step,
//! this process's resident set, and the governor's actions marked where they happened.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::manager::{GOVERNOR_CSV_HEADER, STEPS_CSV_HEADER};
use super::monitor::CSV_HEADER;

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("{}: {problem}", path.display())]
    Input { path: PathBuf, problem: String },
    #[error("drawing {}: {detail}", path.display())]
    Draw { path: PathBuf, detail: String },
}

const GIB: f64 = (1u64 << 30) as f64;

/// A named line: legend text, colour, (seconds, GiB) points.
type Series = (&'static str, RGBColor, Vec<(f64, f64)>);

/// Rows of a CSV written by the manager or monitor: checks the header, parses `columns`
/// leading numeric fields (empty → NaN) and keeps the rest of the line as text.
fn read_csv(path: &Path, header: &str, columns: usize) -> Result<Vec<(Vec<f64>, String)>, PlotError> {
    let bad = |problem: String| PlotError::Input { path: path.to_path_buf(), problem };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let mut lines = text.lines();
    if lines.next() != Some(header) {
        return Err(bad(format!("expected the header `{header}`")));
    }
    lines
        .enumerate()
        .map(|(i, line)| {
            let mut fields = line.splitn(columns + 1, ',');
            let numbers = (0..columns)
                .map(|_| {
                    let f = fields.next().unwrap_or("");
                    if f.is_empty() { Ok(f64::NAN) } else { f.parse::<f64>() }
                })
                .collect::<Result<Vec<f64>, _>>()
                .map_err(|e| bad(format!("line {}: {e}", i + 2)))?;
            Ok((numbers, fields.next().unwrap_or("").to_string()))
        })
        .collect()
}

/// Draws the timeline of `run_dir` into `svg`. `memory.csv` is required; `steps.csv` and
/// `governor.csv` are drawn when present.
pub fn plot_run(run_dir: &Path, svg: &Path) -> Result<(), PlotError> {
    let samples = read_csv(&run_dir.join("memory.csv"), CSV_HEADER, 7)?;
    let steps_path = run_dir.join("steps.csv");
    let steps = if steps_path.exists() { read_csv(&steps_path, STEPS_CSV_HEADER, 4)? } else { Vec::new() };
    let gov_path = run_dir.join("governor.csv");
    let actions = if gov_path.exists() { read_csv(&gov_path, GOVERNOR_CSV_HEADER, 2)? } else { Vec::new() };

    let series: [Series; 4] = [
        ("GPU used, all processes (NVML)", RED, samples.iter().map(|(v, _)| (v[0], v[1] / GIB)).collect()),
        ("pool reserved", BLUE, steps.iter().map(|(v, _)| (v[0], v[2] / GIB)).collect()),
        ("pool allocated", CYAN, steps.iter().map(|(v, _)| (v[0], v[3] / GIB)).collect()),
        ("process RSS (host)", GREEN, samples.iter().map(|(v, _)| (v[0], v[6] / GIB)).collect()),
    ];
    let points = || series.iter().flat_map(|(_, _, p)| p.iter()).filter(|(_, y)| y.is_finite());
    let t_max = points().map(|p| p.0).chain(actions.iter().map(|(v, _)| v[0])).fold(1.0f64, f64::max);
    let y_max = points().map(|p| p.1).fold(0.0f64, f64::max).max(0.1) * 1.15;

    let draw_err = |e: String| PlotError::Draw { path: svg.to_path_buf(), detail: e };
    let root = SVGBackend::new(svg, (1200, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("memory timeline: {}", run_dir.display()), ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, 0f64..y_max)
        .map_err(|e| draw_err(e.to_string()))?;
    chart.configure_mesh().x_desc("seconds").y_desc("GiB").draw().map_err(|e| draw_err(e.to_string()))?;
    for (name, colour, pts) in &series {
        let finite: Vec<(f64, f64)> = pts.iter().copied().filter(|(_, y)| y.is_finite()).collect();
        if finite.is_empty() {
            continue;
        }
        let colour = *colour;
        chart
            .draw_series(LineSeries::new(finite, colour.stroke_width(2)))
            .map_err(|e| draw_err(e.to_string()))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    // Labels step down in five rows so that actions close in time stay readable.
    for (i, (v, text)) in actions.iter().enumerate() {
        let action = text.split(",\"").next().unwrap_or(text);
        let t = v[0];
        chart
            .draw_series(std::iter::once(PathElement::new(vec![(t, 0.0), (t, y_max)], BLACK.mix(0.3))))
            .map_err(|e| draw_err(e.to_string()))?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("step {}: {action}", v[1]),
                (t, y_max * (0.98 - 0.035 * (i % 5) as f64)),
                ("sans-serif", 11).into_font(),
            )))
            .map_err(|e| draw_err(e.to_string()))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| draw_err(e.to_string()))?;
    root.present().map_err(|e| draw_err(e.to_string()))
}
