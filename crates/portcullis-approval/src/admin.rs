//! The approvals API, mounted on the gateway's admin listener:
//!
//! | route | does |
//! |---|---|
//! | `GET /approvals` (`?all=true`) | requests the caller may decide or filed, pending ones unless `all` |
//! | `GET /approvals/{id}` | one request |
//! | `POST /approvals/{id}/approve` | approve |
//! | `POST /approvals/{id}/deny` (body `{"reason": "..."}` optional) | deny |
//!
//! Every route needs `Authorization: Bearer <token>`; the token's identity must be in an
//! approver group of the request, and is never the requester.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use portcullis_core::Identity;
use serde::Deserialize;

use crate::request::{Answer, ApprovalRequest, DecideError, may_decide};
use crate::store::ApprovalStore;

/// Turns a bearer token into an identity (the gateway's own token check), or says why not.
pub type Authenticator = Arc<dyn Fn(&str) -> Result<Identity, String> + Send + Sync>;

#[derive(Clone)]
struct Api {
    store: Arc<dyn ApprovalStore>,
    authenticate: Authenticator,
}

/// The approvals routes over `store`, authenticating callers with `authenticate`.
pub fn routes(store: Arc<dyn ApprovalStore>, authenticate: Authenticator) -> Router {
    Router::new()
        .route("/approvals", get(list))
        .route("/approvals/{id}", get(one))
        .route("/approvals/{id}/approve", post(approve))
        .route("/approvals/{id}/deny", post(deny))
        .with_state(Api {
            store,
            authenticate,
        })
}

/// An error answer: `{"error": "..."}`.
struct Problem(StatusCode, String);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

impl Api {
    fn caller(&self, headers: &HeaderMap) -> Result<Identity, Problem> {
        let token = bearer_token(headers).ok_or_else(|| {
            Problem(
                StatusCode::UNAUTHORIZED,
                "an `Authorization: Bearer <token>` header is required".into(),
            )
        })?;
        (self.authenticate)(token).map_err(|why| Problem(StatusCode::UNAUTHORIZED, why))
    }
}

/// The token of an `Authorization: Bearer <token>` header, if there is a non-empty one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(portcullis_core::bearer_token)
}

fn store_problem(e: impl std::fmt::Display) -> Problem {
    Problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

async fn list(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<ApprovalRequest>>, Problem> {
    let who = api.caller(&headers)?;
    let all = api.store.list(!q.all).await.map_err(store_problem)?;
    Ok(Json(
        all.into_iter()
            .filter(|r| r.identity.is(&who) || may_decide(r, &who).is_ok())
            .collect(),
    ))
}

async fn one(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ApprovalRequest>, Problem> {
    let who = api.caller(&headers)?;
    match api.store.get(&id).await.map_err(store_problem)? {
        Some(r) if r.identity.is(&who) || may_decide(&r, &who).is_ok() => Ok(Json(r)),
        _ => Err(Problem(
            StatusCode::NOT_FOUND,
            format!("no approval request {id} for {}", who.qualified()),
        )),
    }
}

#[derive(Deserialize, Default)]
struct DenyBody {
    reason: Option<String>,
}

async fn approve(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ApprovalRequest>, Problem> {
    decide(api, headers, id, Answer::Approve).await
}

async fn deny(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<DenyBody>>,
) -> Result<Json<ApprovalRequest>, Problem> {
    let reason = body.and_then(|Json(b)| b.reason);
    decide(api, headers, id, Answer::Deny(reason)).await
}

async fn decide(
    api: Api,
    headers: HeaderMap,
    id: String,
    answer: Answer,
) -> Result<Json<ApprovalRequest>, Problem> {
    let who = api.caller(&headers)?;
    match api.store.decide(&id, &who, answer).await {
        Ok(r) => Ok(Json(r)),
        Err(e) => {
            let status = match &e {
                DecideError::NotFound(_) => StatusCode::NOT_FOUND,
                DecideError::OwnRequest | DecideError::NotAnApprover { .. } => {
                    StatusCode::FORBIDDEN
                }
                DecideError::NotPending { .. } | DecideError::AlreadyApproved(_) => {
                    StatusCode::CONFLICT
                }
                DecideError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            Err(Problem(status, e.to_string()))
        }
    }
}
