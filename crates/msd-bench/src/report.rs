//! Collected figures, printed as they come and rendered as a markdown table at the end.

use std::fmt::Write as _;
use std::time::Duration;

use crate::summary::Summary;

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    /// The benchmark section that made it, such as `ingest`.
    pub section: &'static str,
    pub name: String,
    pub unit: &'static str,
    /// `None` when no sample was taken, for example because a run failed.
    pub summary: Option<Summary>,
    /// Context for comparing the figure: a bound, a ratio, the settings.
    pub note: String,
}

/// The figures of one run of the suite.
#[derive(Debug, Default)]
pub struct Report {
    figures: Vec<Figure>,
    /// Wall time of each section that ran.
    sections: Vec<(&'static str, Duration)>,
}

impl Report {
    /// Adds a figure and prints it on one line.
    pub fn add(
        &mut self,
        section: &'static str,
        name: impl Into<String>,
        unit: &'static str,
        summary: Option<Summary>,
        note: impl Into<String>,
    ) {
        let figure = Figure {
            section,
            name: name.into(),
            unit,
            summary,
            note: note.into(),
        };
        println!("{}", format_line(&figure));
        self.figures.push(figure);
    }

    /// Adds a figure computed once, such as a ratio or a bound.
    pub fn add_single(
        &mut self,
        section: &'static str,
        name: impl Into<String>,
        unit: &'static str,
        value: Option<f64>,
        note: impl Into<String>,
    ) {
        self.add(section, name, unit, value.map(Summary::single), note);
    }

    pub fn record_section(&mut self, section: &'static str, elapsed: Duration) {
        self.sections.push((section, elapsed));
    }

    /// Renders the whole report as markdown: the machine, the command, section times and one
    /// table of every figure.
    pub fn to_markdown(&self, machine: &str, command: &str, total: Duration) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "Machine: {machine}\n");
        let _ = writeln!(text, "Command: `{command}`\n");
        let sections: Vec<String> = self
            .sections
            .iter()
            .map(|(section, elapsed)| format!("{section} {:.0} s", elapsed.as_secs_f64()))
            .collect();
        let _ = writeln!(
            text,
            "Wall time: {:.0} s ({})\n",
            total.as_secs_f64(),
            sections.join(", ")
        );
        text.push_str("| section | figure | n | min | median | p99 | max | unit | note |\n");
        text.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |\n");
        for figure in &self.figures {
            let cells = match figure.summary {
                Some(summary) if summary.count > 1 => [
                    summary.count.to_string(),
                    format_value(summary.min),
                    format_value(summary.median),
                    format_value(summary.p99),
                    format_value(summary.max),
                ],
                Some(summary) => [
                    "1".into(),
                    String::new(),
                    format_value(summary.median),
                    String::new(),
                    String::new(),
                ],
                None => [
                    "0".into(),
                    String::new(),
                    "not measured".into(),
                    String::new(),
                    String::new(),
                ],
            };
            let _ = writeln!(
                text,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                figure.section,
                escape(&figure.name),
                cells[0],
                cells[1],
                cells[2],
                cells[3],
                cells[4],
                figure.unit,
                escape(&figure.note),
            );
        }
        text
    }
}

/// Formats one figure for the terminal.
fn format_line(figure: &Figure) -> String {
    let values = match figure.summary {
        Some(summary) if summary.count > 1 => format!(
            "min {} / median {} / p99 {} / max {} {} (n={})",
            format_value(summary.min),
            format_value(summary.median),
            format_value(summary.p99),
            format_value(summary.max),
            figure.unit,
            summary.count,
        ),
        Some(summary) => format!("{} {}", format_value(summary.median), figure.unit),
        None => "not measured".to_owned(),
    };
    let note = if figure.note.is_empty() {
        String::new()
    } else {
        format!("  [{}]", figure.note)
    };
    format!("{:<8} {:<52} {values}{note}", figure.section, figure.name)
}

/// Formats a value with three significant digits, without exponent notation.
pub fn format_value(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1000.0 {
        let rounded = value.round() as i64;
        return group_thousands(rounded);
    }
    let decimals = if magnitude >= 100.0 {
        0
    } else if magnitude >= 10.0 {
        1
    } else if magnitude >= 1.0 || magnitude == 0.0 {
        2
    } else {
        3
    };
    format!("{value:.decimals$}")
}

/// Writes an integer with commas between groups of three digits.
fn group_thousands(value: i64) -> String {
    let digits = value.unsigned_abs().to_string();
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    if value < 0 {
        grouped.insert(0, '-');
    }
    grouped
}

/// Keeps a cell's text from ending the markdown cell early.
fn escape(text: &str) -> String {
    text.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_three_digits() {
        assert_eq!(format_value(0.01234), "0.012");
        assert_eq!(format_value(1.5), "1.50");
        assert_eq!(format_value(12.34), "12.3");
        assert_eq!(format_value(123.4), "123");
        assert_eq!(format_value(1_234_567.0), "1,234,567");
        assert_eq!(format_value(-4321.0), "-4,321");
    }

    #[test]
    fn markdown_has_one_row_per_figure() {
        let mut report = Report::default();
        report.add(
            "codec",
            "decode a|b",
            "ns",
            Summary::of(&[1.0, 2.0, 3.0]),
            "",
        );
        report.add_single("codec", "ratio", "x", Some(2.0), "against mdns-sd");
        report.add("codec", "failed", "ns", None, "");
        let markdown =
            report.to_markdown("test machine", "msd-bench codec", Duration::from_secs(3));
        assert!(
            markdown.contains("| codec | decode a\\|b | 3 | 1.00 | 2.00 | 3.00 | 3.00 | ns |  |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| codec | ratio | 1 |  | 2.00 |  |  | x | against mdns-sd |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| codec | failed | 0 |  | not measured |"),
            "{markdown}"
        );
    }
}
