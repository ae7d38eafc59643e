//! Binding the Unix socket: replace a stale socket left by a crash, never touch a live one or
//! a non-socket file, and set the configured mode.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::config::Mode;

/// Why the socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another process answers on the path.
    #[error(
        "another process is serving on {0}; stop it (systemctl stop caxton) or set a different socket.path"
    )]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("{0} exists and is not a socket; remove it or set a different socket.path")]
    NotASocket(PathBuf),
    /// Any OS error, with what was being done.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// A socket this process created, unlinked again when dropped (a socket handed over by
/// systemd is never wrapped in this).
pub struct OwnedSocket {
    path: PathBuf,
}

impl Drop for OwnedSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The listening socket systemd handed over (`LISTEN_FDS`/`LISTEN_PID`, from `caxton.socket`),
/// if any, with the path it is bound to. Such a socket belongs to systemd: it is never
/// unlinked or chmodded by the daemon.
pub fn from_systemd() -> Result<Option<(UnixListener, Option<PathBuf>)>, SocketError> {
    use nix::sys::socket::{
        AddressFamily, SockaddrLike, UnixAddr, getsockname, getsockopt, sockopt,
    };
    use std::os::fd::{FromRawFd, OwnedFd};
    let activation_err = |reason: String| SocketError::Io {
        op: "use",
        path: PathBuf::from("the socket passed by systemd (LISTEN_FDS)"),
        source: io::Error::new(io::ErrorKind::InvalidInput, reason),
    };
    let fds: Vec<i32> = sd_notify::listen_fds()
        .map_err(|e| activation_err(e.to_string()))?
        .collect();
    let fd = match fds.as_slice() {
        [] => return Ok(None),
        [fd] => *fd,
        more => {
            return Err(activation_err(format!(
                "systemd passed {} sockets; caxton.socket must have exactly one ListenStream=",
                more.len()
            )));
        }
    };
    // SAFETY: sd_listen_fds hands this descriptor to us alone; nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr: UnixAddr =
        getsockname(fd).map_err(|e| activation_err(format!("getsockname: {e}")))?;
    if addr.family() != Some(AddressFamily::Unix) {
        return Err(activation_err(
            "it is not a Unix socket; caxton.socket must use ListenStream=/path".into(),
        ));
    }
    if !getsockopt(&owned, sockopt::AcceptConn).unwrap_or(false) {
        return Err(activation_err(
            "it is not a listening stream socket; caxton.socket must use ListenStream=".into(),
        ));
    }
    let listener = UnixListener::from(owned);
    listener
        .set_nonblocking(true)
        .map_err(|e| activation_err(format!("cannot make it non-blocking: {e}")))?;
    Ok(Some((listener, addr.path().map(Path::to_path_buf))))
}

/// Binds `path` with `mode`, creating the parent directory if needed.
pub fn bind(path: &Path, mode: Mode) -> Result<(UnixListener, OwnedSocket), SocketError> {
    let io_err = |op, source| SocketError::Io {
        op,
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| SocketError::Io {
            op: "create the directory",
            path: parent.to_path_buf(),
            source: e,
        })?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(SocketError::InUse(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(
                    "removing stale socket {} left by an earlier run",
                    path.display()
                );
                std::fs::remove_file(path).map_err(|e| io_err("remove the stale socket", e))?;
            }
            Err(e) => return Err(io_err("probe the existing socket", e)),
        },
        Ok(_) => return Err(SocketError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect", e)),
    }
    let listener = UnixListener::bind(path).map_err(|e| io_err("bind", e))?;
    let owned = OwnedSocket {
        path: path.to_path_buf(),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode.0))
        .map_err(|e| io_err("set the mode of", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| io_err("configure", e))?;
    Ok((listener, owned))
}
