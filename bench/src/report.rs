//! The markdown report: printed as it is produced, appended to `--out` at the end.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

/// Collects the report and echoes every piece to stdout at once.
pub struct Report {
    text: String,
    out: Option<PathBuf>,
}

impl Report {
    /// A report that will be appended to `out` when given.
    pub fn new(out: Option<PathBuf>) -> Self {
        Report {
            text: String::new(),
            out,
        }
    }

    /// Text as is.
    pub fn push_raw(&mut self, s: &str) {
        print!("{s}");
        let _ = std::io::stdout().flush();
        self.text.push_str(s);
    }

    /// A `##` heading.
    pub fn heading(&mut self, title: &str) {
        self.push_raw(&format!("\n## {title}\n\n"));
    }

    /// A paragraph.
    pub fn note(&mut self, text: &str) {
        self.push_raw(&format!("{text}\n\n"));
    }

    /// The header row of a table.
    pub fn table(&mut self, headers: &[&str]) {
        let seps: Vec<&str> = headers.iter().map(|_| "---").collect();
        self.push_raw(&format!(
            "| {} |\n|{}|\n",
            headers.join(" | "),
            seps.join("|")
        ));
    }

    /// One row of the current table.
    pub fn row(&mut self, cells: &[String]) {
        self.push_raw(&format!("| {} |\n", cells.join(" | ")));
    }

    /// Ends the current table.
    pub fn end_table(&mut self) {
        self.push_raw("\n");
    }

    /// Appends the report to the `--out` file, if any.
    pub fn save(&self) -> anyhow::Result<()> {
        let Some(path) = &self.out else {
            return Ok(());
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        f.write_all(self.text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// Milliseconds with three decimals, from microseconds.
pub fn ms(micros: u64) -> String {
    format!("{:.3}", micros as f64 / 1000.0)
}

/// Mebibytes with one decimal, from kibibytes.
pub fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}
