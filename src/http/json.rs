//! The JSON body extractor: every way a body can be wrong becomes a problem+json answer with
//! a useful `detail`, never axum's plain-text rejection and never a panic.

use super::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;

/// Without [`super::BodyRules`] (a router built without its middleware).
const DEFAULT_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A JSON request body. An empty body reads as `{}`, so endpoints whose fields are all
/// optional need none.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json" || mime.ends_with("+json")
            });
        let read_timeout = request
            .extensions()
            .get::<super::BodyRules>()
            .map_or(DEFAULT_READ_TIMEOUT, |rules| rules.read_timeout);
        let bytes = tokio::time::timeout(read_timeout, Bytes::from_request(request, state))
            .await
            .map_err(|_| ApiError::BodyTimeout)?
            .map_err(|rejection| {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::MalformedJson(format!("could not read the body: {rejection}"))
                }
            })?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else if is_json != Some(true) {
            return Err(ApiError::UnsupportedMediaType);
        } else {
            &bytes
        };
        let e = match serde_json::from_slice(bytes) {
            Ok(parsed) => return Ok(JsonBody(parsed)),
            Err(e) => e,
        };
        use serde_json::error::Category;
        Err(match e.classify() {
            // serde stops at the first shape error; only a full syntax pass tells whether
            // the body was JSON at all (this runs on the error path only).
            Category::Data => match serde_json::from_slice::<serde_json::Value>(bytes) {
                Err(syntax) => {
                    ApiError::MalformedJson(format!("the body is not valid JSON: {syntax}"))
                }
                // JSON has one number type: `65536.0` is the integer 65536 (as the
                // document's `integer` says), which serde's integers refuse.
                Ok(mut value) => {
                    if !whole_floats_to_integers(&mut value) {
                        ApiError::InvalidRequest(e.to_string())
                    } else {
                        match serde_json::from_value(value) {
                            Ok(parsed) => return Ok(JsonBody(parsed)),
                            Err(e) => ApiError::InvalidRequest(e.to_string()),
                        }
                    }
                }
            },
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::MalformedJson(format!("the body is not valid JSON: {e}"))
            }
        })
    }
}

/// Turns every float with no fractional part that fits an integer into that integer; whether
/// any was.
fn whole_floats_to_integers(value: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            let whole = f.fract() == 0.0 && f.abs() < 9.0e15;
            if whole {
                *value = if f < 0.0 {
                    Value::from(f as i64)
                } else {
                    Value::from(f as u64)
                };
            }
            whole
        }
        // Every element, not only up to the first: no short circuit.
        Value::Array(items) => {
            items
                .iter_mut()
                .map(whole_floats_to_integers)
                .filter(|&changed| changed)
                .count()
                > 0
        }
        Value::Object(fields) => {
            fields
                .values_mut()
                .map(whole_floats_to_integers)
                .filter(|&changed| changed)
                .count()
                > 0
        }
        _ => false,
    }
}

/// The one path parameter of a route (`{id}`), as text. A path that is not valid UTF-8 (or
/// not percent-decodable) is refused as problem+json, not with axum's plain-text 400.
pub struct PathId(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(id)| PathId(id))
            .map_err(|rejection| ApiError::MalformedPath(rejection.body_text()))
    }
}
