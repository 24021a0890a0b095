//! Exit codes and the one-line failures every command reports.

use std::process::ExitCode;

/// An exit code of the CLI contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Success.
    Ok = 0,
    /// A runtime failure.
    Runtime = 1,
    /// A usage error.
    Usage = 2,
    /// A verification failed (card, key, handshake, bundle).
    Verify = 3,
    /// Not delivered in time; the message stays pending in the outbox.
    NotDelivered = 4,
}

impl From<Code> for ExitCode {
    fn from(c: Code) -> Self {
        ExitCode::from(c as u8)
    }
}

/// A failure: what went wrong and what to do, in one line.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: Code,
    /// The message.
    pub msg: String,
}

impl Failure {
    /// Prints the failure on stderr (and, with `--json`, a JSON error object on stdout).
    pub fn print(&self, json: bool) {
        errln!("error: {}", self.msg);
        if json {
            outln!(
                "{}",
                serde_json::json!({"error": self.msg, "exit": self.code as u8})
            );
        }
    }
}

/// A runtime failure.
pub fn runtime(msg: impl Into<String>) -> Failure {
    Failure {
        code: Code::Runtime,
        msg: msg.into(),
    }
}

/// A usage failure.
pub fn usage(msg: impl Into<String>) -> Failure {
    Failure {
        code: Code::Usage,
        msg: msg.into(),
    }
}

/// A verification failure.
pub fn verify(msg: impl Into<String>) -> Failure {
    Failure {
        code: Code::Verify,
        msg: msg.into(),
    }
}

/// Result of a command.
pub type CmdResult = Result<Code, Failure>;

/// Turns any error into a runtime failure with context.
pub trait Context<T> {
    /// Adds what we were doing.
    fn ctx(self, what: &str) -> Result<T, Failure>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Result<T, Failure> {
        self.map_err(|e| runtime(format!("{what}: {e}")))
    }
}
