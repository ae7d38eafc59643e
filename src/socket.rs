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

/// The listening sockets systemd handed over (`LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES`).
/// They belong to systemd: never unlinked or chmodded by the daemon.
#[derive(Debug, Default)]
pub struct Activated {
    /// The API's Unix socket (`caxton.socket`), with the path it is bound to.
    pub api: Option<(UnixListener, Option<PathBuf>)>,
    /// TCP sockets for metrics (`caxton-metrics.socket`), with their names.
    pub metrics: Vec<(std::net::TcpListener, String)>,
    /// TCP sockets for the API (`caxton-api.socket`), with their names.
    pub api_tcp: Vec<(std::net::TcpListener, String)>,
}

/// Whether a TCP socket systemd passed as `name` serves the API: `caxton-api.socket` names its
/// socket `api` (`FileDescriptorName=`), or systemd names it after the unit when a drop-in
/// clears the name. Every other TCP socket serves metrics only, so a socket whose name was
/// changed by mistake exposes the least.
pub fn is_api_socket(name: &str) -> bool {
    name == "api" || name == "caxton-api.socket"
}

/// The sockets systemd passed, told apart by what they are: the one Unix socket serves the
/// API; a TCP socket named `api` serves the API too ([`is_api_socket`]), any other serves
/// metrics.
pub fn from_systemd() -> Result<Activated, SocketError> {
    use nix::sys::socket::{
        AddressFamily, SockaddrLike, SockaddrStorage, getsockname, getsockopt, sockopt,
    };
    use std::os::fd::{FromRawFd, OwnedFd};
    let activation_err = |reason: String| SocketError::Io {
        op: "use",
        path: PathBuf::from("the sockets passed by systemd (LISTEN_FDS)"),
        source: io::Error::new(io::ErrorKind::InvalidInput, reason),
    };
    let mut activated = Activated::default();
    for (fd, name) in
        sd_notify::listen_fds_with_names().map_err(|e| activation_err(e.to_string()))?
    {
        // SAFETY: sd_listen_fds hands these descriptors to us alone; nothing else owns them.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        if !getsockopt(&owned, sockopt::AcceptConn).unwrap_or(false) {
            return Err(activation_err(format!(
                "{name:?} is not a listening stream socket; use ListenStream= in its socket unit"
            )));
        }
        let addr: SockaddrStorage =
            getsockname(fd).map_err(|e| activation_err(format!("{name:?}: getsockname: {e}")))?;
        match addr.family() {
            Some(AddressFamily::Unix) => {
                if activated.api.is_some() {
                    return Err(activation_err(format!(
                        "a second Unix socket, {name:?}; caxton.socket must have exactly one ListenStream=/path"
                    )));
                }
                let path = addr
                    .as_unix_addr()
                    .and_then(|a| a.path())
                    .map(Path::to_path_buf);
                let listener = UnixListener::from(owned);
                listener.set_nonblocking(true).map_err(|e| {
                    activation_err(format!("cannot make {name:?} non-blocking: {e}"))
                })?;
                activated.api = Some((listener, path));
            }
            Some(AddressFamily::Inet | AddressFamily::Inet6) => {
                let socket = std::net::TcpListener::from(owned);
                if is_api_socket(&name) {
                    activated.api_tcp.push((socket, name));
                } else {
                    activated.metrics.push((socket, name));
                }
            }
            _ => {
                return Err(activation_err(format!(
                    "{name:?} is neither a Unix nor a TCP socket; caxton.socket takes ListenStream=/path, caxton-metrics.socket and caxton-api.socket ListenStream=[ADDRESS:]PORT"
                )));
            }
        }
    }
    Ok(activated)
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
