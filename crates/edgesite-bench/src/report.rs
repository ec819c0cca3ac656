//! One line per figure: `label  embedded X  etcd Y  ratio X/Y  (goal …) met|MISSED`.

use crate::backend::Kind;

/// A figure's value for each backend (`None`: not measured or failed).
#[derive(Debug, Clone, Copy, Default)]
pub struct Pair<T> {
    pub embedded: Option<T>,
    pub etcd: Option<T>,
}

impl<T> Pair<T> {
    pub fn set(&mut self, kind: Kind, value: T) {
        match kind {
            Kind::Embedded => self.embedded = Some(value),
            Kind::Etcd => self.etcd = Some(value),
        }
    }
}

/// How a figure's values read.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    /// Operations per second (higher is better).
    PerSec,
    /// Milliseconds (lower is better).
    Millis,
    /// MiB (lower is better).
    MiB,
    /// A multiple (lower is better).
    Times,
}

impl Unit {
    fn format(self, v: f64) -> String {
        match self {
            Self::PerSec => format!("{v:.0}"),
            Self::Millis if v < 1.0 => format!("{v:.3} ms"),
            Self::Millis if v < 100.0 => format!("{v:.2} ms"),
            Self::Millis => format!("{v:.0} ms"),
            Self::MiB => format!("{v:.1} MiB"),
            Self::Times => format!("{v:.1}x"),
        }
    }
}

/// What a figure should reach.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    /// embedded / etcd at least this.
    RatioAtLeast(f64),
    /// The embedded value below this many milliseconds.
    EmbeddedBelow(f64),
    /// The embedded value below this multiple.
    EmbeddedBelowTimes(f64),
}

impl Goal {
    fn describe(self) -> String {
        match self {
            Self::RatioAtLeast(r) => format!("goal >= {r}x"),
            Self::EmbeddedBelow(ms) => format!("goal embedded < {ms} ms"),
            Self::EmbeddedBelowTimes(x) => format!("goal embedded < {x}x"),
        }
    }

    fn met(self, values: Pair<f64>) -> Option<bool> {
        match self {
            Self::RatioAtLeast(r) => ratio(values).map(|v| v >= r),
            Self::EmbeddedBelow(limit) | Self::EmbeddedBelowTimes(limit) => {
                values.embedded.map(|v| v < limit)
            }
        }
    }
}

/// Three significant digits, so that a ratio just under a goal does not print as the goal.
fn format_ratio(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}x")
    } else if r >= 10.0 {
        format!("{r:.1}x")
    } else if r >= 1.0 {
        format!("{r:.2}x")
    } else {
        format!("{r:.3}x")
    }
}

fn ratio(values: Pair<f64>) -> Option<f64> {
    match (values.embedded, values.etcd) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// One figure.
#[derive(Debug)]
pub struct Figure {
    label: String,
    unit: Unit,
    values: Pair<f64>,
    goal: Option<Goal>,
}

impl Figure {
    pub fn new(label: impl Into<String>, unit: Unit, values: Pair<f64>) -> Self {
        Self {
            label: label.into(),
            unit,
            values,
            goal: None,
        }
    }

    pub fn goal(mut self, goal: Goal) -> Self {
        self.goal = Some(goal);
        self
    }

    /// The figure's line.
    pub fn line(&self) -> String {
        let value = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| self.unit.format(v));
        let ratio = ratio(self.values).map_or_else(|| "-".to_string(), format_ratio);
        let mut line = format!(
            "{:<42} embedded {:>10}   etcd {:>10}   ratio {:>6}",
            self.label,
            value(self.values.embedded),
            value(self.values.etcd),
            ratio
        );
        if let Some(goal) = self.goal {
            line.push_str(&format!(" ({})", goal.describe()));
            match goal.met(self.values) {
                Some(true) => line.push_str(" met"),
                Some(false) => line.push_str(" MISSED"),
                None => {}
            }
        }
        line
    }

    pub fn print(&self) {
        println!("{}", self.line());
    }
}

/// A context line under the figures (not a figure itself).
pub fn note(text: &str) {
    println!("  note: {text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_has_both_values_ratio_and_goal() {
        let line = Figure::new(
            "writes/s 1 writer (1 KiB)",
            Unit::PerSec,
            Pair {
                embedded: Some(412.0),
                etcd: Some(380.0),
            },
        )
        .goal(Goal::RatioAtLeast(1.0))
        .line();
        assert!(line.starts_with("writes/s 1 writer (1 KiB)"), "{line}");
        assert!(line.contains("embedded        412"), "{line}");
        assert!(line.contains("etcd        380"), "{line}");
        assert!(line.contains("ratio  1.08x (goal >= 1x) met"), "{line}");
    }

    #[test]
    fn missing_backend_prints_dashes_and_no_verdict_for_ratio_goals() {
        let line = Figure::new(
            "x",
            Unit::Millis,
            Pair {
                embedded: Some(0.5),
                etcd: None,
            },
        )
        .goal(Goal::RatioAtLeast(2.0))
        .line();
        assert!(line.contains("0.500 ms"), "{line}");
        assert!(line.contains("ratio      -"), "{line}");
        assert!(!line.contains("met") && !line.contains("MISSED"), "{line}");
    }

    #[test]
    fn ratio_just_under_a_goal_does_not_print_as_the_goal() {
        assert_eq!(format_ratio(0.9958), "0.996x");
        assert_eq!(format_ratio(2.891), "2.89x");
        assert_eq!(format_ratio(34.77), "34.8x");
    }

    #[test]
    fn embedded_goal_needs_only_embedded() {
        let values = Pair {
            embedded: Some(6.0),
            etcd: None,
        };
        assert_eq!(Goal::EmbeddedBelow(5.0).met(values), Some(false));
        assert_eq!(Goal::EmbeddedBelowTimes(10.0).met(values), Some(true));
    }
}
