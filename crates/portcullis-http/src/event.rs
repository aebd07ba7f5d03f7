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
    /// The head's header values (a `Location`, a custom `X-…` header), each through `f`; the
    /// headers that frame the body are left as they are.
    fn rewrite_text(&self, f: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>) -> Option<Self> {
        let HttpEvent::Head {
            parts,
            media_type,
            encoding,
        } = self
        else {
            return None;
        };
        use http::header;
        let mut new_parts: Option<Box<Parts>> = None;
        for (name, value) in &parts.headers {
            if [
                header::CONTENT_TYPE,
                header::CONTENT_LENGTH,
                header::CONTENT_ENCODING,
                header::TRANSFER_ENCODING,
            ]
            .contains(name)
            {
                continue;
            }
            let Some(masked) = f(value.as_bytes()) else {
                continue;
            };
            // A header value cannot hold control characters: those become spaces.
            let masked: Vec<u8> = masked
                .into_iter()
                .map(|b| if b < 0x20 || b == 0x7f { b' ' } else { b })
                .collect();
            let Ok(masked) = http::HeaderValue::from_bytes(&masked) else {
                continue;
            };
            let target = new_parts.get_or_insert_with(|| Box::new((**parts).clone()));
            // Every value of a repeated header is rewritten in turn: replace this one.
            let values: Vec<http::HeaderValue> = target
                .headers
                .get_all(name)
                .iter()
                .map(|v| {
                    if v == value {
                        masked.clone()
                    } else {
                        v.clone()
                    }
                })
                .collect();
            target.headers.remove(name);
            for v in values {
                target.headers.append(name.clone(), v);
            }
        }
        new_parts.map(|parts| HttpEvent::Head {
            parts,
            media_type: media_type.clone(),
            encoding: encoding.clone(),
        })
    }

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
