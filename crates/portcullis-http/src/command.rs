//! [`HttpCommand`]: one HTTP request as a command unit. Policy layers read it as the
//! statement `METHOD /path?query`; the headers that go upstream are already cleaned (no
//! hop-by-hop headers, no client credentials).

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version, header};
use portcullis_core::{CommandKind, CommandView, Refusal, RefuseInPlace, Statement};

/// One client request.
#[derive(Debug, Clone)]
pub struct HttpCommand {
    pub(crate) method: Method,
    pub(crate) path_and_query: String,
    pub(crate) headers: HeaderMap,
    /// The protocol the client asks to switch to (`Upgrade`, with `Connection: upgrade`).
    pub(crate) upgrade: Option<HeaderValue>,
    text: String,
    kind: CommandKind,
}

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1), besides those
/// the `Connection` header names.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Remove hop-by-hop headers (and those `Connection` names) from `headers`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

impl HttpCommand {
    /// A command for a request's parts: its headers cleaned for the upstream (hop-by-hop
    /// headers, the client's `Authorization` and `Host` removed; `Accept-Encoding: identity`
    /// so that bodies can be read).
    pub fn new(method: Method, uri: &Uri, _version: Version, mut headers: HeaderMap) -> Self {
        let wants_upgrade = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        let upgrade = headers
            .get(header::UPGRADE)
            .filter(|_| wants_upgrade)
            .cloned();
        strip_hop_by_hop(&mut headers);
        headers.remove(header::AUTHORIZATION);
        headers.remove(header::HOST);
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        let path_and_query = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
        let text = format!("{method} {path_and_query}");
        HttpCommand {
            method,
            path_and_query,
            headers,
            upgrade,
            text,
            kind: CommandKind::Statements,
        }
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path and query.
    pub fn path_and_query(&self) -> &str {
        &self.path_and_query
    }

    /// The protocol the client asks to switch to (`Upgrade: websocket`), if any.
    pub fn upgrade(&self) -> Option<&HeaderValue> {
        self.upgrade.as_ref()
    }

    /// The headers that go upstream.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}

impl CommandView for HttpCommand {
    fn kind(&self) -> CommandKind {
        self.kind
    }

    fn statements(&self) -> Vec<Statement<'_>> {
        vec![Statement::text(&self.text)]
    }
}

impl RefuseInPlace for HttpCommand {
    /// HTTP keeps no transaction state to keep in step: a refusal is the gateway's own
    /// response.
    fn refuse_in_place(&self, _refusal: &Refusal) -> Option<Self> {
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn credentials_and_hop_by_hop_headers_stay_behind() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer secret".parse().unwrap());
        h.insert(header::CONNECTION, "keep-alive, x-private".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("x-kept", "2".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::ACCEPT_ENCODING, "gzip, br".parse().unwrap());
        let uri: Uri = "/v1/users?limit=2".parse().unwrap();
        let c = HttpCommand::new(Method::GET, &uri, Version::HTTP_11, h);
        assert_eq!(c.statements()[0].text, "GET /v1/users?limit=2");
        assert!(c.headers().get(header::AUTHORIZATION).is_none());
        assert!(c.headers().get("x-private").is_none());
        assert!(c.headers().get(header::TRANSFER_ENCODING).is_none());
        assert_eq!(c.headers()["x-kept"], "2");
        assert_eq!(c.headers()[header::ACCEPT_ENCODING], "identity");
    }
}
