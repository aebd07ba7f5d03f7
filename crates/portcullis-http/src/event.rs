//! [`HttpEvent`]: a response as the policy layers see it — its head, then the pieces of its
//! body, the last one marked.

use bytes::Bytes;
use http::response::Parts;
use portcullis_core::{BodyPiece, BodyStart, EventKind, EventView, RewriteEvent};

/// One event of an HTTP response.
#[derive(Debug)]
pub enum HttpEvent {
    /// Status and headers.
    Head {
        /// The response's parts.
        parts: Box<Parts>,
        /// Media type (lower case, no parameters), read from `Content-Type`.
        media_type: Option<String>,
        /// `Content-Encoding`, unless identity.
        encoding: Option<String>,
    },
    /// A piece of the body; `last` on the final one (which may be empty).
    Data {
        /// The bytes.
        bytes: Bytes,
        /// The body ends here.
        last: bool,
        /// The status, repeated on the last piece for the audit trail (`200`).
        status: Option<String>,
    },
}

impl HttpEvent {
    /// The head of a response.
    pub fn head(parts: Parts) -> HttpEvent {
        let media_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            });
        let encoding = parts
            .headers
            .get(http::header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty() && v != "identity");
        HttpEvent::Head {
            parts: Box::new(parts),
            media_type,
            encoding,
        }
    }
}

impl EventView for HttpEvent {
    fn view(&self) -> EventKind<'_> {
        match self {
            HttpEvent::Head { .. } => EventKind::Other,
            HttpEvent::Data {
                last: true, status, ..
            } => EventKind::Complete {
                tag: status.as_deref().unwrap_or("HTTP"),
                rows: None,
            },
            HttpEvent::Data { bytes, .. } => EventKind::CopyData(bytes),
        }
    }

    fn wire_len(&self) -> usize {
        match self {
            HttpEvent::Head { .. } => 0,
            HttpEvent::Data { bytes, .. } => bytes.len(),
        }
    }
}

impl RewriteEvent for HttpEvent {
    fn body_start(&self) -> Option<BodyStart<'_>> {
        match self {
            HttpEvent::Head {
                media_type,
                encoding,
                ..
            } => Some(BodyStart::new(media_type.as_deref(), encoding.as_deref())),
            HttpEvent::Data { .. } => None,
        }
    }

    fn body_piece(&self) -> Option<BodyPiece<'_>> {
        match self {
            HttpEvent::Data { bytes, last, .. } => Some(BodyPiece::new(bytes, *last)),
            HttpEvent::Head { .. } => None,
        }
    }

    fn with_body_piece(&self, new: Bytes) -> Option<Self> {
        match self {
            HttpEvent::Data { last, status, .. } => Some(HttpEvent::Data {
                bytes: new,
                last: *last,
                status: status.clone(),
            }),
            HttpEvent::Head { .. } => None,
        }
    }
}
