//! What the training examples (`mnist_prune`, `shakespeare_gpt`) share: the device argument,
//! the seeded generator, the four training recipes and the paper's ramp, the progress bar,
//! pruning at a list of rates, and the tables, CSV files and plot of the results. Each
//! example includes it with `#[path = "../common/mod.rs"] mod common;`.
#![allow(dead_code)]

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use candle_targeted_dropout::{DropoutKind, RampSchedule, TargetedDropout, VarMapDropout};
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use std::path::Path;

/// The pruning rates (%) of the weight-pruning and unit-pruning tables.
pub const WEIGHT_RATES: [u32; 13] = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 98, 99];
pub const UNIT_RATES: [u32; 10] = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90];

/// One table row: a model's name and its numbers, one per column.
pub type Row = (String, Vec<f64>);

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum DeviceArg {
    Cpu,
    Cuda,
}

impl DeviceArg {
    /// The device; CUDA needs a build with `--features cuda`.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceArg::Cpu => Ok(Device::Cpu),
            #[cfg(feature = "cuda")]
            DeviceArg::Cuda => Ok(Device::new_cuda(0)?),
            #[cfg(not(feature = "cuda"))]
            DeviceArg::Cuda => bail!("--device cuda needs a build with `--features cuda`"),
        }
    }
}

/// splitmix64, for the seeded initialisation, shuffling and batches.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// How [`init_vars`] sets one variable: a constant, or normal draws of this deviation.
pub enum Init {
    Const(f32),
    Normal(f64),
}

/// Sets every variable of `vm` as `init(name, dims)` says, drawing from `seed`, in name order
/// so that the run repeats itself (candle's own CPU generator cannot be seeded); returns the
/// variables in that order.
pub fn init_vars(
    vm: &VarMap,
    seed: u64,
    dev: &Device,
    init: impl Fn(&str, &[usize]) -> Init,
) -> Result<Vec<Var>> {
    let mut named: Vec<(String, Var)> = {
        let data = vm.data().lock().expect("the var map lock");
        data.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut rng = Rng(seed ^ 0x5eed);
    for (name, var) in &named {
        let dims = var.dims().to_vec();
        let numel: usize = dims.iter().product();
        let values: Vec<f32> = match init(name, &dims) {
            Init::Const(c) => vec![c; numel],
            Init::Normal(std) => (0..numel).map(|_| (rng.normal() * std) as f32).collect(),
        };
        var.set(&Tensor::from_vec(values, dims, dev)?)?;
    }
    Ok(named.into_iter().map(|(_, v)| v).collect())
}

/// The targeted dropout of the compared models, as both examples take it.
#[derive(clap::Args, Debug)]
pub struct TdArgs {
    /// gamma of the targeted weight and unit dropout models.
    #[arg(long, default_value_t = 0.5)]
    pub gamma: f64,
    /// alpha of the targeted weight and unit dropout models.
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f64,
    /// Final gamma = alpha of the ramped model (reached at 40% of training).
    #[arg(long, default_value_t = 0.99)]
    pub ramp_to: f64,
}

impl TdArgs {
    /// Each a number in [0, 1], or an error naming the flag and the value.
    pub fn check(&self) -> Result<()> {
        for (name, v) in [
            ("--gamma", self.gamma),
            ("--alpha", self.alpha),
            ("--ramp-to", self.ramp_to),
        ] {
            if !(0.0..=1.0).contains(&v) {
                bail!("{name} must be in [0, 1], got {v}")
            }
        }
        Ok(())
    }

    /// The paper's ramp (over 20k and 40k of ~100k steps) at the same shares of a run of
    /// `steps`, to `--ramp-to` for both gamma and alpha.
    pub fn ramp(&self, steps: u64) -> Result<RampSchedule> {
        Ok(RampSchedule::with_steps(
            self.ramp_to,
            self.ramp_to,
            (steps / 5).max(1),
            (2 * steps / 5).max(2),
        )?)
    }

    /// The four recipes both examples compare: no dropout, targeted weight and unit dropout
    /// at `--gamma` and `--alpha`, and weight dropout on `ramp`.
    pub fn four_recipes(&self, ramp: RampSchedule) -> Result<Vec<(&'static str, Recipe)>> {
        let (g, a) = (self.gamma, self.alpha);
        Ok(vec![
            ("none", Recipe::None),
            ("td_weight", Recipe::Fixed(TargetedDropout::weight(g, a)?)),
            ("td_unit", Recipe::Fixed(TargetedDropout::unit(g, a)?)),
            (
                "td_weight_ramp",
                Recipe::Ramp(ramp, TargetedDropout::weight(0.0, 0.0)?),
            ),
        ])
    }
}

/// `--steps`, `--batch-size` and the like: each at least 1.
pub fn check_counts(args: &[(&str, usize)]) -> Result<()> {
    for &(name, v) in args {
        if v == 0 {
            bail!("{name} must be at least 1, got 0")
        }
    }
    Ok(())
}

/// One training recipe: the targeted dropout the selected weights get.
#[derive(Clone, Copy)]
pub enum Recipe {
    None,
    Fixed(TargetedDropout),
    /// The schedule's gamma and alpha on a config of this one's kind (an N:M config takes
    /// the alpha only).
    Ramp(RampSchedule, TargetedDropout),
}

impl Recipe {
    /// The config at `step` (`None` without dropout).
    pub fn at(&self, step: u64) -> Result<Option<TargetedDropout>> {
        Ok(match self {
            Recipe::None => None,
            Recipe::Fixed(td) => Some(*td),
            Recipe::Ramp(s, td) => Some(td.at_step(s, step)?),
        })
    }
}

/// A progress bar of `len` `what` (epochs, steps) for the model `name`.
pub fn progress(name: &str, len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let template =
        format!("{{prefix:>15}} [{{bar:30}}] {{pos}}/{{len}} {what} {{elapsed:>4}} {{msg}}");
    pb.set_style(
        ProgressStyle::with_template(&template)
            .expect("a valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix(name.to_string());
    pb
}

/// `eval` with every selected variable of `vd` pruned at each rate (%) of `kind`; the weights
/// are restored after each.
pub fn pruned_at(
    vd: &VarMapDropout,
    kind: DropoutKind,
    rates: &[u32],
    mut eval: impl FnMut() -> candle_core::Result<f64>,
) -> Result<Vec<f64>> {
    rates
        .iter()
        .map(|&r| {
            let td = TargetedDropout::new(kind, r as f64 / 100.0, 1.0)?;
            Ok(vd.with_pruned(td, |_| eval())?)
        })
        .collect()
}

/// The column names of pruning rates: `0%`, `10%`, ... (`suffix` "%") or `0`, `10`, ... ("").
pub fn rate_cols(rates: &[u32], suffix: &str) -> Vec<String> {
    rates.iter().map(|r| format!("{r}{suffix}")).collect()
}

/// A text table: the title, a header of `cols`, a row per model with `decimals` digits.
pub fn table(title: &str, cols: &[String], rows: &[Row], decimals: usize) -> String {
    let head = format!("{title}\n{:>15}", "model \\ pruned");
    grid(
        head,
        cols,
        rows,
        |c| format!("{c:>7}"),
        |n| format!("\n{n:>15}"),
        |a| format!("{a:>7.decimals$}"),
    )
}

/// The same as a CSV file: `model,<cols>`, a line per model with `decimals` digits.
pub fn csv(path: &Path, cols: &[String], rows: &[Row], decimals: usize) -> Result<()> {
    let mut s = grid(
        "model".into(),
        cols,
        rows,
        |c| format!(",{c}"),
        |n| format!("\n{n}"),
        |a| format!(",{a:.decimals$}"),
    );
    s.push('\n');
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}

/// `head`, then each column name, then per row its name and its cells, each as formatted.
fn grid(
    head: String,
    cols: &[String],
    rows: &[Row],
    col: impl Fn(&str) -> String,
    name: impl Fn(&str) -> String,
    cell: impl Fn(f64) -> String,
) -> String {
    let mut s = head;
    for c in cols {
        s += &col(c);
    }
    for (n, v) in rows {
        s += &name(n);
        for &a in v {
            s += &cell(a);
        }
    }
    s
}

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

/// One panel: its title, the pruning rates in %, and a row per line.
pub type Panel<'a> = (&'a str, &'a [f64], &'a [Row]);

/// The plot's y axis: its label, its range (`None`: every value of every panel, rounded out
/// to whole units, capped at `cap`), where the legend goes, and the image's size.
pub struct Axis {
    pub label: &'static str,
    pub range: Option<(f64, f64)>,
    pub cap: f64,
    pub legend: SeriesLabelPosition,
    pub size: (u32, u32),
}

/// Draws the panels side by side, a line per model, under `title` if one is given. `false`
/// (and a message) when no font is found: the CSV files hold the data.
pub fn draw(path: &Path, title: Option<&str>, y: Axis, panels: &[Panel]) -> Result<bool> {
    if !font() {
        eprintln!(
            "no font found ({}): the plot is skipped, the CSV files hold the data",
            FONTS.join(", ")
        );
        return Ok(false);
    }
    let (ymin, ymax) = y.range.unwrap_or_else(|| {
        let values = panels
            .iter()
            .flat_map(|p| p.2.iter().flat_map(|(_, v)| v.iter().cloned()));
        let (lo, hi) = values.fold((f64::INFINITY, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        ((lo - 0.1).floor().max(0.0), (hi + 0.1).ceil().min(y.cap))
    });
    let root = BitMapBackend::new(path, y.size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let root = match title {
        Some(t) => root
            .titled(t, ("sans-serif", 20))
            .map_err(|e| anyhow!("{e}"))?,
        None => root,
    };
    let areas = root.split_evenly((1, panels.len()));
    let colors = [
        BLACK,
        RED,
        BLUE,
        RGBColor(0, 150, 0),
        RGBColor(200, 120, 0),
        RGBColor(150, 0, 150),
    ];
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
            .y_desc(y.label)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        for (i, (name, v)) in lines.iter().enumerate() {
            let c = colors[i % colors.len()];
            chart
                .draw_series(LineSeries::new(
                    rates.iter().cloned().zip(v.iter().map(|&v| v.min(ymax))),
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
            .position(y.legend.clone())
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(true)
}

/// The two tables both examples make: each model's numbers after per-filter weight pruning
/// (at [`WEIGHT_RATES`]) and after unit pruning (at [`UNIT_RATES`]).
#[derive(Default)]
pub struct Results {
    pub weight: Vec<Row>,
    pub unit: Vec<Row>,
}

impl Results {
    /// Prints both tables under their titles, `decimals` digits.
    pub fn print(&self, weight_title: &str, unit_title: &str, decimals: usize) {
        let (w, u) = (rate_cols(&WEIGHT_RATES, "%"), rate_cols(&UNIT_RATES, "%"));
        println!("\n{}", table(weight_title, &w, &self.weight, decimals));
        println!("\n{}", table(unit_title, &u, &self.unit, decimals));
    }

    /// Writes `<prefix>weight_pruning.csv` and `<prefix>unit_pruning.csv` (`decimals` digits)
    /// into `out` (created if need be), then the tables as `extra` CSV files, then
    /// `<prefix>pruning.png`, the plot of both; returns the line that names what was written.
    pub fn save(
        &self,
        out: &Path,
        prefix: &str,
        decimals: usize,
        extra: &[(&str, &[String], &[Row])],
        plot: (Option<&str>, Axis),
    ) -> Result<String> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let mut written = Vec::new();
        let mut save = |name: &str, cols: &[String], rows: &[Row], decimals| -> Result<()> {
            let path = out.join(name);
            csv(&path, cols, rows, decimals)?;
            written.push(path.display().to_string());
            Ok(())
        };
        let cols = |rates: &[u32]| rate_cols(rates, "");
        save(
            &format!("{prefix}weight_pruning.csv"),
            &cols(&WEIGHT_RATES),
            &self.weight,
            decimals,
        )?;
        save(
            &format!("{prefix}unit_pruning.csv"),
            &cols(&UNIT_RATES),
            &self.unit,
            decimals,
        )?;
        for (name, cols, rows) in extra {
            save(name, cols, rows, decimals)?;
        }
        let wr: Vec<f64> = WEIGHT_RATES.iter().map(|&r| r as f64).collect();
        let ur: Vec<f64> = UNIT_RATES.iter().map(|&r| r as f64).collect();
        let png = out.join(format!("{prefix}pruning.png"));
        let panels = [
            ("Per-filter weight pruning", &wr[..], &self.weight[..]),
            ("Unit pruning", &ur[..], &self.unit[..]),
        ];
        let drawn = draw(&png, plot.0, plot.1, &panels)?;
        let mut line = format!("wrote {}", written.join(", "));
        if drawn {
            line += &format!(" and {}", png.display());
        }
        Ok(line)
    }
}
