//! RFC 9457 problem details: how the gateway tells an HTTP client that a policy acted.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use portcullis_core::{Refusal, RescueKind, rescue};

/// The HTTP status for a refusal of `kind`.
pub fn status(kind: RescueKind) -> StatusCode {
    match kind {
        RescueKind::AuthenticationFailed => StatusCode::UNAUTHORIZED,
        RescueKind::Forbidden => StatusCode::FORBIDDEN,
        RescueKind::TimedOut => StatusCode::GATEWAY_TIMEOUT,
        // 499 (client closed request) is not in `http`'s list of names.
        RescueKind::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        RescueKind::AuditFailure | RescueKind::Limit => StatusCode::SERVICE_UNAVAILABLE,
        RescueKind::ProtocolViolation => StatusCode::BAD_REQUEST,
        RescueKind::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
        RescueKind::TooComplex => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A problem response: `application/problem+json` with `type`, `title`, `status`, `detail`,
/// and `rule` when a rule acted.
pub fn problem(status: StatusCode, detail: &str, rule: Option<&str>) -> Response<Bytes> {
    let mut body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    if let (Some(rule), Some(map)) = (rule, body.as_object_mut()) {
        map.insert("rule".into(), serde_json::Value::String(rule.to_owned()));
    }
    let mut response = Response::new(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        let challenge = format!(
            "Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"{}\"",
            detail.replace(['"', '\\'], "'")
        );
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        } else {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"portcullis\""),
            );
        }
    }
    response
}

/// The problem response for a layer's error.
pub fn for_error(error: &portcullis_core::Error) -> (Response<Bytes>, bool) {
    let r = rescue(error);
    let rule = match Refusal::find(error) {
        Some(Refusal::Blocked { rule, .. }) => Some(rule.as_str()),
        _ => None,
    };
    (problem(status(r.kind), &r.message, rule), r.close)
}
