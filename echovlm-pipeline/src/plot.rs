//! Pictures of MoE routing: which experts fire in which layer, and how much of each layer's
//! feed-forward comes from the MoE branch rather than the dense MLP.

use std::path::Path;
use std::sync::OnceLock;

use echovlm_moe::RoutingSummary;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::EchoError;

/// DejaVu Sans Mono (Bitstream Vera licence, `assets/DejaVuSansMono-LICENSE.txt`), embedded so
/// that plots render identically without system fonts.
const FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");

fn plot_err(e: impl std::fmt::Display) -> EchoError {
    EchoError::InvalidRequest(format!("cannot draw the routing plot: {e}"))
}

fn register_font() -> Result<(), EchoError> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .map_err(|_| "the embedded font is invalid".to_string())
    })
    .clone()
    .map_err(plot_err)
}

/// White (0) → dark blue (1).
fn heat(v: f64) -> RGBColor {
    let v = v.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64| (a + (b - a) * v).round() as u8;
    RGBColor(lerp(247.0, 8.0), lerp(251.0, 48.0), lerp(255.0, 107.0))
}

/// Draws `summary` as a PNG at `path`: on the left a heatmap of the share of each layer's
/// top-k choices that went to each expert, on the right the mean mix coefficient of the MoE
/// branch per layer (the dense MLP gets the rest).
pub fn routing_png(summary: &RoutingSummary, path: &Path, title: &str) -> Result<(), EchoError> {
    let layers = summary.expert_counts.len();
    if layers == 0 {
        return Err(EchoError::InvalidRequest(
            "no routing to plot (the model has no MoE layers, or tracing was off)".into(),
        ));
    }
    register_font()?;
    let experts = summary.expert_counts[0].len().max(1);
    let height = 150 + 26 * layers as u32;
    let root = BitMapBackend::new(path, (980, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root.titled(title, ("sans-serif", 18)).map_err(plot_err)?;
    let (left, right) = root.split_horizontally(560);

    // expert usage heatmap
    let mut chart = ChartBuilder::on(&left)
        .caption(
            format!("expert usage per layer ({} tokens)", summary.tokens),
            ("sans-serif", 14),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (0..experts - 1).into_segmented(),
            (0..layers - 1).into_segmented(),
        )
        .map_err(plot_err)?;
    let layer_label = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(l) => summary
            .layers
            .get(*l)
            .map_or(String::new(), |x| x.to_string()),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(experts)
        .y_labels(layers.min(40))
        .x_desc("expert")
        .y_desc("layer")
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(e) => e.to_string(),
            _ => String::new(),
        })
        .y_label_formatter(&layer_label)
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(plot_err)?;
    let mut cells = Vec::new();
    let mut labels = Vec::new();
    for (l, counts) in summary.expert_counts.iter().enumerate() {
        let total: u64 = counts.iter().sum();
        for (e, &c) in counts.iter().enumerate() {
            let share = if total > 0 {
                c as f64 / total as f64
            } else {
                0.0
            };
            cells.push(Rectangle::new(
                [
                    (SegmentValue::Exact(e), SegmentValue::Exact(l)),
                    (SegmentValue::Exact(e + 1), SegmentValue::Exact(l + 1)),
                ],
                heat(share * 2.0).filled(),
            ));
            let ink = if share > 0.3 { WHITE } else { BLACK };
            labels.push(Text::new(
                format!("{:.0}%", share * 100.0),
                (SegmentValue::CenterOf(e), SegmentValue::CenterOf(l)),
                ("sans-serif", 11).into_font().color(&ink),
            ));
        }
    }
    chart.draw_series(cells).map_err(plot_err)?;
    chart.draw_series(labels).map_err(plot_err)?;

    // mean mix coefficient per layer
    let mut chart = ChartBuilder::on(&right)
        .caption("mean weight of the MoE branch", ("sans-serif", 14))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(40)
        .build_cartesian_2d(0f64..1f64, (0..layers - 1).into_segmented())
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .y_labels(layers.min(40))
        .x_labels(5)
        .x_desc("MoE share (dense MLP = 1 - share)")
        .y_label_formatter(&layer_label)
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(summary.mean_coefficients.iter().enumerate().map(|(l, c)| {
            Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(l)),
                    (c[0], SegmentValue::Exact(l + 1)),
                ],
                RGBColor(33, 113, 181).filled(),
            )
        }))
        .map_err(plot_err)?;
    chart
        .draw_series(summary.mean_coefficients.iter().enumerate().map(|(l, c)| {
            Text::new(
                format!("{:.2}", c[0]),
                ((c[0] + 0.02).min(0.85), SegmentValue::CenterOf(l)),
                ("sans-serif", 11).into_font(),
            )
        }))
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}
