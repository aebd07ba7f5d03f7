//! `portcullis`: the reference Portcullis gateway, an identity-aware PostgreSQL gateway.
//!
//! Run with
//!
//! ```text
//! cargo run -p portcullis-gateway -- demo
//! ```
//!
//! Expected output (ports and tokens vary):
//!
//! ```text
//! starting PostgreSQL...
//! loading sample data...
//! starting the gateway...
//!
//! Portcullis demo is running.
//! ...
//!   PGPASSWORD=3f9c… psql "host=127.0.0.1 port=41234 dbname=app user=alice"
//! ```
//!
//! The commands (INTERFACE.md):
//!
//! - `portcullis run [--config FILE]` — run the gateway; `SIGHUP` reloads the file,
//!   `SIGTERM`/`SIGINT` drain and exit 0. Exit 2 if the configuration has problems.
//! - `portcullis check [--config FILE]` — validate: exit 0, or exit 2 listing every problem
//!   with its line.
//! - `portcullis token hash` — read a token on stdin, print the `sha256` for the config.
//! - `portcullis token inspect [TOKEN] [--config FILE]` — a token's claims and validity, and
//!   whether the configured OpenID Connect provider's checks accept it.
//! - `portcullis login --issuer URL --client-id ID` — sign in with the OAuth device
//!   authorization grant (or `--client-credentials`) and print the token.
//! - `portcullis demo [--port N]` — a self-contained tour with a throwaway PostgreSQL.
//! - `portcullis approvals list|approve ID|deny ID [--admin URL] [--token T] [--json]` — work
//!   the approval queue through the admin API.
//! - `portcullis audit keygen [--out FILE]` — make the key that signs audit checkpoints.
//! - `portcullis audit verify PATH… [--key K] [--checkpoints FILE] [--live]` — check a JSONL
//!   trail: exit 0 if intact, 1 naming the first bad record.
//! - `portcullis audit show PATH… [--session ID] [--json]` — the trail as a timeline.
#![forbid(unsafe_code)]

mod admin;
mod approvals;
mod audit;
mod config;
mod demo;
mod login;
mod revoke;
mod run;
mod threads;

use std::io::{IsTerminal as _, Read as _};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// An identity-aware gateway for PostgreSQL, MySQL/MariaDB and HTTP APIs.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (logs to stderr; SIGHUP reloads, SIGTERM/SIGINT drain and exit).
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = "portcullis.toml")]
        config: PathBuf,
    },
    /// Validate a configuration: exit 0, or exit 2 with every problem and its line.
    Check {
        /// The configuration file.
        #[arg(long, short, default_value = "portcullis.toml")]
        config: PathBuf,
    },
    /// Sign in with an OpenID Connect provider and print the token (device authorization
    /// grant; `--client-credentials` for service accounts).
    Login(login::Login),
    /// Work with tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Work with audit trails.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Work the approval queue through the admin API.
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
        /// The admin API (default: the config's `[admin] listen`).
        #[arg(long, global = true)]
        admin: Option<String>,
        /// Your token (default: `$PORTCULLIS_TOKEN`).
        #[arg(long, global = true)]
        token: Option<String>,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
        /// The config file to read `[admin] listen` from.
        #[arg(long, short, global = true, default_value = "portcullis.toml")]
        config: PathBuf,
        /// PEM CA certificate(s) to trust for an https:// admin API.
        #[arg(long, global = true)]
        ca: Option<PathBuf>,
    },
    /// A self-contained tour: throwaway PostgreSQL with sample data, the gateway in front.
    Demo {
        /// The gateway's port on 127.0.0.1 (default: a free one).
        #[arg(long)]
        port: Option<u16>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Make an Ed25519 key that signs checkpoints (FILE, mode 0600) and its public key (FILE.pub).
    Keygen {
        /// Where to write the signing key.
        #[arg(long, short, default_value = "audit-ed25519.key")]
        out: PathBuf,
    },
    /// Check a JSONL trail: exit 0 if intact, 1 naming the first altered, removed, reordered,
    /// inserted or cut-off record.
    Verify {
        /// The trail's live file (its rotated segments are found next to it), or several
        /// files in chain order.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The public key checkpoints must be signed with: hex, a `.pub` file, or the signing key.
        #[arg(long)]
        key: Option<String>,
        /// Published checkpoint copies (`checkpoint_copy`): catches a trail cut or rewritten after them.
        #[arg(long)]
        checkpoints: Option<PathBuf>,
        /// The gateway is still writing the trail: an unsealed tail is not a failure.
        #[arg(long)]
        live: bool,
    },
    /// Print the trail as a readable timeline.
    Show {
        /// The trail's live file, or several files in chain order.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Only this session (16 hex digits, or a unique prefix).
        #[arg(long)]
        session: Option<String>,
        /// The matching records as JSON lines.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ApprovalsCommand {
    /// Requests you may decide (or filed): pending ones, or `--all`.
    List {
        #[arg(long)]
        all: bool,
    },
    /// Approve request ID.
    Approve { id: String },
    /// Deny request ID.
    Deny {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Read a token on stdin and print the `sha256` value to put in the configuration.
    Hash,
    /// Show a token's header, claims and validity; with --config, whether the configured
    /// OpenID Connect provider's checks accept it (exit 1 if not).
    Inspect {
        /// The token (default: read from stdin).
        token: Option<String>,
        /// A configuration with [identity.oidc] to check the token against.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Token {
            command: TokenCommand::Hash,
        } => token_hash(),
        Command::Token {
            command: TokenCommand::Inspect { token, config },
        } => {
            let token = match token {
                Some(t) if t != "-" => t,
                _ => match read_token() {
                    Ok(t) => t,
                    Err(code) => return code,
                },
            };
            with_current_thread(login::inspect(&token, config.as_deref()))
        }
        Command::Login(args) => with_current_thread(login::login(args)),
        Command::Run { config } => with_runtime(run::run(config)),
        Command::Demo { port } => with_runtime(demo::demo(port)),
        Command::Approvals {
            command,
            admin,
            token,
            json,
            config,
            ca,
        } => {
            let action = match command {
                ApprovalsCommand::List { all } => approvals::Action::List { all },
                ApprovalsCommand::Approve { id } => approvals::Action::Approve { id },
                ApprovalsCommand::Deny { id, reason } => approvals::Action::Deny { id, reason },
            };
            let target = approvals::Target {
                admin,
                token,
                config: &config,
                ca: ca.as_deref(),
                json,
            };
            with_current_thread(approvals::run(action, target))
        }
        Command::Audit { command } => match command {
            AuditCommand::Keygen { out } => audit::keygen(&out),
            AuditCommand::Verify {
                paths,
                key,
                checkpoints,
                live,
            } => audit::verify(&paths, key.as_deref(), checkpoints, live),
            AuditCommand::Show {
                paths,
                session,
                json,
            } => audit::show_trail(&paths, session, json),
        },
    }
}

/// Logging to stderr, filtered by `PORTCULLIS_LOG` (else `RUST_LOG`, else `info`).
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PORTCULLIS_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for people: escape codes in a journal or a log file are noise.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

fn with_runtime(main: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    init_logging();
    // The control plane (accept loops, admin API, reload, signals) is light: sessions run on
    // their own threads (threads.rs).
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(main),
        Err(e) => {
            eprintln!("portcullis: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn with_current_thread(main: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(main),
        Err(e) => {
            eprintln!("portcullis: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(config) => {
            println!("ok: {}", config.summary());
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for line in problems.lines() {
                eprintln!("{line}");
            }
            let n = problems.list.len();
            eprintln!(
                "{}: {n} problem{}",
                problems.file,
                if n == 1 { "" } else { "s" }
            );
            ExitCode::from(2)
        }
    }
}

fn token_hash() -> ExitCode {
    match read_token() {
        Ok(token) => {
            println!("{}", portcullis_identity::hash_token(&token));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// A token from stdin (one trailing newline dropped); exit code 2 with a message if none.
fn read_token() -> Result<String, ExitCode> {
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("portcullis: cannot read stdin: {e}");
        return Err(ExitCode::from(2));
    }
    let Ok(mut token) = String::from_utf8(input) else {
        eprintln!("portcullis: the token is not valid UTF-8");
        return Err(ExitCode::from(2));
    };
    // `echo token | portcullis token hash` appends one newline; anything else is the token.
    if token.ends_with('\n') {
        token.pop();
        if token.ends_with('\r') {
            token.pop();
        }
    }
    if token.is_empty() {
        eprintln!(
            "portcullis: empty token: write the token on stdin, e.g. `printf %s \"$TOKEN\" | portcullis token hash`"
        );
        return Err(ExitCode::from(2));
    }
    Ok(token)
}
