//! A tiny HTTP/1.1 server for tests: records each request and answers with a canned `Reply`.
//! One request per connection (every reply says `Connection: close`), which keeps it simple and
//! makes a client's disconnect visible as a failed write.

use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

#[derive(Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

pub enum Reply {
    /// A complete response with `Content-Length`.
    Full { status: u16, headers: Vec<(&'static str, String)>, body: Vec<u8> },
    /// A 200 event stream sent as one HTTP chunk per piece, a few milliseconds apart so the
    /// client sees them separately; then the body ends (whatever the pieces said).
    Sse(Vec<Vec<u8>>),
    /// Like `Sse`, waiting the given milliseconds before each piece.
    SsePaced(Vec<(u64, Vec<u8>)>),
    /// Sends these stream pieces, then stays silent with the connection open.
    SseThenStall(Vec<Vec<u8>>),
    /// Sends this first piece, then keep-alive comments until a write fails (the client went
    /// away), and reports that on the channel.
    SseUntilDisconnect(Vec<u8>, mpsc::UnboundedSender<()>),
    /// Reads the request and never answers.
    Stall,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply::Full {
            status,
            headers: vec![("Content-Type", "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }
}

pub struct MockServer {
    pub url: String,
    requests: mpsc::UnboundedReceiver<Recorded>,
}

impl MockServer {
    /// The next request the server received.
    pub async fn request(&mut self) -> Recorded {
        tokio::time::timeout(Duration::from_secs(5), self.requests.recv())
            .await
            .expect("a request within 5 s")
            .expect("server running")
    }
}

/// Starts a server on an ephemeral port; it lives as long as the test's runtime.
pub async fn serve(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> MockServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, requests) = mpsc::unbounded_channel();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let (handler, tx) = (handler.clone(), tx.clone());
            tokio::spawn(async move {
                let Some((mut socket, request)) = read_request(socket).await else { return };
                let reply = handler(&request);
                let _ = tx.send(request);
                let _ = write_reply(&mut socket, reply).await;
            });
        }
    });
    MockServer { url, requests }
}

async fn read_request(mut socket: TcpStream) -> Option<(TcpStream, Recorded)> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let mut start = lines.next()?.split(' ');
    let (method, path) = (start.next()?.to_string(), start.next()?.to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len = headers.iter().find(|(n, _)| n == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((socket, Recorded { method, path, headers, body }))
}

const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                          Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";

async fn write_chunk(socket: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    socket.write_all(format!("{:x}\r\n", data.len()).as_bytes()).await?;
    socket.write_all(data).await?;
    socket.write_all(b"\r\n").await?;
    socket.flush().await?;
    tokio::time::sleep(Duration::from_millis(5)).await;
    Ok(())
}

async fn write_reply(socket: &mut TcpStream, reply: Reply) -> std::io::Result<()> {
    match reply {
        Reply::Full { status, headers, body } => {
            let mut head =
                format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            socket.write_all(head.as_bytes()).await?;
            socket.write_all(&body).await?;
        }
        Reply::Sse(pieces) => {
            socket.write_all(SSE_HEAD).await?;
            for piece in pieces {
                write_chunk(socket, &piece).await?;
            }
            socket.write_all(b"0\r\n\r\n").await?;
        }
        Reply::SsePaced(pieces) => {
            socket.write_all(SSE_HEAD).await?;
            for (delay_ms, piece) in pieces {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                write_chunk(socket, &piece).await?;
            }
            socket.write_all(b"0\r\n\r\n").await?;
        }
        Reply::SseThenStall(pieces) => {
            socket.write_all(SSE_HEAD).await?;
            for piece in pieces {
                write_chunk(socket, &piece).await?;
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        Reply::SseUntilDisconnect(first, gone) => {
            socket.write_all(SSE_HEAD).await?;
            write_chunk(socket, &first).await?;
            // Bounded so a client that never disconnects fails the test instead of hanging it.
            for _ in 0..1000 {
                if write_chunk(socket, b": keep-alive\n\n").await.is_err() {
                    let _ = gone.send(());
                    return Ok(());
                }
            }
        }
        Reply::Stall => tokio::time::sleep(Duration::from_secs(60)).await,
    }
    socket.flush().await
}
