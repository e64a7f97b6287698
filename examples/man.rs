//! Writes the man pages of the programs, made from their command-line definitions, so the
//! options are documented in one place (`--help` and these pages say the same):
//!
//! ```sh
//! cargo run --all-features --example man -- target/man
//! man target/man/sensehat-monitor.1
//! ```
//!
//! One page a program, and one a subcommand (`sensehat-monitor-status.1`, ...).

use std::path::{Path, PathBuf};

use clap::CommandFactory;

fn main() -> std::io::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("target/man"), PathBuf::from);
    std::fs::create_dir_all(&out)?;
    for command in [
        sensehat_monitor::config::Cli::command(),
        sensehat_monitor::firehose::config::Cli::command(),
        sensehat_monitor::forwarder::Cli::command(),
        sensehat_monitor::firehose_local::Cli::command(),
        sensehat_monitor::dashboard::config::Cli::command(),
    ] {
        write_pages(&out, command)?;
    }
    Ok(())
}

/// Write `command`'s page, then one for each of its subcommands, named `parent-sub.1`.
fn write_pages(dir: &Path, command: clap::Command) -> std::io::Result<()> {
    let command = command.disable_help_subcommand(true);
    let name = command.get_name().to_string();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut page)?;
    std::fs::write(dir.join(format!("{name}.1")), page)?;
    println!("{}", dir.join(format!("{name}.1")).display());
    for sub in command.get_subcommands() {
        // clap takes names as &'static str; this one-shot tool keeps the few it makes.
        let page_name: &'static str =
            Box::leak(format!("{name}-{}", sub.get_name()).into_boxed_str());
        let sub = sub
            .clone()
            .name(page_name)
            .bin_name(format!("{name} {}", sub.get_name()));
        write_pages(dir, sub)?;
    }
    Ok(())
}
