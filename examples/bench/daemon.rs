//! The real `caxtond` the benchmark drives: its configuration in a temporary directory, the
//! process (pinned to its own CPUs when asked, so the client runs beside it rather than on
//! its cores), and the wait until it serves.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::client::Conn;

/// A running daemon; killed when dropped.
pub struct Daemon {
    child: Child,
    pub pid: u32,
    pub socket: PathBuf,
    /// From its start to its first embedding.
    pub ready: Duration,
}

/// What the daemon serves and where it runs.
pub struct Setup<'a> {
    pub caxtond: &'a Path,
    /// Its configuration, socket and state go here.
    pub dir: &'a Path,
    /// The directory of the benchmarked package (the daemon's bundled directory).
    pub packages: &'a Path,
    pub model_id: &'a str,
    pub precision: caxton::engine::Precision,
    /// `taskset -c` CPU list for the daemon; `None`: the benchmark's own CPUs.
    pub cpus: Option<&'a str>,
}

impl Daemon {
    /// Starts the daemon serving `setup.model_id` as its default and waits (at most 120 s)
    /// until it answers an embedding.
    pub fn start(setup: &Setup<'_>, rt: &tokio::runtime::Runtime) -> anyhow::Result<Daemon> {
        let (dir, id, precision) = (setup.dir, setup.model_id, setup.precision);
        std::fs::write(
            dir.join("caxton.yaml"),
            format!(
                "socket:\n  path: {}\nstate_dir: {}\nmodels:\n  bundled_dir: {}\n  package_dir: {}\n  default: {id}\n  precision: {{{id}: {precision}}}\nlog:\n  level: warn\n",
                dir.join("caxton.sock").display(),
                dir.join("state").display(),
                setup.packages.display(),
                dir.join("packages").display()
            ),
        )?;
        let started = Instant::now();
        let mut cmd = match setup.cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(setup.caxtond);
                c
            }
            None => Command::new(setup.caxtond),
        };
        let child = cmd
            .arg("--config-dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()?;
        let pid = child.id();
        let mut daemon = Daemon {
            child,
            pid,
            socket: dir.join("caxton.sock"),
            ready: Duration::ZERO,
        };
        rt.block_on(async {
            loop {
                if let Ok(mut c) = Conn::open(&daemon.socket).await
                    && c.embed(&["warm up".to_string()]).await.is_ok()
                {
                    break;
                }
                if let Some(status) = daemon.child.try_wait()? {
                    bail!("caxtond exited ({status}) before serving");
                }
                if started.elapsed() > Duration::from_secs(120) {
                    bail!("caxtond did not serve within 120 s");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(())
        })?;
        daemon.ready = started.elapsed();
        Ok(daemon)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
