//! The control socket: while `listen` runs, `call` and `send` on the same home talk to it
//! instead of starting a second node (two processes signing one audit log would fork it).
//!
//! A unix socket `control.sock` in the home, mode 0600, in a 0700 home; every connection's
//! peer uid is checked against ours. The request/response protocol on top (JSON lines) is
//! the binary's: this module only binds, accepts and checks.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokio::net::{UnixListener, UnixStream};

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Filesystem or socket failure.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// A bound control socket, removed from the filesystem when dropped.
#[derive(Debug)]
pub struct ControlListener {
    listener: UnixListener,
    path: PathBuf,
    uid: u32,
}

impl ControlListener {
    /// Binds `path` (replacing a stale socket left by a process that died; the caller holds
    /// the home lock, so no live process owns it) with mode 0600.
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        let io = |source| ControlError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let listener = UnixListener::bind(path).map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        Ok(ControlListener {
            listener,
            path: path.to_path_buf(),
            uid: nix::unistd::getuid().as_raw(),
        })
    }

    /// The next connection from a process of our own user. Others are dropped.
    pub async fn accept(&self) -> std::io::Result<UnixStream> {
        loop {
            let (stream, _) = self.listener.accept().await?;
            match stream.peer_cred() {
                Ok(cred) if cred.uid() == self.uid => return Ok(stream),
                Ok(cred) => {
                    tracing::warn!(
                        "control socket: refused a connection from uid {}",
                        cred.uid()
                    )
                }
                Err(e) => tracing::warn!("control socket: cannot check the peer: {e}"),
            }
        }
    }
}

impl Drop for ControlListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Connects to a running node's control socket.
pub async fn connect(path: &Path) -> std::io::Result<UnixStream> {
    UnixStream::connect(path).await
}
