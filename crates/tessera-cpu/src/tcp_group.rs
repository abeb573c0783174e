//! A tensor-parallel group whose ranks are other processes, over TCP: the CPU data plane of a
//! multi-node deployment (on GPUs NCCL carries the data). It is a correctness and test path, not
//! a fast one.
//!
//! Rank 0 is the hub: every other rank holds one connection to it. In a collective each rank
//! sends its part to the hub, the hub combines the parts in rank order and sends the same bytes
//! back to everyone, so results are bitwise identical on every rank (and equal to `LocalGroup`'s).
//! Every collective has a deadline; a peer that dies closes its socket, which is an error on the
//! hub, which then closes every socket of the group (`TcpPoison`), so no rank ever hangs.
//!
//! Wire format (little-endian). Handshake, peer to hub: `MAGIC`, `VERSION` u32, group token u64,
//! rank u32, world u32; the hub answers one byte, 0 = accepted. A collective: op u8, sequence
//! number u64, element count u64, then the f32 values; the hub answers with the same header and
//! the sum (all-reduce) or every rank's count and values in rank order (all-gather).

use crate::collective::Collective;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 4] = b"TSRC";
const VERSION: u32 = 1;
const OP_ALL_REDUCE: u8 = 1;
const OP_ALL_GATHER: u8 = 2;
/// Largest collective accepted from the network (elements), so a corrupt header cannot make the
/// hub allocate without bound.
const MAX_ELEMENTS: u64 = 1 << 31;

/// Fails a group from any thread: shuts down every socket attached to it, so ranks blocked in a
/// read or write return at once, and makes every later collective fail with the first reason.
#[derive(Clone, Default)]
pub struct TcpPoison {
    inner: Arc<Mutex<PoisonState>>,
}

#[derive(Default)]
struct PoisonState {
    reason: Option<String>,
    streams: Vec<TcpStream>,
}

impl TcpPoison {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn poison(&self, reason: &str) {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        state.reason.get_or_insert_with(|| reason.to_string());
        for stream in state.streams.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    pub fn reason(&self) -> Option<String> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).reason.clone()
    }

    fn check(&self) -> Result<(), String> {
        match self.reason() {
            Some(reason) => Err(format!("group is failed: {reason}")),
            None => Ok(()),
        }
    }

    /// Registers a socket to be shut down on poison (at once if already poisoned).
    fn attach(&self, stream: &TcpStream) -> Result<(), String> {
        let clone = stream.try_clone().map_err(|e| format!("cloning a socket: {e}"))?;
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reason) = &state.reason {
            let _ = clone.shutdown(Shutdown::Both);
            return Err(format!("group is failed: {reason}"));
        }
        state.streams.push(clone);
        Ok(())
    }
}

/// The hub's listening socket, bound before any rank starts so that peers can connect to a
/// known port.
pub struct TcpHub {
    listener: TcpListener,
}

impl TcpHub {
    pub fn bind(addr: impl ToSocketAddrs) -> std::io::Result<Self> {
        Ok(TcpHub { listener: TcpListener::bind(addr)? })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts ranks `1..world` of the group `token` until `deadline`, and returns rank 0's
    /// communicator. Connections with a wrong token, version or rank are refused and logged in
    /// the error only if the deadline passes.
    pub fn accept(
        self,
        world: usize,
        token: u64,
        timeout: Duration,
        deadline: Instant,
        poison: TcpPoison,
    ) -> Result<TcpComm, String> {
        self.listener.set_nonblocking(true).map_err(|e| format!("hub socket: {e}"))?;
        let mut peers: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
        let mut refused = Vec::new();
        while peers.iter().any(Option::is_none) {
            poison.check()?;
            if Instant::now() >= deadline {
                let missing: Vec<String> = peers
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.is_none())
                    .map(|(i, _)| (i + 1).to_string())
                    .collect();
                return Err(format!(
                    "collective hub: ranks {} did not connect in time{}",
                    missing.join(", "),
                    if refused.is_empty() {
                        String::new()
                    } else {
                        format!(" (refused: {})", refused.join("; "))
                    }
                ));
            }
            match self.listener.accept() {
                Ok((stream, from)) => match handshake_hub(&stream, world, token, &peers) {
                    Ok(rank) => {
                        poison.attach(&stream)?;
                        peers[rank - 1] = Some(stream);
                    }
                    Err(why) => refused.push(format!("{from}: {why}")),
                },
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(format!("collective hub accept: {e}")),
            }
        }
        let peers = peers.into_iter().map(|p| p.expect("every peer connected")).collect();
        Ok(TcpComm::new(0, world, timeout, poison, Links::Hub(peers)))
    }
}

/// Reads and checks a peer's handshake; returns its rank.
fn handshake_hub(
    stream: &TcpStream,
    world: usize,
    token: u64,
    peers: &[Option<TcpStream>],
) -> Result<usize, String> {
    let setup = |e: std::io::Error| format!("handshake: {e}");
    stream.set_nonblocking(false).map_err(setup)?;
    stream.set_nodelay(true).map_err(setup)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut header = [0u8; 24];
    read_full(&mut &*stream, &mut header, deadline)?;
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let (version, rank, their_world) = (word(4), word(16) as usize, word(20) as usize);
    let their_token = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let why = if &header[..4] != MAGIC {
        Some("not a Tessera collective peer".to_string())
    } else if version != VERSION {
        Some(format!("protocol version {version}, expected {VERSION}"))
    } else if their_token != token {
        Some("belongs to another group (token mismatch)".to_string())
    } else if their_world != world || rank == 0 || rank >= world {
        Some(format!("rank {rank} of {their_world} does not fit a group of {world}"))
    } else if peers[rank - 1].is_some() {
        Some(format!("rank {rank} connected twice"))
    } else {
        None
    };
    write_full(&mut &*stream, &[u8::from(why.is_some())], deadline)?;
    match why {
        Some(why) => Err(why),
        None => Ok(rank),
    }
}

/// Connects rank `rank` (not 0) to the hub at `hub`, retrying until `deadline`.
pub fn tcp_connect(
    hub: SocketAddr,
    rank: usize,
    world: usize,
    token: u64,
    timeout: Duration,
    deadline: Instant,
    poison: TcpPoison,
) -> Result<TcpComm, String> {
    assert!(rank >= 1 && rank < world, "rank {rank} of {world} connects to the hub");
    let stream = loop {
        poison.check()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("rank {rank}: collective hub {hub} not reachable in time"));
        }
        match TcpStream::connect_timeout(&hub, left.min(Duration::from_secs(1))) {
            Ok(stream) => break stream,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let setup = |e: std::io::Error| format!("rank {rank}: connecting to the collective hub: {e}");
    stream.set_nodelay(true).map_err(setup)?;
    let mut header = Vec::with_capacity(24);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&token.to_le_bytes());
    header.extend_from_slice(&(rank as u32).to_le_bytes());
    header.extend_from_slice(&(world as u32).to_le_bytes());
    let shake_deadline = deadline.max(Instant::now() + Duration::from_secs(5));
    write_full(&mut &stream, &header, shake_deadline)?;
    let mut status = [0u8; 1];
    read_full(&mut &stream, &mut status, shake_deadline)?;
    if status[0] != 0 {
        return Err(format!("rank {rank}: the collective hub refused the connection"));
    }
    poison.attach(&stream)?;
    Ok(TcpComm::new(rank, world, timeout, poison, Links::Peer(stream)))
}

enum Links {
    /// Rank 0: connections to ranks 1.. in order.
    Hub(Vec<TcpStream>),
    Peer(TcpStream),
}

/// One rank's handle on a TCP group.
pub struct TcpComm {
    rank: usize,
    world: usize,
    timeout: Duration,
    poison: TcpPoison,
    links: Mutex<Links>,
    seq: AtomicU64,
}

impl TcpComm {
    fn new(rank: usize, world: usize, timeout: Duration, poison: TcpPoison, links: Links) -> Self {
        TcpComm { rank, world, timeout, poison, links: Mutex::new(links), seq: AtomicU64::new(0) }
    }

    pub fn poison(&self) -> &TcpPoison {
        &self.poison
    }

    /// Runs one collective; any failure poisons the group, so peers fail too.
    fn run(&self, op: u8, data: &[f32]) -> Result<Vec<u8>, String> {
        self.poison.check()?;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + self.timeout;
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = match &*links {
            Links::Hub(peers) => hub_round(peers, op, seq, data, deadline),
            Links::Peer(stream) => peer_round(stream, op, seq, data, deadline),
        };
        outcome.map_err(|err| {
            let reason = format!("rank {}: {err}", self.rank);
            self.poison.poison(&reason);
            // A peer that failed first explains more than our closed socket does.
            match self.poison.reason() {
                Some(first) if first != reason => format!("{reason} (group failed: {first})"),
                _ => reason,
            }
        })
    }
}

fn header(op: u8, seq: u64, len: usize) -> [u8; 17] {
    let mut out = [0u8; 17];
    out[0] = op;
    out[1..9].copy_from_slice(&seq.to_le_bytes());
    out[9..17].copy_from_slice(&(len as u64).to_le_bytes());
    out
}

fn parse_header(bytes: &[u8; 17]) -> (u8, u64, u64) {
    let seq = u64::from_le_bytes(bytes[1..9].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(bytes[9..17].try_into().expect("8 bytes"));
    (bytes[0], seq, len)
}

fn to_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn from_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()
}

/// Reads one peer's contribution and checks it matches the hub's own op.
fn read_part(
    stream: &TcpStream,
    op: u8,
    seq: u64,
    deadline: Instant,
    peer: usize,
) -> Result<Vec<u8>, String> {
    let mut head = [0u8; 17];
    read_full(&mut &*stream, &mut head, deadline).map_err(|e| format!("rank {peer}: {e}"))?;
    let (their_op, their_seq, len) = parse_header(&head);
    if their_op != op || their_seq != seq || len > MAX_ELEMENTS {
        return Err(format!(
            "rank {peer} is out of step: op {their_op} #{their_seq} ({len} values) against op {op} #{seq}"
        ));
    }
    let mut body = vec![0u8; len as usize * 4];
    read_full(&mut &*stream, &mut body, deadline).map_err(|e| format!("rank {peer}: {e}"))?;
    Ok(body)
}

fn hub_round(
    peers: &[TcpStream],
    op: u8,
    seq: u64,
    data: &[f32],
    deadline: Instant,
) -> Result<Vec<u8>, String> {
    let mut parts = vec![to_bytes(data)];
    for (i, stream) in peers.iter().enumerate() {
        parts.push(read_part(stream, op, seq, deadline, i + 1)?);
    }
    let reply = match op {
        OP_ALL_REDUCE => {
            if let Some(bad) = parts.iter().position(|p| p.len() != parts[0].len()) {
                return Err(format!("all_reduce of different lengths: rank {bad}"));
            }
            // Summing in rank order from zero, exactly as `LocalGroup` does.
            let mut sum = vec![0.0f32; data.len()];
            for part in &parts {
                sum.iter_mut().zip(from_bytes(part)).for_each(|(s, p)| *s += p);
            }
            let mut reply = header(op, seq, sum.len()).to_vec();
            reply.extend(to_bytes(&sum));
            reply
        }
        _ => {
            let mut reply = header(op, seq, parts.len()).to_vec();
            for part in &parts {
                reply.extend_from_slice(&((part.len() / 4) as u64).to_le_bytes());
                reply.extend_from_slice(part);
            }
            reply
        }
    };
    for (i, stream) in peers.iter().enumerate() {
        write_full(&mut &*stream, &reply, deadline).map_err(|e| format!("rank {}: {e}", i + 1))?;
    }
    Ok(reply[17..].to_vec())
}

fn peer_round(
    stream: &TcpStream,
    op: u8,
    seq: u64,
    data: &[f32],
    deadline: Instant,
) -> Result<Vec<u8>, String> {
    let mut message = header(op, seq, data.len()).to_vec();
    message.extend(to_bytes(data));
    write_full(&mut &*stream, &message, deadline).map_err(|e| format!("hub: {e}"))?;
    let mut head = [0u8; 17];
    read_full(&mut &*stream, &mut head, deadline).map_err(|e| format!("hub: {e}"))?;
    let (their_op, their_seq, len) = parse_header(&head);
    if their_op != op || their_seq != seq || len > MAX_ELEMENTS {
        return Err(format!("hub answered op {their_op} #{their_seq} to op {op} #{seq}"));
    }
    let body_len = match op {
        OP_ALL_REDUCE => len as usize * 4,
        // All-gather: `len` parts, each a count and its values; read them one by one.
        _ => {
            let mut body = Vec::new();
            for _ in 0..len {
                let mut count = [0u8; 8];
                read_full(&mut &*stream, &mut count, deadline).map_err(|e| format!("hub: {e}"))?;
                let n = u64::from_le_bytes(count);
                if n > MAX_ELEMENTS {
                    return Err(format!("hub sent a part of {n} values"));
                }
                let mut part = vec![0u8; n as usize * 4];
                read_full(&mut &*stream, &mut part, deadline).map_err(|e| format!("hub: {e}"))?;
                body.extend_from_slice(&count);
                body.extend(part);
            }
            return Ok(body);
        }
    };
    let mut body = vec![0u8; body_len];
    read_full(&mut &*stream, &mut body, deadline).map_err(|e| format!("hub: {e}"))?;
    Ok(body)
}

/// `read_exact` with an overall deadline (a socket timeout bounds each call, not the whole read).
fn read_full(stream: &mut &TcpStream, buf: &mut [u8], deadline: Instant) -> Result<(), String> {
    until_done(buf.len(), deadline, "waiting for data", |left, done| {
        stream.set_read_timeout(Some(left))?;
        stream.read(&mut buf[done..])
    })
}

/// `write_all` with an overall deadline.
fn write_full(stream: &mut &TcpStream, buf: &[u8], deadline: Instant) -> Result<(), String> {
    until_done(buf.len(), deadline, "sending data", |left, done| {
        stream.set_write_timeout(Some(left))?;
        stream.write(&buf[done..])
    })
}

/// Calls `step(time left, bytes done so far)`, which moves some of the `len` bytes, until all are
/// moved, the peer closes, or `deadline` passes (`waiting` says doing what, in the error).
fn until_done(
    len: usize,
    deadline: Instant,
    waiting: &str,
    mut step: impl FnMut(Duration, usize) -> std::io::Result<usize>,
) -> Result<(), String> {
    let mut done = 0;
    while done < len {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("deadline passed {waiting}"));
        }
        match step(left, done) {
            Ok(0) => return Err("connection closed".into()),
            Ok(n) => done += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!("deadline passed {waiting}"))
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

impl Collective for TcpComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), String> {
        let body = self.run(OP_ALL_REDUCE, data)?;
        if body.len() != data.len() * 4 {
            return Err(format!("rank {}: all_reduce answer has the wrong length", self.rank));
        }
        data.copy_from_slice(&from_bytes(&body));
        Ok(())
    }

    fn all_gather(&self, data: &[f32]) -> Result<Vec<Vec<f32>>, String> {
        let body = self.run(OP_ALL_GATHER, data)?;
        let mut parts = Vec::with_capacity(self.world);
        let mut rest = &body[..];
        while !rest.is_empty() {
            let n = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")) as usize;
            parts.push(from_bytes(&rest[8..8 + n * 4]));
            rest = &rest[8 + n * 4..];
        }
        if parts.len() != self.world {
            return Err(format!("rank {}: all_gather answer has {} parts", self.rank, parts.len()));
        }
        Ok(parts)
    }
}

#[cfg(test)]
#[path = "tcp_group_tests.rs"]
mod tests;
