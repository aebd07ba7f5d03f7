//! `portcullis approvals list|approve ID|deny ID`: work the approval queue through a
//! gateway's admin API.

use std::path::Path;
use std::process::ExitCode;

use portcullis_approval::{AdminClient, ApprovalRequest, State};

/// What to do.
#[derive(Debug)]
pub(crate) enum Action {
    List { all: bool },
    Approve { id: String },
    Deny { id: String, reason: Option<String> },
}

/// Where and as whom.
#[derive(Debug)]
pub(crate) struct Target<'a> {
    pub(crate) admin: Option<String>,
    pub(crate) token: Option<String>,
    pub(crate) config: &'a Path,
    pub(crate) ca: Option<&'a Path>,
    pub(crate) json: bool,
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("portcullis approvals: {message}");
    ExitCode::FAILURE
}

pub(crate) async fn run(action: Action, target: Target<'_>) -> ExitCode {
    let admin = match target.admin {
        Some(a) => a,
        None => match crate::config::load(target.config) {
            Ok(config) => match config.admin {
                Some(addr) => format!("http://{addr}"),
                None => {
                    return fail(format!(
                        "{} has no [admin] listen; give --admin URL",
                        target.config.display()
                    ));
                }
            },
            Err(_) => {
                return fail(format!(
                    "no --admin URL, and {} could not be read for [admin] listen",
                    target.config.display()
                ));
            }
        },
    };
    let Some(token) = target
        .token
        .or_else(|| std::env::var("PORTCULLIS_TOKEN").ok())
        .filter(|t| !t.is_empty())
    else {
        return fail("no token: give --token T or set PORTCULLIS_TOKEN");
    };
    let mut client = AdminClient::new(&admin, token);
    if let Some(ca) = target.ca {
        match std::fs::read(ca) {
            Ok(pem) => client = client.with_ca_pem(pem),
            Err(e) => return fail(format!("{}: {e}", ca.display())),
        }
    }
    match action {
        Action::List { all } => match client.list(all).await {
            Ok(list) if target.json => print_json(&list),
            Ok(list) => {
                print_table(&list);
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Action::Approve { id } => match client.approve(&id).await {
            Ok(r) if target.json => print_json(&r),
            Ok(r) => {
                match r.state {
                    State::Approved => println!(
                        "approved request {} ({} of {} approvals): the statement runs now",
                        r.id,
                        r.approved_by.len(),
                        r.min_approvals
                    ),
                    _ => println!(
                        "approval recorded for request {} ({} of {} approvals): waiting for more",
                        r.id,
                        r.approved_by.len(),
                        r.min_approvals
                    ),
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Action::Deny { id, reason } => match client.deny(&id, reason.as_deref()).await {
            Ok(r) if target.json => print_json(&r),
            Ok(r) => {
                println!(
                    "denied request {}: the waiting client gets ERROR 42501",
                    r.id
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
    }
}

fn print_json(value: &impl serde::Serialize) -> ExitCode {
    match serde_json::to_string_pretty(value) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn print_table(list: &[ApprovalRequest]) {
    if list.is_empty() {
        println!("no approval requests waiting");
        return;
    }
    println!(
        "{:<16}  {:<9}  {:<14}  {:<18}  {:<10}  {:<20}  STATEMENT",
        "ID", "STATE", "IDENTITY", "RULE", "TARGET", "EXPIRES"
    );
    let rfc3339 = time::format_description::well_known::Rfc3339;
    for r in list {
        let mut statement: String = r.statement.split_whitespace().collect::<Vec<_>>().join(" ");
        if statement.chars().count() > 60 {
            statement = statement.chars().take(57).collect::<String>() + "...";
        }
        println!(
            "{:<16}  {:<9}  {:<14}  {:<18}  {:<10}  {:<20}  {statement}",
            r.id,
            r.state.name(),
            r.identity.subject,
            r.rule,
            r.target,
            r.expires_at
                .replace_nanosecond(0)
                .ok()
                .and_then(|t| t.format(&rfc3339).ok())
                .unwrap_or_default(),
        );
    }
}
