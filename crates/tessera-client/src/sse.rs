//! Server-sent events: an incremental decoder over arbitrary byte chunks, and `EventStream`, which
//! turns a response body into typed events ending at `data: [DONE]`.
//!
//! Only `data` fields matter for the OpenAI protocol; `event`, `id` and `retry` are skipped, as
//! are comment lines (`: keep-alive`). Lines end with `\n`, `\r\n` or `\r`, as the SSE spec allows.

use crate::error::ClientError;
use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use serde::de::DeserializeOwned;
use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tessera_core::openai::ErrorResponse;

/// Largest event we buffer. Far above any real chunk (a few KiB with logprobs); a server that
/// never sends a line end must not grow our memory without bound.
pub const MAX_EVENT_BYTES: usize = 8 << 20;

/// Splits a byte stream into the `data` payloads of its events.
#[derive(Debug, Default)]
pub struct SseDecoder {
    /// Bytes of the current, unfinished line.
    line: Vec<u8>,
    /// The last byte seen was `\r`: a `\n` right after it belongs to the same line end.
    after_cr: bool,
    /// `data` lines of the event being read, joined by `\n`; `None` until one arrives.
    data: Option<String>,
    events: VecDeque<String>,
}

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; complete events become available from `next_event`.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<(), ClientError> {
        if self.after_cr && bytes.first() == Some(&b'\n') {
            bytes = &bytes[1..];
        }
        self.after_cr = false;
        while let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.line.extend_from_slice(&bytes[..end]);
            self.check_size()?;
            self.end_line()?;
            let crlf = bytes[end] == b'\r' && bytes.get(end + 1) == Some(&b'\n');
            if bytes[end] == b'\r' && end + 1 == bytes.len() {
                self.after_cr = true;
            }
            bytes = &bytes[end + if crlf { 2 } else { 1 }..];
        }
        self.line.extend_from_slice(bytes);
        self.check_size()
    }

    /// The next complete event's data, in order.
    pub fn next_event(&mut self) -> Option<String> {
        self.events.pop_front()
    }

    fn check_size(&self) -> Result<(), ClientError> {
        let pending = self.line.len() + self.data.as_ref().map_or(0, String::len);
        if pending > MAX_EVENT_BYTES {
            return Err(ClientError::Stream(format!("event larger than {MAX_EVENT_BYTES} bytes")));
        }
        Ok(())
    }

    fn end_line(&mut self) -> Result<(), ClientError> {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            // A blank line dispatches the event; one without data lines is no event.
            if let Some(data) = self.data.take() {
                self.events.push_back(data);
            }
            return Ok(());
        }
        let line = String::from_utf8(line).map_err(|_| ClientError::Stream("event is not UTF-8".into()))?;
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_str(), ""),
        };
        // `field` is empty for a comment line, which the spec says to ignore.
        if field == "data" {
            match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            }
        }
        Ok(())
    }
}

/// The end-of-stream marker of the OpenAI protocol.
const DONE: &str = "[DONE]";

/// A typed event stream over a streaming response's body.
///
/// Yields each `data` event parsed as `T`, then ends after `data: [DONE]`. A body that ends
/// before `[DONE]` yields `ClientError::Stream` (the server died or a proxy cut the response); an
/// error event (`data: {"error": ...}`) yields `ClientError::Api`. After an error the stream ends.
///
/// Dropping it drops the response body, which closes the connection, and the server aborts the
/// request (a streamed response is never read to the end, so the connection is not reused).
pub struct EventStream<T> {
    /// `None` once the stream has ended, so the connection is released as early as possible.
    body: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
    decoder: SseDecoder,
    status: u16,
    idle_timeout: Option<Duration>,
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The idle timer runs from when we started waiting for bytes, not from the last bytes: time
    /// the consumer spends between polls is not the server's silence.
    waiting: bool,
    _item: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for EventStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream").field("open", &self.body.is_some()).finish()
    }
}

impl<T: DeserializeOwned> EventStream<T> {
    pub(crate) fn new(response: reqwest::Response, idle_timeout: Option<Duration>) -> Self {
        let status = response.status().as_u16();
        EventStream {
            body: Some(response.bytes_stream().boxed()),
            decoder: SseDecoder::new(),
            status,
            idle_timeout,
            idle: idle_timeout.map(|d| Box::pin(tokio::time::sleep(d))),
            waiting: false,
            _item: PhantomData,
        }
    }

    /// Ends the stream with `item` (an error, or `None` for `[DONE]`).
    fn close(&mut self, item: Option<Result<T, ClientError>>) -> Poll<Option<Result<T, ClientError>>> {
        self.body = None;
        self.idle = None;
        Poll::Ready(item)
    }

    fn parse(&self, data: &str) -> Result<T, ClientError> {
        match serde_json::from_str::<T>(data) {
            Ok(item) => Ok(item),
            // Servers report mid-stream failures as an OpenAI error object in a data event.
            Err(source) => match serde_json::from_str::<ErrorResponse>(data) {
                Ok(e) => Err(ClientError::Api { status: self.status, error: e.error, retry_after: None }),
                Err(_) => Err(ClientError::decode(source, data.as_bytes())),
            },
        }
    }
}

impl<T: DeserializeOwned> Stream for EventStream<T> {
    type Item = Result<T, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(data) = this.decoder.next_event() {
                if data == DONE {
                    return this.close(None);
                }
                let item = this.parse(&data);
                return if item.is_err() { this.close(Some(item)) } else { Poll::Ready(Some(item)) };
            }
            let Some(body) = this.body.as_mut() else { return Poll::Ready(None) };
            match body.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(bytes))) => {
                    this.waiting = false;
                    if let Err(e) = this.decoder.push(&bytes) {
                        return this.close(Some(Err(e)));
                    }
                }
                Poll::Ready(Some(Err(e))) => return this.close(Some(Err(e.into()))),
                Poll::Ready(None) => {
                    let msg = "stream ended without data: [DONE]".to_string();
                    return this.close(Some(Err(ClientError::Stream(msg))));
                }
                Poll::Pending => {
                    if let (Some(idle), Some(d)) = (this.idle.as_mut(), this.idle_timeout) {
                        if !this.waiting {
                            this.waiting = true;
                            idle.as_mut().reset(tokio::time::Instant::now() + d);
                        }
                        if idle.as_mut().poll(cx).is_ready() {
                            return this.close(Some(Err(ClientError::Timeout)));
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(chunks: &[&[u8]]) -> Vec<String> {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        for chunk in chunks {
            d.push(chunk).unwrap();
            out.extend(std::iter::from_fn(|| d.next_event()));
        }
        out
    }

    const STREAM: &str =
        ": keep-alive\n\ndata: {\"a\":1}\n\nevent: message\nid: 3\ndata: {\"b\":\"x\\ny\"}\r\n\r\n\
                          :ping\r\rdata:{\"c\":2}\r\rdata: [DONE]\n\n";

    #[test]
    fn decodes_events_comments_and_every_line_ending() {
        let events = decode_all(&[STREAM.as_bytes()]);
        assert_eq!(events, ["{\"a\":1}", "{\"b\":\"x\\ny\"}", "{\"c\":2}", "[DONE]"]);
    }

    #[test]
    fn any_split_into_three_pieces_gives_the_same_events() {
        let bytes = STREAM.as_bytes();
        let whole = decode_all(&[bytes]);
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let got = decode_all(&[&bytes[..i], &bytes[i..j], &bytes[j..]]);
                assert_eq!(got, whole, "split at {i}, {j}");
            }
        }
    }

    #[test]
    fn byte_at_a_time_keeps_multibyte_characters_whole() {
        let text = "data: {\"t\":\"héllo ✓ 🦀\"}\n\n";
        let pieces: Vec<&[u8]> = text.as_bytes().chunks(1).collect();
        assert_eq!(decode_all(&pieces), ["{\"t\":\"héllo ✓ 🦀\"}"]);
    }

    #[test]
    fn multi_line_data_joins_with_newline_and_unterminated_event_waits() {
        let mut d = SseDecoder::new();
        d.push(b"data: one\ndata: two\n\ndata: partial\n").unwrap();
        assert_eq!(d.next_event().as_deref(), Some("one\ntwo"));
        assert_eq!(d.next_event(), None);
        d.push(b"\n").unwrap();
        assert_eq!(d.next_event().as_deref(), Some("partial"));
    }

    #[test]
    fn rejects_oversized_lines_and_invalid_utf8() {
        let mut d = SseDecoder::new();
        let big = vec![b'x'; MAX_EVENT_BYTES + 1];
        assert!(matches!(d.push(&big), Err(ClientError::Stream(_))));
        let mut d = SseDecoder::new();
        assert!(matches!(d.push(b"data: \xff\xfe\n\n"), Err(ClientError::Stream(_))));
    }
}
