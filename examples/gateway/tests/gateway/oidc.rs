//! OpenID Connect through the `portcullis` binary, against a real provider (panva's
//! oidc-provider on Node, started by the test kit) and a real PostgreSQL: `portcullis login`
//! (device flow) and client-credentials tokens accepted, groups driving a policy rule and the
//! upstream role, every kind of bad token refused with a clear 28P01, key rotation while
//! sessions run, and sessions outliving their token.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis_testkit::{
    AUDIENCE, DEVICE_CLIENT, DEVICE_SCOPE, OidcProvider, PgCluster, SCRAM_USER, SERVICE_CLIENT,
    free_port,
};
use serde_json::{Value, json};
use tokio_postgres::error::SqlState;

use super::{BIN, Gateway};

async fn provider() -> OidcProvider {
    tokio::task::spawn_blocking(OidcProvider::start)
        .await
        .unwrap()
        .expect("the OIDC test provider (node + oidc-provider, installed by scripts/test)")
}

async fn cluster() -> PgCluster {
    tokio::task::spawn_blocking(PgCluster::start)
        .await
        .unwrap()
        .expect("PostgreSQL is needed for this test")
}

/// A gateway trusting `idp`, with `oidc_extra` in `[identity.oidc]`: analysts reach the
/// database as the SCRAM test role and may not write; audit to `trail`.
async fn start(
    cluster: &PgCluster,
    idp: &OidcProvider,
    oidc_extra: &str,
    trail: &Path,
) -> (Gateway, u16, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (gw, admin) = (free_port(), free_port());
    let text = super::config_text(gw, admin, cluster, &[])
        + &format!(
            r#"[[postgres.upstream.roles]]
groups = ["analysts"]
user = "{role}"
password = "{role_password}"

[identity.oidc]
issuer = "{issuer}"
audiences = ["{DEVICE_CLIENT}", "{AUDIENCE}"]
groups_claim = "realm_access.roles"
{oidc_extra}

[[policy.rules]]
name = "analysts-read-only"
statements = ["write", "ddl"]
groups = ["analysts"]
action = "deny"
message = "analysts read only"

[audit]
[[audit.sinks]]
kind = "jsonl"
path = "{trail}"
"#,
            role = SCRAM_USER.0,
            role_password = SCRAM_USER.1,
            issuer = idp.issuer(),
            trail = trail.display(),
        );
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, text).unwrap();
    let gateway = Gateway::started(&path, dir.path(), cluster.password(), admin).await;
    (gateway, gw, admin, dir)
}

async fn connect(port: u16, token: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("whoever")
        .password(token)
        .dbname("app")
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn current_user(port: u16, token: &str) -> String {
    let client = connect(port, token).await.unwrap();
    client
        .query_one("select current_user::text", &[])
        .await
        .unwrap()
        .get(0)
}

/// The login is refused with 28P01 and a message containing `reason`.
async fn refused(port: u16, token: &str, reason: &str, what: &str) {
    let e = match connect(port, token).await {
        Ok(_) => panic!("{what}: the token was accepted"),
        Err(e) => e,
    };
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("{what}: no database error: {e}"));
    assert_eq!(db.code(), &SqlState::INVALID_PASSWORD, "{what}: {db:?}");
    assert!(
        db.message().contains(reason),
        "{what}: expected {reason:?} in {:?}",
        db.message()
    );
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims like the provider's ID tokens for alice.
fn alice_claims(idp: &OidcProvider) -> Value {
    json!({
        "iss": idp.issuer(), "aud": DEVICE_CLIENT, "sub": "alice", "name": "Alice Analyst",
        "realm_access": {"roles": ["analysts"]}, "iat": now(), "exp": now() + 300,
        "jti": "forged-but-signed",
    })
}

fn sign(idp: &OidcProvider, alg: &str, header: Header, claims: &Value) -> String {
    let key = idp.signing_key(alg).unwrap();
    let encoding = match alg {
        "ES256" => EncodingKey::from_ec_pem(key.pem.as_bytes()).unwrap(),
        _ => EncodingKey::from_rsa_pem(key.pem.as_bytes()).unwrap(),
    };
    let mut header = header;
    if header.kid.is_none() {
        header.kid = Some(key.kid);
    }
    jsonwebtoken::encode(&header, claims, &encoding).unwrap()
}

/// A token signed by the provider's real RS256 key, with `claims` changed by `edit`.
fn signed_with(idp: &OidcProvider, edit: impl FnOnce(&mut Value)) -> String {
    let mut claims = alice_claims(idp);
    edit(&mut claims);
    sign(idp, "RS256", Header::new(Algorithm::RS256), &claims)
}

/// A token whose header JSON is `header` and whose signature is the real key's over it.
fn with_raw_header(idp: &OidcProvider, alg: &str, header: &Value) -> String {
    use jsonwebtoken::crypto::sign as jws_sign;
    let key = idp.signing_key(alg).unwrap();
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(alice_claims(idp).to_string())
    );
    let encoding = match alg {
        "ES256" => EncodingKey::from_ec_pem(key.pem.as_bytes()).unwrap(),
        _ => EncodingKey::from_rsa_pem(key.pem.as_bytes()).unwrap(),
    };
    let algorithm = alg.parse::<Algorithm>().unwrap();
    let sig = jws_sign(input.as_bytes(), &encoding, algorithm).unwrap();
    format!("{input}.{sig}")
}

fn kid(idp: &OidcProvider, alg: &str) -> String {
    idp.signing_key(alg).unwrap().kid
}

/// `portcullis login` with a device flow approved as `account` by the provider's browser
/// stand-in: the token it prints.
async fn login_as(idp: &OidcProvider, account: &str) -> String {
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "login",
            "--issuer",
            idp.issuer(),
            "--client-id",
            DEVICE_CLIENT,
            "--scope",
            DEVICE_SCOPE,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    // Read what the person is told until the code shows.
    let mut told = Vec::new();
    let code = loop {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::io::AsyncReadExt::read(&mut stderr, &mut chunk),
        )
        .await
        .expect("portcullis login prints the code")
        .unwrap();
        assert!(
            n > 0,
            "login ended early: {}",
            String::from_utf8_lossy(&told)
        );
        told.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&told);
        if let Some(rest) = text.split("confirm the code ").nth(1)
            && let Some(code) = rest.split(' ').next()
            && text.contains("Waiting for approval")
        {
            assert!(text.contains(&format!("{}/", idp.issuer())), "{text}");
            break code.to_owned();
        }
    };
    tokio::task::block_in_place(|| idp.approve_device(&code, account)).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("login finishes after approval")
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn session_starts(trail: &Path) -> Vec<Value> {
    std::fs::read_to_string(trail)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "session_start")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_logins_groups_roles_rotation_and_audit() {
    let (idp, cluster) = tokio::join!(provider(), cluster());
    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("trail.jsonl");
    let (mut gateway, gw, admin, _cfg) =
        start(&cluster, &idp, "min_refetch_interval = \"0s\"", &trail).await;

    // A person signs in with the device flow; groups pick the role and the rule applies.
    let alice = login_as(&idp, "alice").await;
    assert_eq!(alice.matches('.').count(), 2, "{alice}");
    let client = connect(gw, &alice).await.unwrap();
    let row = client
        .query_one("select current_user::text", &[])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        SCRAM_USER.0,
        "analysts use the mapped role"
    );
    let e = client
        .execute("create table t (id int)", &[])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("analysts-read-only"), "{e:?}");

    // Dana is no analyst: the listener's user, writes allowed.
    let dana = tokio::task::block_in_place(|| idp.device_login("dana")).unwrap();
    assert_eq!(current_user(gw, &dana).await, cluster.user());
    let dana_client = connect(gw, &dana).await.unwrap();
    dana_client
        .execute("create table t (id int)", &[])
        .await
        .unwrap();
    // OIDC tokens open the admin API too (approvers are people).
    assert_eq!(
        super::http_get_as(admin, "/approvals", Some(&dana))
            .await
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        super::http_get_as(admin, "/approvals", Some("not-a-token"))
            .await
            .unwrap()
            .0,
        401
    );

    // A service account's client-credentials access token, through `portcullis login`.
    let out = Command::new(BIN)
        .args([
            "login",
            "--issuer",
            idp.issuer(),
            "--client-id",
            SERVICE_CLIENT.0,
            "--client-credentials",
        ])
        .env("PORTCULLIS_CLIENT_SECRET", SERVICE_CLIENT.1)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let service = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(current_user(gw, &service).await, cluster.user());

    // `portcullis token inspect` shows the claims and checks them against the config.
    let out = Command::new(BIN)
        .args(["token", "inspect", &alice, "--config"])
        .arg(_cfg.path().join("portcullis.toml"))
        .env("PG_PASSWORD", cluster.password())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shown.contains("\"sub\": \"alice\""), "{shown}");
    assert!(shown.contains("kind: ID token"), "{shown}");
    assert!(
        shown.contains("accepted: subject \"alice\" (Alice Analyst), groups [\"analysts\"]"),
        "{shown}"
    );

    // Key rotation at the provider while sessions run: the open session goes on, new
    // tokens signed by the new key are accepted after one refetch, tokens of the dropped
    // key are refused.
    let fetches = tokio::task::block_in_place(|| idp.jwks_fetches()).unwrap();
    let new_kid = tokio::task::block_in_place(|| idp.rotate(true)).unwrap();
    let fresh = tokio::task::block_in_place(|| idp.device_login("alice")).unwrap();
    let (header, _) = portcullis_identity::oidc::decode_unverified(&fresh).unwrap();
    assert_eq!(header["kid"], new_kid.as_str());
    assert_eq!(current_user(gw, &fresh).await, SCRAM_USER.0);
    let after = tokio::task::block_in_place(|| idp.jwks_fetches()).unwrap();
    assert_eq!(after, fetches + 1, "one refetch for the new kid");
    let row = client.query_one("select 41 + 1", &[]).await.unwrap();
    assert_eq!(
        row.get::<_, i32>(0),
        42,
        "the session opened before the rotation goes on"
    );
    refused(
        gw,
        &alice,
        "unknown signing key",
        "a token of the dropped key",
    )
    .await;

    // The trail names who did what: subject, display name, groups, issuer, token id.
    drop((client, dana_client));
    let starts = session_starts(&trail);
    let alice_start = starts
        .iter()
        .find(|v| v["who"]["subject"] == "alice")
        .unwrap_or_else(|| panic!("no session of alice in {starts:?}"));
    assert_eq!(alice_start["identity"], "alice");
    assert_eq!(alice_start["upstream_user"], SCRAM_USER.0);
    let id = &alice_start["who"];
    assert_eq!(id["method"], "oidc");
    assert_eq!(id["display"], "Alice Analyst");
    assert_eq!(id["groups"], json!(["analysts"]));
    assert_eq!(id["issuer"], idp.issuer());
    assert!(
        id["token_id"].as_str().is_some_and(|t| !t.is_empty()),
        "{id}"
    );
    assert!(
        starts
            .iter()
            .any(|v| v["who"]["subject"] == SERVICE_CLIENT.0),
        "{starts:?}"
    );
    gateway.signal("TERM");
    gateway
        .wait_exit(Duration::from_secs(10), "gateway stops")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_clear_reasons() {
    let (idp, cluster) = tokio::join!(provider(), cluster());
    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("trail.jsonl");
    let (_gateway, gw, _admin, _cfg) = start(
        &cluster,
        &idp,
        "min_refetch_interval = \"1h\"\naccept = [\"id_token\"]",
        &trail,
    )
    .await;
    let rs = kid(&idp, "RS256");

    // The real thing works, so each refusal below is for its own reason.
    let good = signed_with(&idp, |_| {});
    assert_eq!(current_user(gw, &good).await, SCRAM_USER.0);
    let es = sign(
        &idp,
        "ES256",
        Header::new(Algorithm::ES256),
        &alice_claims(&idp),
    );
    assert_eq!(
        current_user(gw, &es).await,
        SCRAM_USER.0,
        "ES256 from the JWKS"
    );

    let body = URL_SAFE_NO_PAD.encode(alice_claims(&idp).to_string());
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "kid": rs}).to_string());
        refused(gw, &format!("{header}.{body}."), "unsigned", alg).await;
        refused(gw, &format!("{header}.{body}.c2ln"), "alg none", alg).await;
    }
    // The provider's public key used as an HMAC secret.
    let (status, jwks) = idp.http("GET", "/jwks", &[], "").unwrap();
    assert_eq!(status, 200);
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(rs.clone());
    let hmac = jsonwebtoken::encode(
        &hs,
        &alice_claims(&idp),
        &EncodingKey::from_secret(jwks.as_bytes()),
    )
    .unwrap();
    refused(gw, &hmac, "HMAC", "RS256 key as HS256 secret").await;
    // An ES256 header on the RSA key's kid.
    let mixed = with_raw_header(&idp, "ES256", &json!({"alg": "ES256", "kid": rs}));
    refused(
        gw,
        &mixed,
        "does not fit the signing key",
        "alg of another key type",
    )
    .await;

    let fetches = tokio::task::block_in_place(|| idp.jwks_fetches()).unwrap();
    let mut unknown = Header::new(Algorithm::RS256);
    unknown.kid = Some("no-such-key".into());
    let unknown = sign(&idp, "RS256", unknown, &alice_claims(&idp));
    for _ in 0..20 {
        refused(gw, &unknown, "unknown signing key", "unknown kid").await;
    }
    let after = tokio::task::block_in_place(|| idp.jwks_fetches()).unwrap();
    assert!(
        after <= fetches + 1,
        "a flood of unknown kids fetched the keys {} times",
        after - fetches
    );
    for trick in ["../../../etc/passwd", "x' OR '1'='1", "/dev/null", "k\u{0}"] {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(trick.into());
        refused(
            gw,
            &sign(&idp, "RS256", h, &alice_claims(&idp)),
            "kid",
            trick,
        )
        .await;
    }

    refused(
        gw,
        &signed_with(&idp, |c| c["exp"] = json!(now() - 120)),
        "expired",
        "expired",
    )
    .await;
    // Issue 20: a token of another type, a sub that is not a string.
    for typ in ["logout+jwt", "secevent+jwt"] {
        let token = with_raw_header(
            &idp,
            "RS256",
            &json!({"alg": "RS256", "kid": rs, "typ": typ}),
        );
        refused(gw, &token, "neither an ID token nor an access token", typ).await;
    }
    refused(
        gw,
        &signed_with(&idp, |c| c["typ"] = json!("Refresh")),
        "neither an ID token nor an access token",
        "typ claim Refresh",
    )
    .await;
    refused(
        gw,
        &signed_with(&idp, |c| {
            c["sub"] = json!(42);
            c["client_id"] = json!("alice");
        }),
        "sub claim is not a string",
        "numeric sub",
    )
    .await;
    // Inside the leeway (30 s by default): accepted at login, and the session is not closed
    // at once as expired — one rule for both.
    let late = signed_with(&idp, |c| c["exp"] = json!(now() - 10));
    let client = connect(gw, &late).await.unwrap();
    client.query_one("select 1", &[]).await.unwrap();
    client.query_one("select 2", &[]).await.unwrap();
    refused(
        gw,
        &signed_with(&idp, |c| c["nbf"] = json!(now() + 600)),
        "not valid yet",
        "nbf",
    )
    .await;
    refused(
        gw,
        &signed_with(&idp, |c| c["iss"] = json!("https://evil.example")),
        "wrong issuer",
        "iss",
    )
    .await;
    refused(
        gw,
        &signed_with(&idp, |c| c["aud"] = json!("someone-else")),
        "wrong audience",
        "aud",
    )
    .await;
    // Only ID tokens here: the provider's client-credentials access token is refused.
    let access = tokio::task::block_in_place(|| idp.client_credentials()).unwrap();
    refused(
        gw,
        &access,
        "access tokens are not accepted",
        "access token",
    )
    .await;
    // And the other way round: where only access tokens are accepted, an ID token is not.
    let access_only_trail = dir.path().join("access-only.jsonl");
    let (_access_only, gw_access, _a, _c) = start(
        &cluster,
        &idp,
        "accept = [\"access_token\"]",
        &access_only_trail,
    )
    .await;
    refused(gw_access, &good, "ID tokens are not accepted", "ID token").await;
    assert_eq!(current_user(gw_access, &access).await, cluster.user());

    // Tampering: payload changed after signing, signature cut, base64 broken.
    let (h, rest) = good.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let mut claims = alice_claims(&idp);
    claims["realm_access"] = json!({"roles": ["dba"]});
    let tampered = format!("{h}.{}.{sig}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    refused(gw, &tampered, "invalid signature", "tampered payload").await;
    refused(
        gw,
        &good[..good.len() - 10],
        "signature",
        "truncated signature",
    )
    .await;
    refused(
        gw,
        &format!("{h}.%%%notbase64%%%.{sig}"),
        "malformed base64",
        "bad base64",
    )
    .await;
    let huge = format!("{h}.{}.{sig}", "A".repeat(1_000_000));
    refused(gw, &huge, "too large", "1 MB token").await;
    let nested = signed_with(&idp, |c| {
        let mut deep = json!("bottom");
        for _ in 0..64 {
            deep = json!([deep]);
        }
        c["deep"] = deep;
    });
    refused(gw, &nested, "nested deeper", "deep nesting").await;

    // Header parameters the gateway never honours, on otherwise valid signed tokens.
    let crit = with_raw_header(
        &idp,
        "RS256",
        &json!({"alg": "RS256", "kid": rs, "crit": ["exp"], "exp": 1}),
    );
    refused(gw, &crit, "critical", "crit").await;
    for param in ["jku", "x5u"] {
        let t = with_raw_header(
            &idp,
            "RS256",
            &json!({"alg": "RS256", "kid": rs, param: "https://evil.example/keys.json"}),
        );
        refused(gw, &t, param, param).await;
    }
    let embedded = with_raw_header(
        &idp,
        "RS256",
        &json!({"alg": "RS256", "kid": rs, "jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}}),
    );
    refused(gw, &embedded, "jwk", "embedded jwk").await;

    // Still fine after all that.
    assert_eq!(current_user(gw, &good).await, SCRAM_USER.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_outliving_their_token_are_closed_or_refused() {
    let (idp, cluster) = tokio::join!(provider(), cluster());
    let dir = tempfile::tempdir().unwrap();
    let (trail_close, trail_refuse) = (
        dir.path().join("close.jsonl"),
        dir.path().join("refuse.jsonl"),
    );
    let ((_g1, close_port, _a1, _c1), (_g2, refuse_port, _a2, _c2)) = tokio::join!(
        start(
            &cluster,
            &idp,
            "leeway = \"0s\"\non_expiry = \"close\"",
            &trail_close
        ),
        start(
            &cluster,
            &idp,
            "leeway = \"0s\"\non_expiry = \"refuse\"",
            &trail_refuse
        ),
    );
    let exp = now() + 3;
    let short = signed_with(&idp, |c| c["exp"] = json!(exp));
    let (closing, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(close_port)
        .user("whoever")
        .password(&short)
        .dbname("app")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    let closing_connection = tokio::spawn(connection);
    let refusing = connect(refuse_port, &short).await.unwrap();
    closing.query_one("select 1", &[]).await.unwrap();
    refusing.query_one("select 1", &[]).await.unwrap();
    // Wait out the token (this test is about time passing).
    let deadline = Instant::now() + Duration::from_secs(10);
    while now() <= exp + 1 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Close mode: the idle session is ended by the gateway at expiry, without a command.
    super::wait_closed(
        &closing,
        Duration::from_secs(5),
        "the expired session closes while idle",
    )
    .await;
    let e = closing_connection
        .await
        .unwrap()
        .expect_err("the gateway ended the session");
    let db = e.as_db_error().unwrap_or_else(|| panic!("{e}"));
    assert_eq!(db.code(), &SqlState::INVALID_PASSWORD);
    assert_eq!(db.severity(), "FATAL");
    assert!(db.message().contains("token expired"), "{db:?}");

    let e = refusing.query_one("select 1", &[]).await.unwrap_err();
    let db = e.as_db_error().unwrap_or_else(|| panic!("{e}"));
    assert_eq!(db.code(), &SqlState::INVALID_PASSWORD);
    assert_eq!(db.severity(), "ERROR");
    assert!(
        db.message().contains("reconnect with a fresh token"),
        "{db:?}"
    );
    assert!(!refusing.is_closed(), "refuse mode keeps the session open");
    // And nothing runs any more.
    assert!(refusing.query_one("select 2", &[]).await.is_err());

    // An expired token cannot log in at all.
    refused(close_port, &short, "expired", "expired at login").await;

    // The trails: the closed session's end names the expiry; the refused commands are
    // recorded as refused.
    let text = std::fs::read_to_string(&trail_close).unwrap_or_default();
    assert!(
        text.lines()
            .any(|l| l.contains("\"session_end\"") && l.contains("token expired")),
        "no session end naming the expiry:\n{text}"
    );
    let text = std::fs::read_to_string(&trail_refuse).unwrap_or_default();
    assert!(
        text.lines()
            .any(|l| l.contains("\"refused\"") && l.contains("token expired")),
        "no refused record naming the expiry:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_outages_never_let_an_unverified_token_in() {
    let (idp, cluster) = tokio::join!(provider(), cluster());
    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("trail.jsonl");

    // Up, then the provider goes away: the keys held keep working; unknown keys stay refused.
    let (_gateway, gw, _admin, _cfg) =
        start(&cluster, &idp, "min_refetch_interval = \"0s\"", &trail).await;
    let token = signed_with(&idp, |_| {});
    let mut stranger = Header::new(Algorithm::RS256);
    stranger.kid = Some("rotated-in-while-down".into());
    let stranger = sign(&idp, "RS256", stranger, &alice_claims(&idp));
    let issuer = idp.issuer().to_owned();
    drop(idp);
    assert_eq!(
        current_user(gw, &token).await,
        SCRAM_USER.0,
        "cached keys work"
    );
    refused(
        gw,
        &stranger,
        "unknown signing key",
        "unknown kid while the provider is down",
    )
    .await;

    // Starting without a reachable provider: an error naming it, or — with
    // `startup = "retry"` — a gateway that refuses OIDC tokens until it gets the keys.
    let down_dir = tempfile::tempdir().unwrap();
    let (gw2, admin2) = (free_port(), free_port());
    let base = super::config_text(gw2, admin2, &cluster, &[("ci", "ci-token-0123456789")]);
    let oidc =
        format!("\n[identity.oidc]\nissuer = \"{issuer}\"\naudiences = [\"{DEVICE_CLIENT}\"]\n");
    let path = down_dir.path().join("portcullis.toml");
    std::fs::write(&path, format!("{base}{oidc}")).unwrap();
    let mut failing = Gateway::spawn(&path, down_dir.path(), cluster.password());
    let status = failing
        .wait_exit(
            Duration::from_secs(30),
            "the gateway gives up on an unreachable provider",
        )
        .await;
    assert!(!status.success());
    let logs = failing.logs();
    assert!(
        logs.contains("OpenID Connect provider") && logs.contains(&issuer),
        "{logs}"
    );

    std::fs::write(&path, format!("{base}{oidc}startup = \"retry\"\n")).unwrap();
    let retrying = Gateway::started(&path, down_dir.path(), cluster.password(), admin2).await;
    refused(
        gw2,
        &token,
        "has not been reached yet",
        "provider never reached",
    )
    .await;
    // Static tokens are not held up by the provider.
    assert_eq!(
        current_user(gw2, "ci-token-0123456789").await,
        cluster.user()
    );
    drop(retrying);
}

/// Issue 20: an https issuer whose discovery document names a plain-http `jwks_uri`. The
/// gateway refuses the provider at start, naming the downgrade, and never fetches keys in
/// clear (the plain server sees no request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_never_fetched_in_clear_for_an_https_issuer() {
    let cluster = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = portcullis_testkit::Certs::generate().unwrap();
    let files = certs.write_to(dir.path()).unwrap();
    let tls = portcullis_testkit::HttpUpstream::start_tls(&certs)
        .await
        .unwrap();
    let plain = portcullis_testkit::HttpUpstream::start().await.unwrap();
    let issuer = format!("https://127.0.0.1:{}/idp/{}", tls.port(), plain.port());
    let (gw, admin) = (free_port(), free_port());
    let text = super::config_text(gw, admin, &cluster, &[])
        + &format!(
            "\n[identity.oidc]\nissuer = \"{issuer}\"\naudiences = [\"{AUDIENCE}\"]\nca = \"{}\"\n",
            files.ca.display()
        );
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, text).unwrap();
    let mut gateway = Gateway::spawn(&path, dir.path(), cluster.password());
    let status = gateway
        .wait_exit(
            Duration::from_secs(30),
            "the gateway refuses a provider whose keys are served in clear",
        )
        .await;
    assert!(!status.success());
    let logs = gateway.logs();
    assert!(
        logs.contains("jwks_uri") && logs.contains("plain http"),
        "{logs}"
    );
    assert!(
        tls.requests()
            .iter()
            .any(|r| r.path.ends_with("openid-configuration")),
        "the discovery document was not asked for"
    );
    assert!(
        plain.requests().is_empty(),
        "keys were fetched over plain http: {:?}",
        plain.requests()
    );
}

/// Issue 20: a static token named `alice` and an OIDC subject `alice` are two identities —
/// for approval listings, self-approval and the one-identity-per-HTTP-connection check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_name_and_an_oidc_subject_are_different_identities() {
    use std::io::{Read as _, Write as _};

    let (idp, cluster) = tokio::join!(provider(), cluster());
    let api = portcullis_testkit::HttpUpstream::start().await.unwrap();
    let out = cluster
        .psql("app")
        .args([
            "-c",
            "create table held (id int); insert into held values (1), (2)",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let (gw, admin, http) = (free_port(), free_port(), free_port());
    let static_alice = "static-alice-token-0123456789";
    let text = super::config_text(gw, admin, &cluster, &[("alice", static_alice)])
        + &format!(
            r#"
[identity.oidc]
issuer = "{issuer}"
audiences = ["{DEVICE_CLIENT}"]
groups_claim = "realm_access.roles"

[[http]]
name = "api"
listen = "127.0.0.1:{http}"
allow_plaintext_tokens_on_loopback = true
[http.upstream]
url = "{url}"

[policy]
[[policy.rules]]
name = "unbounded-deletes"
statements = ["delete"]
without_where = true
action = "approve"
approvers = ["dba"]

[approvals]
timeout = "2m"
"#,
            issuer = idp.issuer(),
            url = api.url(),
        );
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, text).unwrap();
    let mut gateway = Gateway::started(&path, dir.path(), cluster.password(), admin).await;
    let oidc_as = |sub: &str, roles: &[&str]| {
        signed_with(&idp, |c| {
            c["sub"] = json!(sub);
            c["realm_access"] = json!({ "roles": roles });
        })
    };
    let oidc_alice = oidc_as("alice", &["analysts"]);
    let oidc_dba = oidc_as("dana", &["dba"]);

    // Static alice's DELETE waits for approval.
    let mut child = cluster
        .psql("app")
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", gw.to_string())
        .env("PGUSER", "alice")
        .env("PGPASSWORD", static_alice)
        .env("PGSSLMODE", "disable")
        .args(["-c", "delete from held"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pending = super::policy::first_pending(&mut gateway, admin, &oidc_dba).await;
    let id = pending["id"].as_str().unwrap().to_owned();
    assert_eq!(pending["identity"]["method"], "static_token", "{pending}");
    // OIDC alice does not see static alice's request as hers.
    let (code, out, err) = super::policy::approvals(admin, &oidc_alice, &["list", "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        !out.contains(&id),
        "OIDC alice listed static alice's request: {out}"
    );
    let (status, body) = super::http_get_as(admin, &format!("/approvals/{id}"), Some(&oidc_alice))
        .await
        .unwrap();
    assert_eq!(status, 404, "{body}");
    // OIDC alice in the approver group is another identity: her approval counts.
    let oidc_alice_dba = oidc_as("alice", &["dba"]);
    let (code, out, err) = super::policy::approvals(admin, &oidc_alice_dba, &["approve", &id]);
    assert_eq!(code, Some(0), "{out}{err}");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());

    // One identity per HTTP connection: static alice, then OIDC alice on the same
    // connection, is refused.
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let get = |token: &str| {
        format!("GET /v1/users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n")
    };
    let read_response = |tcp: &mut std::net::TcpStream| -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = tcp.read(&mut chunk).unwrap();
            assert!(
                n > 0,
                "the connection closed: {}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    return text.into_owned();
                }
            }
        }
    };
    tcp.write_all(get(static_alice).as_bytes()).unwrap();
    let first = read_response(&mut tcp);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    tcp.write_all(get(&oidc_alice).as_bytes()).unwrap();
    let second = read_response(&mut tcp);
    assert!(second.starts_with("HTTP/1.1 401"), "{second}");
    assert!(second.contains("one identity"), "{second}");
}
