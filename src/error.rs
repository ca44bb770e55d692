//! The crate's error type.

/// Everything that can go wrong in `unetpp`.
///
/// Each variant carries a message that says what was expected and what was found, so a
/// caller can match on the kind of failure and still show a useful message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid (zero width, depth 0, dropout outside `[0, 1)`, ...):
    /// raised when a network, loss or optimizer is configured, never by the data it sees.
    #[error("invalid configuration: {field}: {msg}")]
    Config {
        /// The name of the offending field, e.g. `"widths"`.
        field: &'static str,
        /// What was wrong with it.
        msg: String,
    },
    /// An input tensor has the wrong rank, channel count or spatial size, or tensors that
    /// must agree in size do not.
    #[error("shape error: {0}")]
    Shape(String),
    /// Input values are invalid (whatever their shape): boxes with `x2 < x1` or non-finite
    /// coordinates, a batch or sample index out of range, an empty set where one is required,
    /// a label out of range, a tensor of the wrong element type, an image whose content
    /// cannot be decoded (a palette index out of range), an operation's argument out of its
    /// domain (a pooling kernel of 0).
    #[error("invalid input: {0}")]
    Input(String),
    /// A weight file or a set of weights does not fit the network.
    #[error("weights error: tensor `{name}`: {msg}")]
    Weights {
        /// The name of the tensor concerned (or the file, for file-level problems).
        name: String,
        /// What was wrong with it.
        msg: String,
    },
    /// Training produced a non-finite loss or gradient. The step that saw it changed
    /// nothing: the weights and the optimizer's state are as they were before it.
    #[error("training diverged: {0}")]
    Diverged(String),
    /// An I/O error, with the path it happened on.
    #[error("i/o error on `{path}`: {source}")]
    Io {
        /// The file concerned.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An error raised by candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// For unetpp functions called inside candle's traits (`Module`, custom ops) with `?`:
/// candle's own errors pass through, the others become candle's message error.
impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(c) => c,
            other => candle_core::Error::Msg(other.to_string()),
        }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn config(field: &'static str, msg: impl Into<String>) -> Self {
        Error::Config {
            field,
            msg: msg.into(),
        }
    }

    pub(crate) fn weights(name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Weights {
            name: name.into(),
            msg: msg.into(),
        }
    }
}
