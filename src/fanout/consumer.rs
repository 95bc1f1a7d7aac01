//! A stream's registered consumers. [`ensure`] is safe when many workers start at once: it
//! describes first, registers only when the consumer does not exist, treats "already being
//! registered" as someone else's registration, and waits until the consumer is ACTIVE, so
//! a fleet ends with one consumer of the name. Nothing here deregisters on a normal stop:
//! other workers still use the consumer; [`deregister`] is for operators.

use std::time::Duration;

use aws_sdk_kinesis::types::ConsumerStatus;
use aws_sdk_kinesis::Client;
use tokio::time::Instant;

use crate::aws::ServiceError;

/// The most consumers a stream can have registered (a Kinesis limit).
const MAX_CONSUMERS: usize = 20;

/// A registered consumer of a stream.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Consumer {
    pub stream: String,
    pub name: String,
    pub arn: String,
    pub status: String,
}

/// The stream's ARN (consumers are addressed by it).
pub async fn stream_arn(client: &Client, stream: &str) -> Result<String, ServiceError> {
    Ok(crate::kinesis::describe_summary(client, stream)
        .await?
        .stream_arn()
        .to_owned())
}

/// The consumer `name` of `stream`, registered if it does not exist, once ACTIVE (within
/// `timeout`).
pub async fn ensure(
    client: &Client,
    stream: &str,
    name: &str,
    timeout: Duration,
) -> Result<Consumer, ServiceError> {
    let arn = stream_arn(client, stream).await?;
    let deadline = Instant::now() + timeout;
    let mut registered = false;
    loop {
        match describe(client, stream, &arn, name).await {
            Ok(c) if c.status == ConsumerStatus::Active.as_str() => return Ok(c),
            // CREATING (ours or another worker's), or DELETING (a deregistration in
            // progress: register again once it is gone).
            Ok(_) => {}
            Err(e) if e.code_is("ResourceNotFoundException") => {
                match register(client, &arn, name).await {
                    Ok(()) => {
                        if !registered {
                            tracing::info!(%stream, consumer = name, "registered the stream consumer");
                        }
                        registered = true;
                    }
                    // Another worker registered it between our describe and our register.
                    Err(e) if e.code_is("ResourceInUseException") => {}
                    // Either "too many registrations at once" (wait and try again) or "the
                    // stream has its 20 consumers" (give up): the list tells them apart.
                    Err(e) if e.code_is("LimitExceededException") => {
                        if list(client, stream)
                            .await
                            .is_ok_and(|all| all.len() >= MAX_CONSUMERS)
                        {
                            return Err(e);
                        }
                    }
                    Err(e) if e.is_retryable() => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) if e.is_retryable() => {}
            Err(e) => return Err(e),
        }
        if Instant::now() >= deadline {
            return Err(ServiceError::uncoded(
                "Kinesis",
                "DescribeStreamConsumer",
                format!("consumer {name} of stream {stream} not ACTIVE after {timeout:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn describe(
    client: &Client,
    stream: &str,
    arn: &str,
    name: &str,
) -> Result<Consumer, ServiceError> {
    let out = client
        .describe_stream_consumer()
        .stream_arn(arn)
        .consumer_name(name)
        .send()
        .await
        .map_err(|e| ServiceError::kinesis("DescribeStreamConsumer", e))?;
    let d = out.consumer_description().ok_or_else(|| {
        ServiceError::uncoded(
            "Kinesis",
            "DescribeStreamConsumer",
            format!("no description of consumer {name}"),
        )
    })?;
    Ok(Consumer {
        stream: stream.to_owned(),
        name: d.consumer_name().to_owned(),
        arn: d.consumer_arn().to_owned(),
        status: d.consumer_status().as_str().to_owned(),
    })
}

async fn register(client: &Client, stream_arn: &str, name: &str) -> Result<(), ServiceError> {
    client
        .register_stream_consumer()
        .stream_arn(stream_arn)
        .consumer_name(name)
        .send()
        .await
        .map_err(|e| ServiceError::kinesis("RegisterStreamConsumer", e))?;
    Ok(())
}

/// Every consumer registered on `stream`.
pub async fn list(client: &Client, stream: &str) -> Result<Vec<Consumer>, ServiceError> {
    let arn = stream_arn(client, stream).await?;
    let mut all = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let out = client
            .list_stream_consumers()
            .stream_arn(&arn)
            .set_next_token(next.take())
            .send()
            .await
            .map_err(|e| ServiceError::kinesis("ListStreamConsumers", e))?;
        all.extend(out.consumers().iter().map(|c| Consumer {
            stream: stream.to_owned(),
            name: c.consumer_name().to_owned(),
            arn: c.consumer_arn().to_owned(),
            status: c.consumer_status().as_str().to_owned(),
        }));
        match out.next_token() {
            Some(t) if !t.is_empty() => next = Some(t.to_owned()),
            _ => return Ok(all),
        }
    }
}

/// Deregisters the consumer `name` of `stream` and waits (within `timeout`) until it is
/// gone. A consumer that does not exist is not an error.
pub async fn deregister(
    client: &Client,
    stream: &str,
    name: &str,
    timeout: Duration,
) -> Result<(), ServiceError> {
    let arn = stream_arn(client, stream).await?;
    match client
        .deregister_stream_consumer()
        .stream_arn(&arn)
        .consumer_name(name)
        .send()
        .await
        .map_err(|e| ServiceError::kinesis("DeregisterStreamConsumer", e))
    {
        Ok(_) => {}
        Err(e) if e.code_is("ResourceNotFoundException") => return Ok(()),
        Err(e) => return Err(e),
    }
    let deadline = Instant::now() + timeout;
    loop {
        match describe(client, stream, &arn, name).await {
            Err(e) if e.code_is("ResourceNotFoundException") => return Ok(()),
            Err(e) if !e.is_retryable() => return Err(e),
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(ServiceError::uncoded(
                "Kinesis",
                "DeregisterStreamConsumer",
                format!("consumer {name} of stream {stream} still there after {timeout:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The consumer each stream is read through in fan-out mode: registered (once for the
/// fleet) and ACTIVE, by stream name, the streams at once. A stream whose consumer cannot be
/// registered (the limit of consumers reached, no permission, an endpoint without fan-out)
/// is refused with the service's error, or with `fallback_to_polling` left out of the map
/// (it is polled), said once in a warning.
pub async fn consumers_for_run(
    client: &Client,
    streams: impl IntoIterator<Item = &str>,
    name: &str,
    fallback_to_polling: bool,
) -> Result<std::collections::BTreeMap<String, String>, ServiceError> {
    let streams: std::collections::BTreeSet<&str> = streams.into_iter().collect();
    let registered = futures::future::join_all(streams.iter().map(|stream| async move {
        (
            *stream,
            ensure(client, stream, name, Duration::from_secs(120)).await,
        )
    }))
    .await;
    let mut arns = std::collections::BTreeMap::new();
    for (stream, consumer) in registered {
        match consumer {
            Ok(c) => {
                tracing::info!(%stream, consumer = name, "reading by enhanced fan-out");
                arns.insert(stream.to_owned(), c.arn);
            }
            Err(e) if fallback_to_polling && !e.code_is("ResourceNotFoundException") => {
                tracing::warn!(%stream, consumer = name, error = %e, "cannot read by enhanced fan-out; polling this stream instead (reader.fallback = \"polling\")");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(arns)
}
