//! The `virtseed` command line.

// As in lib.rs: no function past 100 lines (clippy.toml).
#![warn(clippy::too_many_lines)]

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod commands;
mod doctor;
mod salt_modules;

#[derive(Parser)]
#[command(name = "virtseed", version, about, long_about = None)]
struct Cli {
    /// Salt config dir: holds `master`, salt-cloud's `cloud.providers(.d)` and
    /// `cloud.profiles(.d)`, and virtseed's own settings file `virtseed` (YAML).
    #[arg(
        short = 'c',
        long = "config-dir",
        global = true,
        default_value = "/etc/salt",
        env = "VIRTSEED_CONFIG_DIR"
    )]
    config_dir: PathBuf,

    /// Log filter, e.g. `info`, `virtseed=debug` (also RUST_LOG).
    #[arg(long, global = true, default_value = "info", env = "VIRTSEED_LOG")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join the Salt master's bus as a minion-protocol peer and serve cloud jobs.
    Run,
    /// Clone one VM per NAME from a salt-cloud profile.
    Profile {
        /// A profile from cloud.profiles(.d).
        profile: String,
        /// Names of the new VMs (also their minion ids).
        #[arg(required = true)]
        names: Vec<String>,
        /// Clones made at once (default: the profile's `max_parallel`, else 8).
        #[arg(long)]
        parallel: Option<usize>,
        /// Testing: fail right after this step (disks, nvram, defined, started) and roll back.
        #[arg(long, hide = true)]
        fail_after: Option<String>,
    },
    /// Prepare (or refresh) each profile's warm state: boot its base once, until its minion
    /// waits for an identity, and save that running state; `warm: true` clones restore it.
    Warm {
        #[arg(required = true)]
        profiles: Vec<String>,
        /// Remove the profiles' warm states instead (frozen disks clones still use are kept).
        #[arg(long)]
        drop: bool,
    },
    /// Destroy VMs virtseed made, with their volumes, seeds and keys.
    Destroy {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// List the VMs virtseed made.
    List,
    /// Load the configuration, print every resolved profile (secrets masked), exit non-zero
    /// on errors.
    CheckConfig,
    /// Install virtseed's Salt modules (the `cloud` runner, the `libvirt` cloud driver) into
    /// the master's extension modules, and check that Salt loads them.
    InstallRunner {
        /// The Python that runs Salt (default: the interpreter of salt-master, salt-run or
        /// salt-cloud on PATH).
        #[arg(long)]
        salt_python: Option<std::path::PathBuf>,
        /// Write the modules into DIR/runners, DIR/clouds, DIR/output and DIR/utils instead
        /// (for a package), reading no master config.
        #[arg(long, value_name = "DIR")]
        into: Option<std::path::PathBuf>,
    },
    /// Check the site (master config and pki_dir, the sidecar's key and the master, each
    /// provider's libvirt, each profile's base, the Salt modules and their release, the
    /// sidecar they call) and say what to do for each failure; non-zero if any failed.
    Doctor {
        /// The Python that runs Salt (default: the interpreter of salt-master, salt-run or
        /// salt-cloud on PATH).
        #[arg(long)]
        salt_python: Option<std::path::PathBuf>,
        /// `text` (default) or `json`.
        #[arg(long = "out", default_value = "text", value_parser = ["text", "json"])]
        out: String,
    },
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Run => "run",
            Command::Profile { .. } => "profile",
            Command::Warm { .. } => "warm",
            Command::Destroy { .. } => "destroy",
            Command::List => "list",
            Command::CheckConfig => "check-config",
            Command::InstallRunner { .. } => "install-runner",
            Command::Doctor { .. } => "doctor",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    // Colour only on a terminal (journald and log files get plain text, one event a line),
    // and never with NO_COLOR set.
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    let name = cli.command.name();
    let result = match cli.command {
        Command::Run => {
            let rt = runtime();
            let r = rt.block_on(virtseed::sidecar::run(&cli.config_dir));
            // SIGTERM (`systemctl stop`): leave now, not when the creates still in a blocking
            // step end (dropping the runtime would wait for them). They are left as a crash
            // leaves them: journaled, and rolled back by the next start.
            rt.shutdown_background();
            r
        }
        Command::Profile {
            profile,
            names,
            parallel,
            fail_after,
        } => runtime().block_on(commands::profile(
            &cli.config_dir,
            &profile,
            &names,
            parallel,
            fail_after.as_deref(),
        )),
        Command::Warm { profiles, drop } => {
            runtime().block_on(commands::warm(&cli.config_dir, &profiles, drop))
        }
        Command::Destroy { names } => {
            runtime().block_on(commands::destroy(&cli.config_dir, &names))
        }
        Command::List => commands::list(&cli.config_dir),
        Command::CheckConfig => commands::check_config(&cli.config_dir),
        Command::InstallRunner { salt_python, into } => match into {
            Some(dir) => salt_modules::write_into(&dir),
            None => salt_modules::install(&cli.config_dir, salt_python.as_deref()),
        },
        Command::Doctor { salt_python, out } => {
            doctor::run(&cli.config_dir, salt_python.as_deref(), out == "json")
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<commands::Failed>() => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("virtseed {name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
