//! `portcullis login` (OAuth device authorization grant, or client credentials) and
//! `portcullis token inspect`.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_identity::oidc::login::LoginClient;
use portcullis_identity::oidc::{Trust, decode_unverified};
use portcullis_identity::{Oidc, TokenKind};

/// `portcullis login` options.
#[derive(Debug, clap::Args)]
pub(crate) struct Login {
    /// The provider's issuer URL.
    #[arg(long)]
    issuer: String,
    /// The OAuth client id.
    #[arg(long)]
    client_id: String,
    /// The client secret (confidential clients; default `$PORTCULLIS_CLIENT_SECRET`).
    #[arg(long, env = "PORTCULLIS_CLIENT_SECRET", hide_env_values = true)]
    client_secret: Option<String>,
    /// Use the client credentials grant (a service account) instead of a device login.
    #[arg(long)]
    client_credentials: bool,
    /// The API the token is for (RFC 8707 `resource`), when the provider asks for one.
    #[arg(long)]
    resource: Option<String>,
    /// Scopes to ask for (device login default: "openid profile email").
    #[arg(long)]
    scope: Option<String>,
    /// Print the access token instead of the ID token.
    #[arg(long)]
    access_token: bool,
    /// Print `export NAME='TOKEN'` (for `eval`), NAME defaulting to PGPASSWORD.
    #[arg(long, num_args = 0..=1, default_missing_value = "PGPASSWORD")]
    export: Option<String>,
    /// PEM CA certificate(s) to trust for the provider.
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
}

fn trust(ca: Option<&Path>) -> Result<Trust, String> {
    match ca {
        None => Ok(Trust::WebPki),
        Some(path) => std::fs::read(path)
            .map(Trust::Pem)
            .map_err(|e| format!("cannot read {}: {e}", path.display())),
    }
}

/// Get a token from the provider and print it (or an `export` line) on stdout; what the
/// person must do goes to stderr.
pub(crate) async fn login(args: Login) -> ExitCode {
    match login_inner(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis login: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn login_inner(args: Login) -> Result<(), String> {
    let trust = trust(args.ca.as_deref())?;
    if args.client_credentials && args.client_secret.is_none() {
        return Err(
            "--client-credentials needs --client-secret (or $PORTCULLIS_CLIENT_SECRET)".into(),
        );
    }
    let client =
        LoginClient::discover(&args.issuer, &args.client_id, args.client_secret, trust).await?;
    let tokens = if args.client_credentials {
        client
            .client_credentials(args.scope.as_deref(), args.resource.as_deref())
            .await?
    } else {
        let scope = args.scope.as_deref().unwrap_or("openid profile email");
        let auth = client.start_device(scope).await?;
        let url = auth
            .verification_uri_complete
            .clone()
            .unwrap_or_else(|| auth.verification_uri.clone());
        eprintln!("To sign in, open this address in a browser:\n\n    {url}\n");
        eprintln!(
            "and confirm the code {} (valid for {} minutes).",
            auth.user_code,
            auth.expires_in.div_ceil(60)
        );
        eprintln!("Waiting for approval... (Ctrl-C gives up)");
        client.finish_device(&auth).await?
    };
    let token = if args.client_credentials || args.access_token {
        tokens.access_token
    } else {
        tokens.id_token.ok_or(
            "the provider returned no ID token (is `openid` in --scope?); use --access-token for the access token",
        )?
    };
    if let Some(life) = tokens.expires_in {
        eprintln!("Signed in; the token is valid for {}.", human(life));
    }
    match args.export {
        Some(name) => println!("export {name}='{token}'"),
        None => println!("{token}"),
    }
    Ok(())
}

fn human(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} minutes", secs / 60),
        _ => format!("{} hours", secs / 3600),
    }
}

/// `portcullis token inspect`: the token's header and claims (decoded, not verified), its
/// validity period, and — with a configuration that has `[identity.oidc]` — whether this
/// gateway accepts it, and as whom. Exit 1 when the gateway would refuse it.
pub(crate) async fn inspect(token: &str, config: Option<&Path>) -> ExitCode {
    let (header, claims) = match decode_unverified(token) {
        Ok(parts) => parts,
        Err(e) => {
            eprintln!("portcullis token inspect: {e}");
            return ExitCode::from(2);
        }
    };
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    println!("header: {}", pretty(&header));
    println!("claims: {}", pretty(&claims));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let date = |name: &str| claims.get(name).and_then(serde_json::Value::as_u64);
    if let Some(exp) = date("exp") {
        if exp >= now {
            println!("expires: in {} (exp {exp})", human(exp - now));
        } else {
            println!("expired: {} ago (exp {exp})", human(now - exp));
        }
    }
    if let Some(nbf) = date("nbf").filter(|n| *n > now) {
        println!("not valid before: in {} (nbf {nbf})", human(nbf - now));
    }
    let kind = TokenKind::of(
        header.get("typ").and_then(|t| t.as_str()),
        claims.get("typ").and_then(|t| t.as_str()),
    );
    println!("kind: {kind}");
    let Some(path) = config else {
        println!("signature: not checked (give --config with [identity.oidc] to check it)");
        return ExitCode::SUCCESS;
    };
    let settings = match crate::config::load(path) {
        Ok(c) => c.oidc,
        Err(problems) => {
            for line in problems.lines() {
                eprintln!("{line}");
            }
            return ExitCode::from(2);
        }
    };
    let Some(settings) = settings else {
        eprintln!(
            "{}: no [identity.oidc] to check the token against",
            path.display()
        );
        return ExitCode::from(2);
    };
    let mut config = settings.config;
    config.min_refetch_interval = Duration::ZERO;
    let oidc = match Oidc::discover(config).await {
        Ok(oidc) => oidc,
        Err(e) => {
            eprintln!("portcullis token inspect: {e}");
            return ExitCode::from(2);
        }
    };
    match oidc.verify(token).await {
        Ok(identity) => {
            println!(
                "accepted: subject {:?}{}, groups {:?}",
                identity.subject,
                identity
                    .display
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default(),
                identity.groups
            );
            ExitCode::SUCCESS
        }
        Err(refusal) => {
            println!("refused: {refusal}");
            ExitCode::FAILURE
        }
    }
}
