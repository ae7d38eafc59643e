//! Writes the packages' generated assets from the binaries' own clap definitions, so they
//! never drift from the flags: man pages (`man/caxtond.8`, `man/caxton.1`) and shell completions
//! for both binaries (`completions/{bash,zsh,fish}/…`). Run by `packaging/build`:
//!
//!     cargo run --release --example gen_assets -- OUT_DIR

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        bail!("usage: gen_assets OUT_DIR");
    };
    let out = PathBuf::from(out);
    // The daemon is an administrator's command (section 8); the CLI is for everyone (section 1).
    let commands = [
        (caxton::daemon::Args::command(), "8"),
        (caxton::cli::Cli::command(), "1"),
    ];
    for (command, section) in commands {
        write_man(&out.join("man"), command.clone(), section)?;
        write_completions(&out.join("completions"), command)?;
    }
    Ok(())
}

fn write_man(dir: &Path, command: clap::Command, section: &str) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join(format!("{}.{section}", command.get_name()));
    let mut page = Vec::new();
    clap_mangen::Man::new(command)
        .section(section)
        .manual("Caxton")
        .render(&mut page)
        .with_context(|| format!("render {}", path.display()))?;
    fs::write(&path, page).with_context(|| format!("write {}", path.display()))
}

fn write_completions(dir: &Path, mut command: clap::Command) -> anyhow::Result<()> {
    let name = command.get_name().to_string();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let shell_dir = dir.join(shell.to_string());
        fs::create_dir_all(&shell_dir)
            .with_context(|| format!("create {}", shell_dir.display()))?;
        clap_complete::generate_to(shell, &mut command, &name, &shell_dir)
            .with_context(|| format!("write {shell} completions for {name}"))?;
    }
    Ok(())
}
