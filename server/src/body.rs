//! Reading a request body whole: bounded in size, and in how long it may go without a byte.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use s3s::dto::StreamingBlob;
use s3s::{S3Error, S3ErrorCode, s3_error};

/// Reads `body` whole. `EntityTooLarge` past `max` bytes, `RequestTimeout` when no byte came
/// for `idle`, `IncompleteBody` when the client went away or sent fewer bytes than
/// `expected`.
pub(crate) async fn read_all(
    body: Option<StreamingBlob>,
    expected: Option<u64>,
    max: u64,
    idle: Duration,
) -> Result<Bytes, S3Error> {
    if let Some(n) = expected
        && n > max
    {
        return Err(too_large(n, max));
    }
    let Some(mut body) = body else {
        return match expected {
            None | Some(0) => Ok(Bytes::new()),
            Some(_) => Err(s3_error!(IncompleteBody, "the request has no body")),
        };
    };
    let mut buf = BytesMut::with_capacity(expected.unwrap_or(0).min(max) as usize);
    let mut first: Option<Bytes> = None;
    loop {
        let chunk = match tokio::time::timeout(idle, body.next()).await {
            Err(_) => {
                return Err(S3Error::with_message(
                    S3ErrorCode::RequestTimeout,
                    format!("no body bytes arrived for {idle:?}"),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(S3Error::with_message(
                    S3ErrorCode::IncompleteBody,
                    format!("the body could not be read whole: {e}"),
                ));
            }
            Ok(Some(Ok(c))) => c,
        };
        let have = buf.len() as u64 + first.as_ref().map_or(0, |b| b.len() as u64);
        if have + chunk.len() as u64 > max {
            return Err(too_large(have + chunk.len() as u64, max));
        }
        // One chunk (most small bodies) is kept as it came: no copy.
        if buf.is_empty() && first.is_none() {
            first = Some(chunk);
        } else {
            if let Some(f) = first.take() {
                buf.extend_from_slice(&f);
            }
            buf.extend_from_slice(&chunk);
        }
    }
    let data = match first {
        Some(f) => f,
        None => buf.freeze(),
    };
    if let Some(n) = expected
        && data.len() as u64 != n
    {
        return Err(S3Error::with_message(
            S3ErrorCode::IncompleteBody,
            format!(
                "the body has {} bytes, its Content-Length says {n}",
                data.len()
            ),
        ));
    }
    Ok(data)
}

fn too_large(n: u64, max: u64) -> S3Error {
    S3Error::with_message(
        S3ErrorCode::EntityTooLarge,
        format!("{n} bytes is over this server's MaxObjectSize of {max} bytes"),
    )
}
