//! SIGTERM during load: `tessera serve` stops taking requests, lets the in-flight ones finish,
//! and exits 0.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A whole HTTP/1.1 exchange over a fresh connection; returns the raw response.
fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let port = free_port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve", "--dummy", "tiny", "--port", &port.to_string()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http(port, "GET", "/health", "").is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
        assert!(Instant::now() < deadline, "server did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let body = r#"{"model": "tiny", "prompt": "hello", "max_tokens": 150, "ignore_eos": true}"#;
    let requests: Vec<_> =
        (0..6).map(|_| std::thread::spawn(move || http(port, "POST", "/v1/completions", body))).collect();
    // Let the requests reach the engine, then ask the server to stop.
    std::thread::sleep(Duration::from_millis(300));
    let status = Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    assert!(status.success());
    for request in requests {
        let response = request.join().unwrap().unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains("\"completion_tokens\":150"), "{response}");
    }
    let exit = server.wait().unwrap();
    assert_eq!(exit.code(), Some(0), "drained server should exit 0");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "the port is closed after exit");
}
