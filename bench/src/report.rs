//! Figures of one run, medians over runs, and the side-by-side table.

use std::fmt::Write;

/// Which direction of a figure is good, for the ratio column.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
    /// Context only (counts, CPU shares): no ratio.
    Neither,
}

/// One measured figure.
#[derive(Clone)]
pub struct Figure {
    pub name: &'static str,
    pub value: f64,
    pub unit: &'static str,
    pub better: Better,
}

/// Everything one run of a scenario measured.
#[derive(Default)]
pub struct Outcome {
    pub figures: Vec<Figure>,
    /// Loss, duplicates, failed connections or subscribes: any makes ht-bench exit non-zero.
    pub problems: Vec<String>,
}

impl Outcome {
    pub fn add(&mut self, name: &'static str, value: f64, unit: &'static str, better: Better) {
        self.figures.push(Figure {
            name,
            value,
            unit,
            better,
        });
    }

    /// Records a count that must be zero.
    pub fn must_be_zero(&mut self, name: &'static str, value: u64) {
        self.add(name, value as f64, "", Better::Lower);
        if value > 0 {
            self.problems.push(format!("{name}: {value}"));
        }
    }

    pub fn line(&self) -> String {
        let mut out = String::new();
        for (i, f) in self.figures.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(out, "{sep}{} {}{}", f.name, format_value(f.value), f.unit);
        }
        out
    }
}

fn format_value(v: f64) -> String {
    // Whole numbers (counts) and large figures print without decimals.
    if (v.fract() == 0.0 && v.abs() < 1e15) || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The `p`-th percentile (0..=100) of sorted values.
pub fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    f64::from(sorted[rank.min(sorted.len() - 1)])
}

/// Per figure, the median over runs (figures are in the same order in every run).
pub fn medians(runs: &[Outcome]) -> Vec<Figure> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    first
        .figures
        .iter()
        .enumerate()
        .map(|(i, figure)| {
            let mut values: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.figures.get(i).map(|f| f.value))
                .collect();
            values.sort_by(f64::total_cmp);
            let mid = values.len() / 2;
            let value = if values.len() % 2 == 1 {
                values[mid]
            } else {
                (values[mid - 1] + values[mid]) / 2.0
            };
            Figure {
                value,
                ..figure.clone()
            }
        })
        .collect()
}

/// The summary table: one column per server, and ours' advantage when two are compared.
pub fn table(columns: &[(&str, Vec<Figure>)]) -> String {
    let mut out = String::new();
    let _ = write!(out, "| figure |");
    for (label, _) in columns {
        let _ = write!(out, " {label} |");
    }
    if columns.len() == 2 {
        let _ = write!(out, " ours vs 3.1 |");
    }
    out.push('\n');
    out.push_str(&"| --- ".repeat(columns.len() + 1 + usize::from(columns.len() == 2)));
    out.push_str("|\n");
    let Some((_, first)) = columns.first() else {
        return out;
    };
    for (i, figure) in first.iter().enumerate() {
        let _ = write!(out, "| {} |", figure.name);
        for (_, figures) in columns {
            match figures.get(i) {
                Some(f) => {
                    let _ = write!(out, " {}{} |", format_value(f.value), f.unit);
                }
                None => out.push_str(" – |"),
            }
        }
        if let [(_, ours), (_, theirs)] = columns {
            let ratio = match (ours.get(i), theirs.get(i), figure.better) {
                (Some(a), Some(b), Better::Higher) if b.value > 0.0 => Some(a.value / b.value),
                (Some(a), Some(b), Better::Lower) if a.value > 0.0 && b.value > 0.0 => {
                    Some(b.value / a.value)
                }
                _ => None,
            };
            match ratio {
                Some(r) => {
                    let _ = write!(out, " {} × better |", format_value(r));
                }
                None => out.push_str(" |"),
            }
        }
        out.push('\n');
    }
    out
}
