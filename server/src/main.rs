//! `lifeboat-server`: run a Lifeboat datacenter, or manage its region directory.
//! `lifeboat-server --help` explains every subcommand and flag.

#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    lifeboat_server::cli::run(std::env::args_os())
}
