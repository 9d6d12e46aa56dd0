//! `ibdctl`: the operator's command line. Thin over [`ibdctl::Control`]; `ibdctl serve` runs the
//! HTTP API over the same core.

use std::io::{Read, Seek, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use ibdctl::binaries::Binaries;
use ibdctl::control::{self, DEFAULT_COMPUTE};
use ibdctl::home::Home;
use ibdctl::model::{ComputeStatus, CreateCompute, CreateProject, RunState, StackStatus};
use ibdctl::progress::Reporter;
use ibdctl::store::ComputeConfig;
use ibdctl::{Control, EnvUrls, UpOptions};

const DEFAULT_HOME: &str = ".ibd-local";

#[derive(Parser)]
#[command(
    name = "ibdctl",
    version,
    about = "Brings up pageserver-lite, walsync, a fuse-ibd mount and a stock MariaDB on it; control plane for projects and computes"
)]
struct Cli {
    /// Home of the stack: state, service data, computes, logs.
    #[arg(long, global = true, env = "IBDCTL_HOME", default_value = DEFAULT_HOME)]
    home: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Bring up the whole stack (idempotent: reports what already runs) and print how to connect.
    Up(UpArgs),
    /// Stop everything: control plane, computes (cleanly), services. The state stays.
    Down,
    /// What runs, as a table or JSON.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Start, stop, create, list, wipe and delete computes.
    Compute {
        #[command(subcommand)]
        command: ComputeCmd,
    },
    /// Create, list and delete projects (one timeline each).
    Project {
        #[command(subcommand)]
        command: ProjectCmd,
    },
    /// Open the mariadb client on a compute (arguments after `--` go to the client).
    Sql {
        /// Default: the only compute, or `main`.
        #[arg(long)]
        compute: Option<String>,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Show a component's log: control-plane, pageserver-lite, walsync, fuse-ibd, mariadbd, install.
    Logs {
        component: String,
        /// The compute, for fuse-ibd, mariadbd and install (default: the only one, or `main`).
        #[arg(long)]
        compute: Option<String>,
        /// How many lines from the end.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        /// Keep printing what is appended.
        #[arg(short, long)]
        follow: bool,
    },
    /// Run the control plane: the HTTP API and the supervisor of the computes.
    Serve {
        #[arg(long, env = "IBDCTL_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

#[derive(Args)]
struct UpArgs {
    /// The control plane's port (moves to the next free one if taken).
    #[arg(long, env = "IBDCTL_API_PORT", default_value_t = control::DEFAULT_API_PORT)]
    api_port: u16,
    #[arg(long, env = "IBDCTL_PAGESERVER_PORT", default_value_t = control::DEFAULT_PAGESERVER_PORT)]
    pageserver_port: u16,
    #[arg(long, env = "IBDCTL_WALSYNC_PORT", default_value_t = control::DEFAULT_WALSYNC_PORT)]
    walsync_port: u16,
    /// MariaDB's TCP port, for a compute created now.
    #[arg(long, env = "MARIADB_PORT", default_value_t = control::DEFAULT_MARIADB_PORT)]
    mariadb_port: u16,
    /// fuse-ibd's metrics port, for a compute created now.
    #[arg(long, default_value_t = control::DEFAULT_METRICS_PORT)]
    metrics_port: u16,
    /// Do not start the control plane (no API, no supervision).
    #[arg(long)]
    no_control_plane: bool,
    /// Do not install missing packages; say what is missing instead.
    #[arg(long)]
    no_install: bool,
    /// An extra `[mariadbd]` line for the compute's my.cnf (repeatable).
    #[arg(long = "config", value_name = "LINE")]
    extra_config: Vec<String>,
}

#[derive(Subcommand)]
enum ComputeCmd {
    /// Start a compute (and mark it to run).
    Start {
        name: Option<String>,
        /// Delete the compute's whole local disk first: it comes back from the storage services.
        #[arg(long)]
        fresh: bool,
    },
    /// Stop a compute (and mark it stopped).
    Stop {
        name: Option<String>,
        /// SIGKILL mariadbd and fuse-ibd: a crash.
        #[arg(long)]
        kill: bool,
    },
    /// Delete a stopped compute's local disk: its next start is a fresh node.
    Wipe { name: Option<String> },
    /// Create a compute in a project.
    Create {
        name: String,
        #[arg(long, default_value = "main")]
        project: String,
        /// MariaDB's TCP port (default: the first free one from 3307).
        #[arg(long)]
        port: Option<u16>,
        #[arg(long, env = "PAGE_SERVER_URL")]
        page_server_url: Option<String>,
        #[arg(long, env = "SAFEKEEPER_URL")]
        safekeeper_url: Option<String>,
        /// The MariaDB server binary (default mariadbd).
        #[arg(long)]
        image: Option<String>,
        /// An extra `[mariadbd]` line for its my.cnf (repeatable).
        #[arg(long = "config", value_name = "LINE")]
        extra_config: Vec<String>,
        /// Create it stopped.
        #[arg(long)]
        no_start: bool,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop a compute and delete it with its local disk and logs.
    Delete { name: String },
}

#[derive(Subcommand)]
enum ProjectCmd {
    Create {
        id: String,
        /// Default: the project id.
        #[arg(long)]
        timeline: Option<String>,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a project without computes (its timeline stays in the storage services).
    Delete { id: String },
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The error says what failed and what to do; a backtrace would only bury it.
            eprintln!("ibdctl: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Cmd::Serve { .. });
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| if serving { "info" } else { "warn" }.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    let home = Home::new(&cli.home)?;
    let hint = Hint::new(&home)?;
    let reporter = if matches!(cli.command, Cmd::Serve { .. }) {
        Reporter::Log
    } else {
        Reporter::Stderr
    };
    let control = Control::new(
        home.clone(),
        Binaries::next_to_current_exe()?,
        reporter,
        EnvUrls::from_env(),
    );
    match cli.command {
        Cmd::Up(args) => {
            let opts = UpOptions {
                api_port: args.api_port,
                pageserver_port: args.pageserver_port,
                walsync_port: args.walsync_port,
                mariadb_port: args.mariadb_port,
                metrics_port: args.metrics_port,
                control_plane: !args.no_control_plane,
                install: !args.no_install,
                extra_config: args.extra_config,
            };
            let report = control.up(&opts).await?;
            print_up(&report, &hint);
        }
        Cmd::Down => control.down().await?,
        Cmd::Status { json } => {
            let status = control.status().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
        }
        Cmd::Compute { command } => compute(&control, command).await?,
        Cmd::Project { command } => match command {
            ProjectCmd::Create { id, timeline } => {
                let project = control.create_project(&CreateProject { id, timeline }).await?;
                println!("{}", serde_json::to_string_pretty(&project)?);
            }
            ProjectCmd::List { json } => {
                let projects = control.list_projects()?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&projects)?);
                } else {
                    println!("{:<20} {:<20} INITIALIZED", "PROJECT", "TIMELINE");
                    for p in projects {
                        println!("{:<20} {:<20} {}", p.id, p.timeline, p.initialized);
                    }
                }
            }
            ProjectCmd::Delete { id } => control.delete_project(&id).await?,
        },
        Cmd::Sql { compute, args } => {
            let name = pick_compute(&control, compute)?;
            let status = control.compute_status(&name).await?;
            if !Path::new(&status.socket).exists() || status.mariadbd_pid.is_none() {
                bail!(
                    "compute {name} is not running ({}): start it with `{}`",
                    status.state.as_str(),
                    hint.cmd(&format!("compute start {name}"))
                );
            }
            let err = std::process::Command::new(ibdctl::prereq::tool("mariadb")?)
                .arg(format!("--socket={}", status.socket))
                .arg("-uroot")
                .args(args)
                .exec();
            bail!("cannot run the mariadb client ({err}): apt-get install mariadb-client");
        }
        Cmd::Logs {
            component,
            compute,
            lines,
            follow,
        } => {
            let path = log_path(&control, &component, compute)?;
            show_log(&path, lines, follow).await?;
        }
        Cmd::Serve { listen } => {
            let control = Arc::new(control);
            ibdctl::api::run(control, listen, shutdown_signal()).await?;
        }
    }
    Ok(())
}

async fn compute(control: &Control, command: ComputeCmd) -> Result<()> {
    match command {
        ComputeCmd::Start { name, fresh } => {
            let name = pick_compute(control, name)?;
            let status = control.start_compute(&name, fresh).await?;
            println!("compute {name} runs: {}", status.connect);
        }
        ComputeCmd::Stop { name, kill } => {
            let name = pick_compute(control, name)?;
            control.stop_compute(&name, kill).await?;
            println!(
                "compute {name} {}",
                if kill { "killed (crashed)" } else { "stopped" }
            );
        }
        ComputeCmd::Wipe { name } => {
            let name = pick_compute(control, name)?;
            control.wipe_compute(&name).await?;
        }
        ComputeCmd::Create {
            name,
            project,
            port,
            page_server_url,
            safekeeper_url,
            image,
            extra_config,
            no_start,
        } => {
            let req = CreateCompute {
                name: Some(name),
                config: ComputeConfig {
                    image,
                    page_server_url,
                    safekeeper_url,
                    port,
                    extra_config,
                },
                start: !no_start,
            };
            let status = control.create_compute(&project, &req).await?;
            println!("{}", serde_json::to_string_pretty(&status)?);
        }
        ComputeCmd::List { json } => {
            let computes = control.list_computes(None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&computes)?);
            } else {
                print_computes(&computes);
            }
        }
        ComputeCmd::Delete { name } => control.delete_compute(&name).await?,
    }
    Ok(())
}

/// The compute a command means: the one named, else `main`, else the only one.
fn pick_compute(control: &Control, given: Option<String>) -> Result<String> {
    if let Some(name) = given {
        return Ok(name);
    }
    let state = control.state()?;
    if state.computes.contains_key(DEFAULT_COMPUTE) {
        return Ok(DEFAULT_COMPUTE.into());
    }
    match state.computes.keys().collect::<Vec<_>>().as_slice() {
        [only] => Ok((*only).clone()),
        [] => bail!("there is no compute yet: `ibdctl up` creates one"),
        many => bail!(
            "which compute? give its name (one of: {})",
            many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn log_path(control: &Control, component: &str, compute: Option<String>) -> Result<PathBuf> {
    let home = control.home();
    Ok(match component {
        "control-plane" | "api" | "serve" => home.control_log(),
        "pageserver-lite" | "pageserver" => home.service_log("pageserver-lite"),
        "walsync" | "safekeeper" => home.service_log("walsync"),
        "mariadbd" | "mariadb" | "fuse-ibd" | "fuse" | "install" => {
            let paths = home.compute(&pick_compute(control, compute)?);
            match component {
                "mariadbd" | "mariadb" => paths.mariadbd_log,
                "install" => paths.install_log,
                _ => paths.fuse_log,
            }
        }
        other => bail!(
            "no component {other:?}: one of control-plane, pageserver-lite, walsync, fuse-ibd, mariadbd, install"
        ),
    })
}

async fn show_log(path: &Path, lines: usize, follow: bool) -> Result<()> {
    if !path.exists() {
        bail!(
            "{} does not exist (yet): the component has not run",
            path.display()
        );
    }
    println!("{}", ibdctl::process::tail(path, lines));
    if !follow {
        return Ok(());
    }
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    file.seek(std::io::SeekFrom::End(0))?;
    let mut stdout = std::io::stdout();
    loop {
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        if !buf.is_empty() {
            stdout.write_all(&buf)?;
            stdout.flush()?;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler can be installed");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping the control plane (computes keep running)"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping the control plane (computes keep running)"),
    }
}

/// How to call ibdctl again in the lines printed for the operator: `IBDCTL_COMMAND` (set by
/// scripts/up.sh), else the program as invoked; `--home` (after the command, where both accept
/// it) when it is not the default.
struct Hint {
    program: String,
    home: Option<String>,
}

impl Hint {
    fn new(home: &Home) -> Result<Self> {
        let program = std::env::var("IBDCTL_COMMAND")
            .ok()
            .or_else(|| std::env::args().next())
            .unwrap_or_else(|| "ibdctl".into());
        let default = Home::new(Path::new(DEFAULT_HOME))?;
        let home = (home.root() != default.root()).then(|| home.root().display().to_string());
        Ok(Self { program, home })
    }

    /// The command line of `ibdctl <command>`.
    fn cmd(&self, command: &str) -> String {
        match &self.home {
            Some(home) => format!("{} {command} --home {home}", self.program),
            None => format!("{} {command}", self.program),
        }
    }
}

fn print_up(report: &control::UpReport, hint: &Hint) {
    let c = &report.compute;
    println!();
    println!(
        "MariaDB is up on a fuse-ibd datadir (project {}, timeline {}).",
        c.project, c.timeline
    );
    println!("  connect:        {}", c.connect);
    println!("                  {}", c.connect_tcp);
    println!("                  {}", hint.cmd("sql"));
    println!(
        "  storage:        pageserver-lite {}, walsync {}",
        report.pageserver_url, report.walsync_url
    );
    if let Some(url) = &report.control_plane_url {
        println!("  control plane:  {url}/api/v1/projects (API: ibdctl/docs/api.md)");
    }
    println!("  metrics:        {} (fuse-ibd)", c.metrics_url);
    println!("  status:         {}", hint.cmd("status"));
    println!(
        "  logs:           {}",
        hint.cmd("logs mariadbd|fuse-ibd|pageserver-lite|walsync|control-plane")
    );
    println!(
        "  crash it, then restart it stateless (local disk wiped):\n                  {} && {}",
        hint.cmd("compute stop --kill"),
        hint.cmd("compute start --fresh")
    );
    println!("  stop:           {}", hint.cmd("down"));
}

fn print_status(status: &StackStatus) {
    println!("home: {}", status.home);
    println!("{:<26} {:<24} {:<16} WHERE", "COMPONENT", "STATE", "PID");
    for s in std::iter::once(&status.control_plane).chain(&status.services) {
        println!(
            "{:<26} {:<24} {:<16} {}",
            s.name,
            s.state.as_str(),
            s.pid.map_or("-".into(), |p| p.to_string()),
            s.url.as_deref().unwrap_or("-")
        );
    }
    print_computes(&status.computes);
}

fn print_computes(computes: &[ComputeStatus]) {
    for c in computes {
        let pids = match (c.mariadbd_pid, c.fuse_ibd_pid) {
            (None, None) => "-".to_string(),
            (m, f) => format!(
                "{}/{}",
                m.map_or("-".into(), |p| p.to_string()),
                f.map_or("-".into(), |p| p.to_string())
            ),
        };
        let state = match (c.state, c.answering) {
            (RunState::Running, false) => "running (not answering)".to_string(),
            (state, _) => state.as_str().to_string(),
        };
        println!(
            "{:<26} {:<24} {:<16} {}",
            format!("compute {} ({})", c.name, c.project),
            state,
            pids,
            if c.state == RunState::Running {
                &c.connect_tcp
            } else {
                &c.datadir
            }
        );
        for problem in &c.problems {
            println!("    ! {problem}");
        }
        if c.restarts > 0 {
            println!(
                "    restarted {} time(s) after a crash; last: {}",
                c.restarts,
                c.last_crash.as_deref().unwrap_or("?")
            );
        }
        if let Some(e) = &c.last_error {
            println!("    last restart failed: {e}");
        }
    }
    if !computes.is_empty() {
        println!("(compute PIDs: mariadbd/fuse-ibd)");
    }
}
