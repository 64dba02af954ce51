//! Configuration errors that point at file, line, column and field.

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The configuration file.
    pub file: String,
    /// 1-based line; 0 when the problem concerns the whole file.
    pub line: usize,
    /// 1-based column; 0 when unknown.
    pub column: usize,
    /// The field, as a dotted path such as `endpoint[0].upgrade[1].plugin`; empty for the whole file.
    pub field: String,
    /// What is wrong, in lower-case prose.
    pub message: String,
}

impl ConfigError {
    /// An error about the whole file (for example, it cannot be read).
    pub fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.display().to_string(),
            line: 0,
            column: 0,
            field: String::new(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": field `{}`", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one configuration, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        Self(vec![error])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Maps byte offsets in a configuration file to lines and columns, and
/// keeps the file's text (the deploy history compares it).
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    file: Arc<str>,
    text: Arc<str>,
    line_starts: Arc<[usize]>,
}

impl SourceMap {
    /// Index `text`, read from `file`.
    pub fn new(file: &Path, text: &str) -> Self {
        let line_starts: Vec<usize> = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            file: file.display().to_string().into(),
            text: text.into(),
            line_starts: line_starts.into(),
        }
    }

    /// The file name as given.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The configuration's text as it was read.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// 1-based line and column of byte `offset`.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let line = self
            .line_starts
            .partition_point(|&start| start <= offset)
            .max(1);
        let start = self.line_starts.get(line - 1).copied().unwrap_or(0);
        (line, offset.saturating_sub(start) + 1)
    }

    /// An error at `span` about `field`.
    pub fn error(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = self.position(span.start);
        ConfigError {
            file: self.file.to_string(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn toml_error(&self, error: &toml::de::Error, field: &str) -> ConfigError {
        let message = error.message().trim().to_string();
        match error.span() {
            Some(span) => self.error(span, field, message),
            None => ConfigError {
                file: self.file.to_string(),
                line: 0,
                column: 0,
                field: field.to_string(),
                message,
            },
        }
    }
}
