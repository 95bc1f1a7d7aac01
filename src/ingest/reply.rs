//! Answers in the shapes the original clients know: the API Gateway Kinesis proxy answers
//! with Kinesis's JSON (`{"__type", "message"}` for errors), the Confluent REST Proxy with
//! `{"error_code", "message"}`. Every refusal names its reason and is counted.

use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

/// Which API a request came in on: it decides the shape of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Gateway,
    RestProxy,
}

impl Api {
    pub fn label(self) -> &'static str {
        match self {
            Api::Gateway => "gateway",
            Api::RestProxy => "rest_proxy",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Api::Gateway => "application/json",
            Api::RestProxy => "application/vnd.kafka.v2+json",
        }
    }

    /// A successful answer with `body`.
    pub fn ok(self, body: &impl Serialize) -> Response {
        self.answer(StatusCode::OK, body, None)
    }

    /// An answer with `status` and `body` (and `Retry-After` seconds when given).
    pub fn answer(
        self,
        status: StatusCode,
        body: &impl Serialize,
        retry_after: Option<u64>,
    ) -> Response {
        // Serializing our own answer types cannot fail (string keys, no maps of other keys).
        let text = serde_json::to_string(body).unwrap_or_default();
        let mut r = (status, [(CONTENT_TYPE, self.content_type())], text).into_response();
        if let Some(s) = retry_after {
            r.headers_mut().insert(RETRY_AFTER, s.into());
        }
        r
    }
}

/// Why a request was refused, and how to say so.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub api: Api,
    pub status: StatusCode,
    /// The `reason` label of `pinstream_ingest_refused_total`.
    pub reason: &'static str,
    /// Kinesis's error type (gateway answers).
    pub error_type: &'static str,
    /// The REST Proxy's error code (its answers).
    pub error_code: u32,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl Refusal {
    fn new(
        api: Api,
        status: StatusCode,
        reason: &'static str,
        error_type: &'static str,
        error_code: u32,
        message: String,
    ) -> Self {
        Refusal {
            api,
            status,
            reason,
            error_type,
            error_code,
            message,
            retry_after: None,
        }
    }

    pub fn bad_json(api: Api, e: &serde_json::Error) -> Self {
        Self::new(
            api,
            StatusCode::BAD_REQUEST,
            "bad_json",
            "SerializationException",
            400,
            format!("the body is not valid JSON: {e}"),
        )
    }

    /// Valid JSON of the wrong shape (a missing or mistyped field).
    pub fn bad_request(api: Api, message: String) -> Self {
        match api {
            Api::Gateway => Self::new(
                api,
                StatusCode::BAD_REQUEST,
                "bad_request",
                "ValidationException",
                400,
                message,
            ),
            Api::RestProxy => Self::new(
                api,
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_request",
                "ValidationException",
                42201,
                message,
            ),
        }
    }

    pub fn too_large(api: Api, message: String) -> Self {
        Self::new(
            api,
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "ValidationException",
            41301,
            message,
        )
    }

    pub fn unknown_stream(stream: &str) -> Self {
        Self::new(
            Api::Gateway,
            StatusCode::NOT_FOUND,
            "unknown_stream",
            "ResourceNotFoundException",
            40401,
            format!("Stream {stream} is not one this server writes to"),
        )
    }

    pub fn unknown_topic(topic: &str) -> Self {
        Self::new(
            Api::RestProxy,
            StatusCode::NOT_FOUND,
            "unknown_topic",
            "ResourceNotFoundException",
            40401,
            format!("Topic {topic} not found."),
        )
    }

    pub fn media_type(got: &str) -> Self {
        Self::new(Api::RestProxy, StatusCode::UNSUPPORTED_MEDIA_TYPE, "media_type", "UnsupportedMediaType", 415, format!("HTTP 415 Unsupported Media Type: `{got}`; send Content-Type: application/vnd.kafka.json.v2+json"))
    }

    pub fn unauthorized(api: Api) -> Self {
        Self::new(
            api,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "MissingAuthenticationTokenException",
            40101,
            "an API key is required: send it as x-api-key (or Authorization: Bearer)".into(),
        )
    }

    pub fn forbidden(api: Api, message: &str) -> Self {
        Self::new(
            api,
            StatusCode::FORBIDDEN,
            "forbidden",
            "AccessDeniedException",
            40301,
            message.into(),
        )
    }

    /// In-flight bytes are at their bound: try again shortly.
    pub fn busy(api: Api) -> Self {
        let mut r = Self::new(
            api,
            StatusCode::TOO_MANY_REQUESTS,
            "busy",
            "LimitExceededException",
            42901,
            "too many bytes being stored now; retry after the time in Retry-After".into(),
        );
        r.retry_after = Some(1);
        r
    }

    pub fn draining(api: Api) -> Self {
        let mut r = Self::new(
            api,
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "ServiceUnavailable",
            50301,
            "this server is shutting down; send to another one or retry".into(),
        );
        r.retry_after = Some(1);
        r
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        metrics::counter!("pinstream_ingest_refused_total", "reason" => self.reason).increment(1);
        let body = match self.api {
            Api::Gateway => json!({"__type": self.error_type, "message": self.message}),
            Api::RestProxy => json!({"error_code": self.error_code, "message": self.message}),
        };
        self.api.answer(self.status, &body, self.retry_after)
    }
}
