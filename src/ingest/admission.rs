//! What a request must pass before its records are sent: a body no larger than
//! `ingest.max_request_bytes` (413 otherwise, before reading it when Content-Length says
//! so), and room among the bytes being stored now (`ingest.max_in_flight_bytes`; 429 with
//! `Retry-After` when full, so memory stays bounded however many clients post at once).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_LENGTH;
use axum::http::HeaderMap;
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::reply::{Api, Refusal};

#[derive(Debug, Clone)]
pub struct Admission {
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    max_request: usize,
}

/// A request's body and its room among the bytes in flight (given back when dropped).
pub struct Admitted {
    pub body: Bytes,
    _room: OwnedSemaphorePermit,
}

impl Admission {
    pub fn new(max_in_flight: usize, max_request: usize) -> Self {
        Admission {
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            max_request,
        }
    }

    /// Bytes being stored now.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.in_flight.available_permits()
    }

    /// Reads the body within the limits, holding room for it.
    pub async fn admit(
        &self,
        api: Api,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Admitted, Refusal> {
        let declared: Option<usize> = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        if let Some(n) = declared.filter(|n| *n > self.max_request) {
            return Err(self.too_large(api, n));
        }
        // Room for what the body says it is, or for the most it may be.
        let room = declared
            .unwrap_or(self.max_request)
            .clamp(1, self.max_in_flight);
        let permit = self
            .in_flight
            .clone()
            .try_acquire_many_owned(room as u32)
            .map_err(|_| Refusal::busy(api))?;
        metrics::gauge!("pinstream_ingest_in_flight_bytes").set(self.in_flight() as f64);
        let mut data = body.into_data_stream();
        let mut buf = bytes::BytesMut::with_capacity(declared.unwrap_or(0).min(self.max_request));
        while let Some(chunk) = data.next().await {
            let chunk = chunk.map_err(|e| {
                Refusal::bad_request(api, format!("could not read the request body: {e}"))
            })?;
            if buf.len() + chunk.len() > self.max_request {
                return Err(self.too_large(api, buf.len() + chunk.len()));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Admitted {
            body: buf.freeze(),
            _room: permit,
        })
    }

    fn too_large(&self, api: Api, n: usize) -> Refusal {
        Refusal::too_large(
            api,
            format!(
                "the body ({n} bytes or more) is over the {} bytes a request may carry; send fewer records per request",
                self.max_request
            ),
        )
    }
}
