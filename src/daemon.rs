//! `caxtond`'s command line: parse flags, load and check the configuration, bind the socket,
//! then hand over to [`crate::server::run`] until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::config::{DEFAULT_CONFIG_DIR, Settings};

/// caxtond: the Caxton embedding daemon.
#[derive(Debug, Parser)]
#[command(
    name = "caxtond",
    version,
    about = "Offline sentence-embedding daemon serving HTTP on a Unix socket"
)]
pub struct Args {
    /// Configuration directory holding caxton.yaml and conf.d/*.yaml.
    #[arg(long, env = "CAXTON_CONFIG_DIR", default_value = DEFAULT_CONFIG_DIR)]
    pub config_dir: PathBuf,
    /// Validate the configuration and exit: 0 when valid, 1 with the file and key otherwise.
    #[arg(long)]
    pub check_config: bool,
}

/// Entry point of the `caxtond` binary.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let settings = match Settings::load(&args.config_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "caxtond: invalid configuration in {}: {e}",
                args.config_dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    if args.check_config {
        println!("configuration in {} is valid", args.config_dir.display());
        return ExitCode::SUCCESS;
    }
    crate::logging::init(&settings.log.level);
    match crate::clock::init() {
        Ok(None) => {}
        Ok(Some(t)) => tracing::warn!(
            caxton_event = "test_clock",
            "{} is set: this daemon's clock starts at {} (for tests only; usage habits and predictions follow it)",
            crate::clock::TEST_CLOCK_VAR,
            humantime::format_rfc3339_seconds(t)
        ),
        Err(e) => {
            eprintln!("caxtond: {e}; unset it (it exists for tests only)");
            return ExitCode::FAILURE;
        }
    }
    crate::memory::fix_mmap_threshold();
    // Named, so `top -H` and /proc say which threads compute (unnamed, they would take the
    // name of whichever thread first used the pool). The count still follows
    // RAYON_NUM_THREADS, else the CPUs.
    if let Err(e) = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("caxton-compute{i}"))
        .build_global()
    {
        tracing::warn!("the compute threads keep rayon's defaults: {e}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .thread_name("caxton-async")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("caxtond: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(settings, args.config_dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(caxton_event = "fatal", "{e:#}");
            eprintln!("caxtond: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings, config_dir: PathBuf) -> anyhow::Result<()> {
    // Sockets from systemd (caxton.socket, caxton-metrics.socket, caxton-api.socket) are systemd's: used as they
    // are, never unlinked.
    let activated = crate::socket::from_systemd()?;
    let (listener, _owned, socket_activated) = match activated.api {
        Some((listener, path)) => {
            let path = path.unwrap_or_default();
            tracing::info!("serving on the socket systemd passed ({})", path.display());
            if path != settings.socket.path {
                tracing::warn!(
                    "systemd passed a socket at {} but socket.path is {}; serving on the former (set ListenStream= in caxton.socket to match)",
                    path.display(),
                    settings.socket.path.display()
                );
            }
            (listener, None, true)
        }
        None => {
            let (listener, owned) =
                crate::socket::bind(&settings.socket.path, settings.socket.mode)?;
            (listener, Some(owned), false)
        }
    };
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let shutdown = shutdown_signal()?;
    let listeners = crate::server::Listeners {
        api: listener,
        socket_activated,
        metrics: activated.metrics,
        api_tcp: activated.api_tcp,
    };
    crate::server::run(listeners, settings, config_dir, shutdown).await
}

/// Resolves on the first SIGTERM or SIGINT.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
