//! Hands a GetRecords answer's records to pinstream's own decoder ([`super::wire`]) while the
//! SDK keeps doing the rest: signing, the HTTP exchange, errors, and reading the iterator,
//! the lag and the child shards.
//!
//! [`RecordsTap`] is an interceptor added to one GetRecords call. When a successful answer
//! arrives, it wraps the response body: as the SDK reads the body, the wrapper gathers it,
//! takes the `Records` array out (decoded into the tap's slot) and gives the SDK the body
//! with an empty array. A body the decoder does not understand reaches the SDK unchanged,
//! and the reader then takes the records the SDK decoded, so nothing depends on this path
//! being taken.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use aws_sdk_kinesis::config::interceptors::BeforeDeserializationInterceptorContextMut;
use aws_sdk_kinesis::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::records::Records;
use super::wire;

/// More than a GetRecords answer holds: 10 MiB of data, base64 (4/3) plus each record's
/// other members.
const MAX_ANSWER_BYTES: usize = 32 << 20;

/// The records one GetRecords call's answer held, once the SDK has read it.
#[derive(Debug, Clone, Default)]
pub struct RecordsTap {
    slot: Arc<Mutex<Option<Records>>>,
}

impl RecordsTap {
    pub fn new() -> Self {
        Self::default()
    }

    /// The records decoded from the answer, if the decoder read it (else the SDK did).
    pub fn take(&self) -> Option<Records> {
        lock(&self.slot).take()
    }
}

impl Intercept for RecordsTap {
    fn name(&self) -> &'static str {
        "pinstream::RecordsTap"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_kinesis::error::BoxError> {
        let response = context.response_mut();
        if !response.status().is_success() {
            return Ok(());
        }
        // Room for the whole answer up front, within what a GetRecords answer can be (a
        // bogus header must not make a huge allocation).
        let length = response
            .headers()
            .get("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0)
            .min(MAX_ANSWER_BYTES);
        let body = response.take_body();
        let slot = self.slot.clone();
        *response.body_mut() = match body.bytes() {
            // Already in memory (a retried or canned answer): split it now.
            Some(bytes) => SdkBody::from(split(bytes, &slot)),
            None => SdkBody::from_body_1_x(SplittingBody {
                inner: body,
                gathered: Vec::with_capacity(length),
                slot,
                finished: false,
            }),
        };
        Ok(())
    }
}

/// The slot, even if a panic elsewhere poisoned its lock (it holds plain data).
fn lock(slot: &Mutex<Option<Records>>) -> std::sync::MutexGuard<'_, Option<Records>> {
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The body for the SDK: with the records taken into `slot` when the decoder reads them,
/// else the body as it came.
fn split(body: &[u8], slot: &Mutex<Option<Records>>) -> Bytes {
    match wire::take_records(body) {
        Ok((records, rest)) => {
            // Stored before the body is cut: records taken out of the answer always reach
            // the reader.
            *lock(slot) = Some(records);
            Bytes::from(rest)
        }
        Err(why) => {
            tracing::debug!(
                reason = why.0,
                "GetRecords answer left to the SDK's decoder"
            );
            Bytes::copy_from_slice(body)
        }
    }
}

/// Gathers the whole answer, then yields it once, split.
struct SplittingBody {
    inner: SdkBody,
    gathered: Vec<u8>,
    slot: Arc<Mutex<Option<Records>>>,
    finished: bool,
}

impl Body for SplittingBody {
    type Data = Bytes;
    type Error = aws_smithy_types::body::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.gathered.extend_from_slice(&data),
                    // Trailers: a GetRecords answer has none; passed on as they are.
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Poll::Ready(None) => {
                    this.finished = true;
                    let body = std::mem::take(&mut this.gathered);
                    return Poll::Ready(Some(Ok(Frame::data(split(&body, &this.slot)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
