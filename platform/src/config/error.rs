//! Configuration errors that point at the offending file, line and key.

use std::fmt;
use std::path::PathBuf;

/// One problem found in the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The file the problem is in, when it comes from a file.
    pub file: Option<PathBuf>,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Key path, e.g. `projects[1].slug`.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{line}: ", file.display())?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            _ => {}
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// The configuration was refused; holds every issue found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The issues, in file order where possible.
    pub issues: Vec<ConfigIssue>,
}

impl ConfigError {
    /// An error with a single issue.
    pub fn single(issue: ConfigIssue) -> Self {
        Self {
            issues: vec![issue],
        }
    }

    /// An error about a whole file (unreadable, missing).
    pub fn file(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::single(ConfigIssue {
            file: Some(file.into()),
            line: None,
            key: None,
            message: message.into(),
        })
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        writeln!(
            f,
            "invalid configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for i in &self.issues {
            writeln!(f, "  {i}")?;
        }
        Ok(())
    }
}
