//! `--plot FILE.svg`: latency by percentile on a log axis (as the
//! HdrHistogram plotter draws it), one or more series.

use hdrhistogram::Histogram;
use plotters::prelude::*;

/// Draws the percentile curve(s) to an SVG file. The x axis is
/// `log10(1/(1-p))`, labelled 0 %, 90 %, 99 %, 99.9 %…
pub fn write_svg(
    path: &std::path::Path,
    title: &str,
    series: &[(&str, &Histogram<u64>)],
) -> Result<(), Box<dyn std::error::Error>> {
    let mut points: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut max_x: f64 = 2.0;
    let mut max_y: f64 = 1.0;
    for (_, h) in series {
        let mut pts = Vec::new();
        if !h.is_empty() {
            for v in h.iter_quantiles(5) {
                let q = v.quantile_iterated_to();
                if q >= 1.0 {
                    break;
                }
                let x = (1.0 / (1.0 - q)).log10();
                let y = v.value_iterated_to() as f64;
                max_x = max_x.max(x);
                max_y = max_y.max(y);
                pts.push((x, y));
            }
            let x = max_x.max(pts.last().map(|p| p.0).unwrap_or(0.0));
            pts.push((x, h.max() as f64));
            max_y = max_y.max(h.max() as f64);
        }
        points.push(pts);
    }
    let max_x = max_x.ceil().min(6.0);
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_x, (1f64..max_y * 1.3).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_labels(max_x as usize + 1)
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            if p < 99.0 {
                format!("{p:.0}%")
            } else {
                let digits = (x.round() as usize).saturating_sub(2);
                format!("{p:.digits$}%")
            }
        })
        .draw()?;
    let colours = [&BLUE, &RED, &GREEN, &MAGENTA, &CYAN, &BLACK];
    for (i, ((name, _), pts)) in series.iter().zip(points).enumerate() {
        let c = colours[i % colours.len()];
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
