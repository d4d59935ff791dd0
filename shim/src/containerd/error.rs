//! Task call errors and their ttrpc codes (which containerd maps back to
//! its `errdefs`: not found, already exists, invalid argument, failed
//! precondition, not implemented).

use containerd_shim::protos::ttrpc::{self, Code, get_status};
use protocol::ErrorCode;

use crate::agent::AgentError;

/// A failed task call.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TaskError {
    /// The ttrpc status code.
    pub code: Code,
    /// One line naming what was wrong.
    pub message: String,
}

impl TaskError {
    /// An error with `code`.
    pub fn new(code: Code, message: impl Into<String>) -> TaskError {
        TaskError {
            code,
            message: message.into().replace('\n', " "),
        }
    }

    /// No such task or process.
    pub fn not_found(what: impl std::fmt::Display) -> TaskError {
        TaskError::new(Code::NOT_FOUND, format!("{what}: not found"))
    }

    /// Bad request.
    pub fn invalid(message: impl Into<String>) -> TaskError {
        TaskError::new(Code::INVALID_ARGUMENT, message)
    }

    /// Valid, but not in this state.
    pub fn precondition(message: impl Into<String>) -> TaskError {
        TaskError::new(Code::FAILED_PRECONDITION, message)
    }

    /// Anything else.
    pub fn internal(message: impl std::fmt::Display) -> TaskError {
        TaskError::new(Code::INTERNAL, message.to_string())
    }

    /// Adds what was being done.
    pub fn context(mut self, what: &str) -> TaskError {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl From<AgentError> for TaskError {
    fn from(e: AgentError) -> TaskError {
        let code = match &e {
            AgentError::Refused(r) => match r.code {
                ErrorCode::InvalidArgument => Code::INVALID_ARGUMENT,
                ErrorCode::NotFound => Code::NOT_FOUND,
                ErrorCode::FailedPrecondition => Code::FAILED_PRECONDITION,
                ErrorCode::NotImplemented => Code::UNIMPLEMENTED,
                ErrorCode::Internal => Code::INTERNAL,
            },
            _ => Code::UNAVAILABLE,
        };
        TaskError::new(code, e.to_string())
    }
}

impl From<TaskError> for ttrpc::Error {
    fn from(e: TaskError) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(get_status(e.code, e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_refusals_keep_their_class() {
        let e = TaskError::from(AgentError::Refused(protocol::ErrorReply {
            code: ErrorCode::NotFound,
            message: "container x: not found".into(),
        }));
        assert_eq!(e.code, Code::NOT_FOUND);
        let t: ttrpc::Error = TaskError::invalid("bad\nline").into();
        match t {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::INVALID_ARGUMENT);
                assert_eq!(s.message(), "bad line");
            }
            other => panic!("{other:?}"),
        }
    }
}
