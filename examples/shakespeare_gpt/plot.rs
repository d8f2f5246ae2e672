//! The loss-against-pruning plot: one panel per kind of pruning, a line per model.
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;

const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Registers a system font for the labels; `false` when none is found.
fn font() -> bool {
    for f in FONTS {
        if let Ok(bytes) = std::fs::read(f) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

/// One panel: its title, the pruning rates in %, and a (model, bits per byte) per line.
pub type Panel<'a> = (&'a str, &'a [f64], &'a [(String, Vec<f64>)]);

/// Draws the panels side by side; the y axis spans every value of every panel (capped at 8
/// bits, a uniform guess over the bytes, so that one collapsed model does not flatten the rest).
pub fn draw(path: &Path, title: &str, panels: &[Panel]) -> Result<bool> {
    if !font() {
        eprintln!(
            "no font found ({}): the plot is skipped, the CSV files hold the data",
            FONTS.join(", ")
        );
        return Ok(false);
    }
    let values = panels
        .iter()
        .flat_map(|p| p.2.iter().flat_map(|(_, v)| v.iter().cloned()));
    let (lo, hi) = values.fold((f64::INFINITY, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (ymin, ymax) = ((lo - 0.1).floor().max(0.0), (hi + 0.1).ceil().min(8.0));
    let root = BitMapBackend::new(path, (1200, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| anyhow!("{e}"))?;
    let areas = root.split_evenly((1, panels.len()));
    let colors = [BLACK, RED, BLUE, RGBColor(0, 150, 0)];
    for (area, (title, rates, lines)) in areas.iter().zip(panels) {
        let xmax = rates.iter().cloned().fold(0.0, f64::max);
        let mut chart = ChartBuilder::on(area)
            .caption(*title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..xmax, ymin..ymax)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("pruned (%)")
            .y_desc("validation bits per byte")
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        for (i, (name, bpc)) in lines.iter().enumerate() {
            let c = colors[i % colors.len()];
            chart
                .draw_series(LineSeries::new(
                    rates.iter().cloned().zip(bpc.iter().map(|&v| v.min(ymax))),
                    c.stroke_width(2),
                ))
                .map_err(|e| anyhow!("{e}"))?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(true)
}
