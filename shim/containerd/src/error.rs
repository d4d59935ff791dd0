//! Task call errors and their ttrpc codes, which containerd maps back to
//! its `errdefs` (not found, already exists, invalid argument, failed
//! precondition, unavailable, not implemented, internal). The code of an
//! error from the host library or the agent follows from its kind, in one
//! place ([`code_of`]); the shim's own errors (an unknown task, a process
//! in the wrong state) name their class where they arise.

use containerd_shim::protos::ttrpc::{self, Code, get_status};
use husk_host::ErrorKind;
use husk_host::agent::AgentError;
use husk_host::sandbox::SandboxError;

/// A failed task call.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// No such task, process or pod.
    #[error("{0}: not found")]
    NotFound(String),
    /// The ID is taken.
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// The request is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The request is right but the task is not in a state for it.
    #[error("{0}")]
    Precondition(String),
    /// Provisioning failed.
    #[error(transparent)]
    Sandbox(SandboxError),
    /// The agent failed or refused.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The host failed.
    #[error("{0}")]
    Internal(String),
    /// husk does not do this (yet).
    #[error("not implemented: {0}")]
    NotImplemented(String),
    /// One of the above, with what was being done.
    #[error("{what}: {source}")]
    Context {
        /// What was being done.
        what: String,
        /// The error.
        source: Box<TaskError>,
    },
}

/// The ttrpc code of an error of `kind`.
pub fn code_of(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::INVALID_ARGUMENT,
        ErrorKind::NotFound => Code::NOT_FOUND,
        ErrorKind::FailedPrecondition => Code::FAILED_PRECONDITION,
        ErrorKind::Unavailable => Code::UNAVAILABLE,
        ErrorKind::NotImplemented => Code::UNIMPLEMENTED,
        ErrorKind::Internal => Code::INTERNAL,
    }
}

impl TaskError {
    /// No such task or process.
    pub fn not_found(what: impl std::fmt::Display) -> TaskError {
        TaskError::NotFound(what.to_string())
    }

    /// Bad request.
    pub fn invalid(message: impl Into<String>) -> TaskError {
        TaskError::Invalid(message.into())
    }

    /// Valid, but not in this state.
    pub fn precondition(message: impl Into<String>) -> TaskError {
        TaskError::Precondition(message.into())
    }

    /// Anything else.
    pub fn internal(message: impl std::fmt::Display) -> TaskError {
        TaskError::Internal(message.to_string())
    }

    /// Adds what was being done.
    pub fn context(self, what: &str) -> TaskError {
        TaskError::Context {
            what: what.to_string(),
            source: Box::new(self),
        }
    }

    /// Whose fault this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            TaskError::NotFound(_) => ErrorKind::NotFound,
            TaskError::AlreadyExists(_) => ErrorKind::FailedPrecondition,
            TaskError::Invalid(_) => ErrorKind::InvalidArgument,
            TaskError::Precondition(_) => ErrorKind::FailedPrecondition,
            TaskError::Sandbox(e) => e.kind(),
            TaskError::Agent(e) => e.kind(),
            TaskError::Internal(_) => ErrorKind::Internal,
            TaskError::NotImplemented(_) => ErrorKind::NotImplemented,
            TaskError::Context { source, .. } => source.kind(),
        }
    }

    /// The ttrpc code containerd gets.
    pub fn code(&self) -> Code {
        match self {
            TaskError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            TaskError::Context { source, .. } => source.code(),
            other => code_of(other.kind()),
        }
    }
}

impl From<SandboxError> for TaskError {
    fn from(e: SandboxError) -> TaskError {
        match e.step() {
            Some(step) => TaskError::Sandbox(e).context(step),
            None => TaskError::Sandbox(e),
        }
    }
}

impl From<TaskError> for ttrpc::Error {
    fn from(e: TaskError) -> ttrpc::Error {
        // One line: guest-written parts are short already (the agent
        // client shortens them).
        let message = e.to_string().replace('\n', " ");
        ttrpc::Error::RpcStatus(get_status(e.code(), message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(e: TaskError) -> (Code, String) {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn agent_refusals_keep_their_class() {
        let e = TaskError::from(AgentError::Refused(protocol::ErrorReply {
            code: protocol::ErrorCode::NotFound,
            message: "container x: not found".into(),
        }));
        assert_eq!(e.code(), Code::NOT_FOUND);
        let (code, message) = status(TaskError::invalid("bad\nline"));
        assert_eq!(code, Code::INVALID_ARGUMENT);
        assert_eq!(message, "bad line");
    }

    #[test]
    fn host_faults_are_not_the_callers() {
        use husk_host::sandbox::BootError;
        let boot = SandboxError::Boot(BootError::DirTooLong("/x".into()));
        assert_eq!(TaskError::from(boot).code(), Code::INTERNAL);
        let hang = TaskError::from(AgentError::Timeout("create_container"));
        assert_eq!(hang.code(), Code::UNAVAILABLE);
        let bad = SandboxError::Invalid("a pod VM has room for 5 network interfaces".into());
        let (code, message) = status(TaskError::from(bad).context("create"));
        assert_eq!(code, Code::INVALID_ARGUMENT);
        assert!(message.starts_with("create: "), "{message}");
        let (code, _) = status(TaskError::AlreadyExists("task a".into()));
        assert_eq!(code, Code::ALREADY_EXISTS);
        let gone = TaskError::from(SandboxError::PodGone);
        assert_eq!(gone.code(), Code::FAILED_PRECONDITION);
        let unimplemented =
            SandboxError::Bundle(husk_host::bundle::BundleError::NotImplemented("x".into()));
        assert_eq!(TaskError::from(unimplemented).code(), Code::UNIMPLEMENTED);
    }
}
