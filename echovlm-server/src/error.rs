//! OpenAI-style error bodies: `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use echovlm_pipeline::EchoError;
use echovlm_text::PromptError;

/// An error answered to a client, with its HTTP status.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status}: {message}")]
#[non_exhaustive]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A sentence for people.
    pub message: String,
    /// OpenAI's error `type` (`invalid_request_error`, `authentication_error`, …).
    pub kind: &'static str,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A machine-readable code (`context_length_exceeded`, `queue_full`, …).
    pub code: Option<&'static str>,
}

impl ApiError {
    /// An error of this status, type and message.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    /// A 400 `invalid_request_error`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// Names the field at fault.
    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Sets the machine-readable code.
    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<EchoError> for ApiError {
    fn from(e: EchoError) -> Self {
        let message = e.to_string();
        match &e {
            EchoError::Prompt(PromptError::ContextTooLong { .. }) => ApiError::invalid(message)
                .param("messages")
                .code("context_length_exceeded"),
            EchoError::Image(_) => ApiError::invalid(message)
                .param("messages")
                .code("invalid_image"),
            EchoError::Prompt(_)
            | EchoError::Vision(_)
            | EchoError::InvalidRequest(_)
            | EchoError::InvalidPrompt(_)
            | EchoError::Template(_) => ApiError::invalid(message),
            EchoError::NoVision => ApiError::invalid(message)
                .param("messages")
                .code("images_not_supported"),
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_errors_map_to_statuses() {
        let e = ApiError::from(EchoError::from(PromptError::ContextTooLong {
            tokens: 9,
            max: 8,
        }));
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, Some("context_length_exceeded"))
        );
        let e = ApiError::from(EchoError::InvalidRequest("x".into()));
        assert_eq!(
            (e.status, e.kind),
            (StatusCode::BAD_REQUEST, "invalid_request_error")
        );
        let e = ApiError::from(EchoError::NoVision);
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = ApiError::from(EchoError::Device("lost".into()));
        assert_eq!(
            (e.status, e.kind),
            (StatusCode::INTERNAL_SERVER_ERROR, "server_error")
        );
        let body = e.body();
        assert_eq!(body["error"]["message"], "device failure: lost");
        assert!(body["error"]["param"].is_null() && body["error"]["code"].is_null());
    }
}
