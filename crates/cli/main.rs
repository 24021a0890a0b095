//! `liaison`: a secure open line between two parties. Noise inside QUIC, keys pinned out of
//! band, nothing trusted that you did not verify.
//!
//! This binary is the only place that reads the environment, prints to users and installs a
//! tracing subscriber. Each command lives in its own module; `ctx` holds what they share.
//! Exit codes: 0 success, 1 runtime failure, 2 usage, 3 verification failed, 4 not delivered
//! in time (the message stays in the outbox).

#[macro_use]
mod stdio;
mod cmd_audit;
mod cmd_contact;
mod cmd_identity;
mod cmd_line;
mod cmd_messages;
mod cmd_relay;
mod cmd_repair;
mod control;
mod ctx;
mod demo;
mod exit;
mod lost;
mod output;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// A secure open line between two parties: Noise inside QUIC, pinned keys, no vendor crypto.
#[derive(Parser, Debug)]
#[command(
    name = "liaison",
    version,
    about,
    long_about = "A secure, always-available open line between two parties who do not fully \
trust each other, their networks, or any relay in between.\n\n\
Every line is an end-to-end Noise session (KKpsk2 with an ML-KEM-768 hybrid key) carried over \
QUIC whose TLS is only the outer envelope. Identities are pinned from signed contact cards and \
confirmed by a 60-digit safety number read aloud.\n\n\
Quick start:\n  liaison demo                       run two nodes on loopback, step by step\n  \
liaison init --name alice          make an identity (asks for a passphrase)\n  \
liaison id                         print your card: give it to your partner\n  \
liaison contact add bob CARD       pin your partner's card\n  \
liaison verify bob                 read the safety number aloud together, then --confirm\n  \
liaison listen --bind 0.0.0.0:7700 accept calls\n  \
liaison call bob --addr HOST:7700  talk",
    after_help = "Exit codes: 0 ok, 1 failure, 2 usage, 3 verification failed, 4 not delivered in time."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// The node's home directory (identity, contacts, messages). Default: the platform data
    /// directory (~/.local/share/liaison).
    #[arg(long, global = true, env = "LIAISON_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Read the passphrase from this file (its first line; keep it mode 0600, or use a pipe:
    /// `--passphrase-file <(pass show liaison)`). Otherwise env LIAISON_PASSPHRASE, or a
    /// prompt on the terminal. Prefer this file to LIAISON_PASSPHRASE: the variable stays in
    /// the environment of this process and of every process started with that environment,
    /// where the same user can read it (/proc/PID/environ).
    #[arg(long, global = true, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Print one JSON document (or one JSON object per line for streams) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output on stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create this node's identity and print its contact card.
    Init(cmd_identity::InitArgs),
    /// Print this node's contact card and fingerprint.
    Id,
    /// Pin, list, change and remove contacts.
    #[command(subcommand)]
    Contact(cmd_contact::ContactCmd),
    /// Print the safety number for a contact; with --confirm, mark it verified.
    Verify(cmd_contact::VerifyArgs),
    /// Run the node: accept direct calls, deliver the outbox, print what arrives.
    Listen(cmd_line::ListenArgs),
    /// Open a line to a contact: each stdin line is a message.
    Call(cmd_line::CallArgs),
    /// Send one message (text or a file) and wait for the receipt.
    Send(cmd_line::SendArgs),
    /// Messages received, oldest first.
    Inbox(cmd_messages::InboxArgs),
    /// Both directions of the conversation with one contact.
    History(cmd_messages::HistoryArgs),
    /// Messages not yet delivered; `outbox drop ID` abandons one.
    Outbox(cmd_messages::OutboxArgs),
    /// Per contact: line up or not, last seen, pending messages.
    Status,
    /// The co-signed, tamper-evident log of each line: show, verify, export, reveal, check.
    #[command(subcommand)]
    Audit(cmd_audit::AuditCmd),
    /// Run a relay (operators), or pin relays on this node.
    #[command(subcommand)]
    Relay(cmd_relay::RelayCmd),
    /// Run two nodes on loopback in temporary homes and show a verified call, step by step.
    Demo(demo::DemoArgs),
    /// Check the home's message store for damage; with --accept-loss, repair a damaged
    /// write-ahead log.
    Repair(cmd_repair::RepairArgs),
    /// Print a shell completion script (e.g. `liaison completions bash >
    /// ~/.local/share/bash-completion/completions/liaison`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = e.exit_code();
            let _ = e.print();
            return ExitCode::from(code.clamp(0, 255) as u8);
        }
    };
    init_tracing(cli.global.verbose);
    if let Err(e) = liaison_node::home::harden_process() {
        tracing::warn!("could not disable core dumps: {e}");
    }
    let ctx = ctx::Ctx::new(cli.global.clone());
    let result = match cli.command {
        Command::Init(a) => cmd_identity::init(&ctx, a),
        Command::Id => cmd_identity::id(&ctx),
        Command::Contact(c) => cmd_contact::run(&ctx, c),
        Command::Verify(a) => cmd_contact::verify(&ctx, a),
        Command::Listen(a) => cmd_line::listen(&ctx, a),
        Command::Call(a) => cmd_line::call(&ctx, a),
        Command::Send(a) => cmd_line::send(&ctx, a),
        Command::Inbox(a) => cmd_messages::inbox(&ctx, a),
        Command::History(a) => cmd_messages::history(&ctx, a),
        Command::Outbox(a) => cmd_messages::outbox(&ctx, a),
        Command::Status => cmd_messages::status(&ctx),
        Command::Relay(c) => cmd_relay::run(&ctx, c),
        Command::Audit(c) => cmd_audit::run(&ctx, c),
        Command::Demo(a) => demo::run(&ctx, a),
        Command::Repair(a) => cmd_repair::repair(&ctx, a),
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "liaison",
                &mut buf,
            );
            outln!("{}", String::from_utf8_lossy(&buf).trim_end_matches('\n'));
            Ok(exit::Code::Ok)
        }
    };
    match result {
        Ok(code) => code.into(),
        Err(f) => {
            f.print(ctx.json);
            f.code.into()
        }
    }
}
