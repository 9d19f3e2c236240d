//! Errors of the partition log, shaped so the broker can map each to one Kafka error code.

use std::io;

use crate::batch::BatchError;
use crate::producer::ProducerError;

/// A storage failure. After a failed write or fsync the log refuses further work
/// ([`LogError::Offline`]): the page cache may no longer reflect the disk (the "fsyncgate"
/// lesson), so the only safe continuation is to reopen and recover from what is on disk.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("log is offline after an earlier storage error: {0}")]
    Offline(String),
    #[error("offset {offset} is out of range [{start}, {end}]")]
    OffsetOutOfRange { offset: i64, start: i64, end: i64 },
}

impl LogError {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        LogError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Why an append was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("record batch of {size} bytes exceeds max.message.bytes {max}")]
    RecordTooLarge { size: usize, max: usize },
    #[error(transparent)]
    Producer(#[from] ProducerError),
    #[error("batch starts at offset {got}, the log ends at {expected}")]
    OffsetMismatch { expected: i64, got: i64 },
    #[error("invalid record batch: {0}")]
    InvalidRecord(&'static str),
    #[error(transparent)]
    Storage(#[from] LogError),
}

/// Attach a description of what was being done to an I/O result.
pub(crate) trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, LogError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, LogError> {
        self.map_err(|e| LogError::io(what(), e))
    }
}
