use std::io;
use std::path::PathBuf;

/// A config that cannot be used. Every variant names where the bad value came from (the
/// file, or the `--set` override) and which `[table] key`, so that the user can fix it
/// without reading code.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },

    #[error("{}: not valid TOML: {message}", path.display())]
    Syntax { path: PathBuf, message: String },

    #[error("--set {text}: {problem}")]
    Override { text: String, problem: String },

    /// A key, type or value that the schema does not accept.
    #[error("{origin}: {location}: {problem}")]
    Invalid {
        /// The file path, or `--set table.key=value`.
        origin: String,
        /// `[table] key = value`, `[table] key` or `[table]`.
        location: String,
        /// What is wrong and what was expected.
        problem: String,
    },
}
