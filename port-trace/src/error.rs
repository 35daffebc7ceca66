//! Fatal errors and the exit codes they map to (documented in the README).

use thiserror::Error;

/// Exit codes: 0 success, 1 unexpected failure, 2 bad command line (clap), 3 not permitted,
/// 4 the kernel lacks something port-trace needs, 5 the `--prometheus` address cannot be
/// served (in use, not this host's), 6 an output file (`--report`, `--hdr-log`) cannot be
/// written (checked before anything is attached; also when writing it fails later).
#[derive(Debug, Error)]
pub enum Fatal {
    /// Bad input: a capture `analyze` cannot read (exit 2, as a bad command line).
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    NotPermitted(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    CannotServe(String),
    #[error("{0}")]
    CannotWrite(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Fatal {
    pub fn exit_code(&self) -> u8 {
        match self {
            Fatal::Other(_) => 1,
            Fatal::BadInput(_) => 2,
            Fatal::NotPermitted(_) => 3,
            Fatal::Unsupported(_) => 4,
            Fatal::CannotServe(_) => 5,
            Fatal::CannotWrite(_) => 6,
        }
    }
}

impl Fatal {
    /// What went wrong, without port-trace's own outermost context ("loading X").
    pub fn root_cause(&self) -> String {
        match self {
            Fatal::Other(err) if err.chain().count() > 1 => err
                .chain()
                .skip(1)
                .map(|cause| cause.to_string())
                .collect::<Vec<_>>()
                .join(": "),
            other => format!("{other:#}"),
        }
    }
}

impl From<std::io::Error> for Fatal {
    fn from(err: std::io::Error) -> Self {
        Fatal::Other(err.into())
    }
}
