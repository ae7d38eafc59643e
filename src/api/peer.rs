//! Who is on the other end of the socket (SO_PEERCRED), and whether they may use admin
//! endpoints: root, the daemon's own user, or a member of `socket.admin_group`.

use tokio::net::UnixStream;

use crate::config::Settings;

/// Credentials of the connected process, as the kernel reports them (`connections` puts them
/// in each request's extensions as `ConnectInfo<Peer>`).
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// Effective user id; `u32::MAX` if the kernel would not say.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// Process id, when known (for supplementary groups).
    pub pid: Option<i32>,
}

impl Peer {
    /// The process on the other end of `stream`.
    pub fn of(stream: &UnixStream) -> Peer {
        match stream.peer_cred() {
            Ok(c) => Peer {
                uid: c.uid(),
                gid: c.gid(),
                pid: c.pid(),
            },
            Err(_) => Peer {
                uid: u32::MAX,
                gid: u32::MAX,
                pid: None,
            },
        }
    }
}

impl Peer {
    /// Whether this peer may use admin endpoints.
    pub fn is_admin(&self, settings: &Settings) -> bool {
        if self.uid == 0 || self.uid == nix::unistd::geteuid().as_raw() {
            return true;
        }
        let group = settings.socket.admin_group.trim();
        if group.is_empty() {
            return false;
        }
        let Ok(Some(group)) = nix::unistd::Group::from_name(group) else {
            return false;
        };
        let gid = group.gid.as_raw();
        self.gid == gid
            || self
                .pid
                .is_some_and(|pid| supplementary_groups(pid).contains(&gid))
    }
}

/// The `Groups:` line of `/proc/PID/status`.
fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
