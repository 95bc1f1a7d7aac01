//! The optional API key: `x-api-key` (as API Gateway takes it) or `Authorization: Bearer`,
//! compared in constant time. The key comes from `ingest.api_key_file` or the
//! `PINSTREAM_INGEST_API_KEY` environment variable and is never logged.

use std::path::Path;

use axum::http::HeaderMap;

use super::reply::{Api, Refusal};

pub const API_KEY_ENV: &str = "PINSTREAM_INGEST_API_KEY";

/// The key requests must carry, if any.
#[derive(Clone, Default)]
pub struct ApiKey(Option<Vec<u8>>);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ApiKey(set)"
        } else {
            "ApiKey(none)"
        })
    }
}

impl ApiKey {
    /// From the file when given (trailing newline trimmed), else from the environment;
    /// an empty key is an error, not "no key".
    pub fn load(file: Option<&Path>) -> Result<Self, String> {
        let key = match file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("ingest.api_key_file {}: {e}", path.display()))?,
            ),
            None => std::env::var(API_KEY_ENV).ok(),
        };
        match key.map(|k| k.trim_end_matches(['\r', '\n']).to_owned()) {
            None => Ok(ApiKey(None)),
            Some(k) if k.is_empty() => Err(match file {
                Some(p) => format!("ingest.api_key_file {} is empty", p.display()),
                None => format!("{API_KEY_ENV} is set but empty"),
            }),
            Some(k) => Ok(ApiKey(Some(k.into_bytes()))),
        }
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Lets the request through when no key is configured or it carries the key.
    pub fn check(&self, api: Api, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(key) = &self.0 else {
            return Ok(());
        };
        let given = headers.get("x-api-key").map(|v| v.as_bytes()).or_else(|| {
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        });
        match given {
            None => Err(Refusal::unauthorized(api)),
            Some(g) if constant_time_eq(g, key) => Ok(()),
            Some(_) => Err(Refusal::forbidden(api, "the API key is not valid")),
        }
    }
}

/// Equal bytes, in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_key_is_taken_from_either_header_and_a_wrong_one_is_forbidden() {
        let key = ApiKey(Some(b"s3cret".to_vec()));
        assert!(key
            .check(Api::Gateway, &headers(&[("x-api-key", "s3cret")]))
            .is_ok());
        assert!(key
            .check(
                Api::Gateway,
                &headers(&[("authorization", "Bearer s3cret")])
            )
            .is_ok());
        let missing = key.check(Api::Gateway, &headers(&[])).unwrap_err();
        assert_eq!(missing.status, 401);
        let wrong = key
            .check(Api::RestProxy, &headers(&[("x-api-key", "s3cre")]))
            .unwrap_err();
        assert_eq!(wrong.status, 403);
        assert!(ApiKey(None).check(Api::Gateway, &headers(&[])).is_ok());
        assert!(!format!("{key:?}").contains("s3cret"), "never printed");
    }

    #[test]
    fn comparison_needs_every_byte() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
