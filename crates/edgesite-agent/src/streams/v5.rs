//! The WebSocket protocols kubectl 1.32 uses and containerd 1.6's streaming server lacks.
//! Port-forward's `SPDY/3.1+portforward.k8s.io` is SPDY in WebSocket messages: unwrapped here
//! and passed to the runtime's SPDY port-forward ([`tunnel_port_forward`]). Exec and attach's
//! `v5.channel.k8s.io` ([`bridge`]): the runtime has WebSocket only up to v4, which cannot
//! close stdin, so the agent ends the WebSocket here and speaks SPDY/3.1 `v4.channel.k8s.io` to the runtime, as the
//! upstream API server's stream translator does: channel 0/1/2/3/4 ↔ the stdin, stdout,
//! stderr, error and resize streams; v5's close of channel 0 → stdin's FIN.
//!
//! SPDY header blocks are zlib streams; ours use stored (uncompressed) deflate blocks without
//! the preset dictionary, which a zlib reader accepts, so no compressor is needed; the
//! runtime's header blocks (SYN_REPLY) are skipped unread.

use std::collections::HashMap;

use base64::Engine as _;
use bytes::Bytes;
use futures::SinkExt as _;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::{Refusal, StreamBodyOf, channel_body};
use edgesite_api::tunnel::{STATUS_HEADER, UPGRADE_HEADER};

/// The subprotocol.
pub const V5: &str = "v5.channel.k8s.io";
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Whether the client asked for WebSocket v5 (kubectl 1.30+ offers only that).
pub fn wants_v5(req: &Request<Incoming>) -> bool {
    offers(req, V5)
}

/// Which streams the session has.
#[derive(Debug, Clone, Copy)]
pub struct Streams {
    /// stdin.
    pub stdin: bool,
    /// stdout.
    pub stdout: bool,
    /// stderr.
    pub stderr: bool,
    /// A terminal (resize stream).
    pub tty: bool,
}

fn failed(message: String) -> Refusal {
    Refusal {
        code: StatusCode::BAD_GATEWAY,
        reason: "InternalError",
        message,
    }
}

fn websocket_key(req: &Request<Incoming>) -> Result<String, Refusal> {
    req.headers()
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| Refusal::bad_request("a WebSocket upgrade needs Sec-WebSocket-Key"))
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455).
fn accept_for(key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{WS_GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Opens a SPDY/3.1 session speaking `protocol` with the runtime's streaming server at `url`.
async fn spdy_session(url: &str, protocol: &str) -> Result<hyper::upgrade::Upgraded, Refusal> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| failed(format!("unexpected streaming URL {url:?}")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let tcp = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| failed(format!("cannot reach the runtime's streaming server: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| failed(format!("streaming server: {e}")))?;
    tokio::spawn(conn.with_upgrades());
    let spdy_req = Request::builder()
        .method(hyper::Method::POST)
        .uri(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONNECTION, "Upgrade")
        .header(hyper::header::UPGRADE, "SPDY/3.1")
        .header("x-stream-protocol-version", protocol)
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| failed(e.to_string()))?;
    let mut resp = sender
        .send_request(spdy_req)
        .await
        .map_err(|e| failed(format!("streaming server: {e}")))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(failed(format!(
            "the runtime's streaming server refused SPDY ({})",
            resp.status()
        )));
    }
    hyper::upgrade::on(&mut resp)
        .await
        .map_err(|e| failed(format!("streaming server upgrade: {e}")))
}

/// The tunnel's answer to a WebSocket upgrade this module ends: `101` with `protocol`.
fn switched(
    key: &str,
    protocol: &str,
    body: StreamBodyOf,
) -> Result<Response<StreamBodyOf>, Refusal> {
    Response::builder()
        .status(StatusCode::OK)
        .header(STATUS_HEADER, "101")
        .header(UPGRADE_HEADER, "websocket")
        .header("sec-websocket-accept", accept_for(key))
        .header("sec-websocket-protocol", protocol)
        .body(body)
        .map_err(|e| failed(e.to_string()))
}

/// Ends the client's WebSocket v5 here and bridges it to the runtime's SPDY session at `url`.
pub async fn bridge(
    req: Request<Incoming>,
    url: &str,
    streams: Streams,
) -> Result<Response<StreamBodyOf>, Refusal> {
    let key = websocket_key(&req)?;
    let upgraded = spdy_session(url, "v4.channel.k8s.io").await?;
    let (to_client, body) = channel_body();
    let from_client = req.into_body();
    tokio::spawn(run(TokioIo::new(upgraded), from_client, to_client, streams));
    switched(&key, V5, body)
}

/// kubectl's port-forward over WebSocket: each binary message is a slice of a SPDY
/// `portforward.k8s.io` session, which the runtime speaks natively.
pub const SPDY_PORTFORWARD: &str = "SPDY/3.1+portforward.k8s.io";

/// Whether the client offers SPDY-in-WebSocket port-forward.
pub fn wants_spdy_in_websocket(req: &Request<Incoming>) -> bool {
    offers(req, SPDY_PORTFORWARD)
}

fn offers(req: &Request<Incoming>, protocol: &str) -> bool {
    let websocket = req
        .headers()
        .get(UPGRADE_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    websocket
        && req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == protocol)
}

/// Unwraps the client's WebSocket messages into the runtime's SPDY port-forward session, and
/// wraps the runtime's bytes into binary messages.
pub async fn tunnel_port_forward(
    req: Request<Incoming>,
    url: &str,
) -> Result<Response<StreamBodyOf>, Refusal> {
    use http_body_util::BodyExt as _;
    let key = websocket_key(&req)?;
    let upgraded = spdy_session(url, "portforward.k8s.io").await?;
    let (mut rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
    let (mut to_client, body) = channel_body();
    let mut pong = to_client.clone();
    let mut from_client = req.into_body();
    let up = tokio::spawn(async move {
        let mut ws = WsReader::default();
        while let Some(Ok(frame)) = from_client.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            ws.push(&data);
            while let Some(msg) = ws.next_message() {
                match msg {
                    WsMessage::Data(bytes) => {
                        if wr.write_all(&bytes).await.is_err() || wr.flush().await.is_err() {
                            return;
                        }
                    }
                    WsMessage::Ping(p) => {
                        let _ = pong.send(ws_frame(0xA, &p)).await;
                    }
                    WsMessage::Close => return,
                }
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut chunk = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_client.send(ws_frame(0x2, &chunk[..n])).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to_client.send(ws_frame(0x8, &1000u16.to_be_bytes())).await;
        up.abort();
    });
    switched(&key, SPDY_PORTFORWARD, body)
}

// Channels of the k8s channel protocol.
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

async fn run<S>(
    spdy: S,
    mut from_client: Incoming,
    mut to_client: futures::channel::mpsc::Sender<Bytes>,
    streams: Streams,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt as _;
    let (mut rd, wr) = tokio::io::split(spdy);
    // Everything written to the runtime goes through one task, in order.
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(32);
    let writer = tokio::spawn(async move {
        let mut wr = wr;
        while let Some(frame) = out_rx.recv().await {
            if wr.write_all(&frame).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
    });

    // Stream ids per channel, opened in the order client-go opens them.
    let mut ids: HashMap<u8, u32> = HashMap::new();
    let mut next_id = 1u32;
    let mut headers = HeaderWriter::default();
    let mut open = vec![(ERROR, "error")];
    if streams.stdin {
        open.push((STDIN, "stdin"));
    }
    if streams.stdout {
        open.push((STDOUT, "stdout"));
    }
    if streams.stderr && !streams.tty {
        open.push((STDERR, "stderr"));
    }
    if streams.tty {
        open.push((RESIZE, "resize"));
    }
    for (channel, kind) in open {
        let id = next_id;
        next_id += 2;
        ids.insert(channel, id);
        // An error stream and output streams carry nothing from us: half-close them at once.
        let fin = matches!(channel, ERROR | STDOUT | STDERR);
        let frame = headers.syn_stream(id, &[("streamtype", kind)], fin);
        if out_tx.send(frame).await.is_err() {
            return;
        }
    }
    let by_id: HashMap<u32, u8> = ids.iter().map(|(c, i)| (*i, *c)).collect();

    // Client → runtime: WebSocket frames to SPDY data frames.
    let client_out = out_tx.clone();
    let ids_up = ids.clone();
    let mut pong_to_client = to_client.clone();
    let up = tokio::spawn(async move {
        let mut ws = WsReader::default();
        while let Some(Ok(frame)) = from_client.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            ws.push(&data);
            while let Some(msg) = ws.next_message() {
                match msg {
                    WsMessage::Data(payload) => {
                        let Some((&channel, data)) = payload.split_first() else {
                            continue;
                        };
                        if channel == CLOSE {
                            if let Some(&closed) = data.first()
                                && let Some(&id) = ids_up.get(&closed)
                            {
                                let _ = client_out.send(data_frame(id, &[], true)).await;
                            }
                        } else if let Some(&id) = ids_up.get(&channel)
                            && !data.is_empty()
                        {
                            let _ = client_out.send(data_frame(id, data, false)).await;
                        }
                    }
                    WsMessage::Ping(payload) => {
                        let _ = pong_to_client.send(ws_frame(0xA, &payload)).await;
                    }
                    WsMessage::Close => return,
                }
            }
        }
    });

    // Runtime → client: SPDY frames to WebSocket binary messages.
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 32 * 1024];
    'read: loop {
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        while buf.len() >= 8 {
            let len =
                (usize::from(buf[5]) << 16) | (usize::from(buf[6]) << 8) | usize::from(buf[7]);
            if buf.len() < 8 + len {
                break;
            }
            let frame: Vec<u8> = buf.drain(..8 + len).collect();
            if frame[0] & 0x80 != 0 {
                let kind = u16::from_be_bytes([frame[2], frame[3]]);
                // GOAWAY ends the session; a PING is echoed; the rest (SYN_REPLY, SETTINGS,
                // WINDOW_UPDATE, RST_STREAM) needs nothing from us.
                if kind == 7 || (kind == 6 && out_tx.send(frame).await.is_err()) {
                    break 'read;
                }
                continue;
            }
            let id = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) & 0x7fff_ffff;
            let Some(&channel) = by_id.get(&id) else {
                continue;
            };
            if len > 0 {
                let mut payload = Vec::with_capacity(len + 1);
                payload.push(channel);
                payload.extend_from_slice(&frame[8..]);
                if to_client.send(ws_frame(0x2, &payload)).await.is_err() {
                    break 'read;
                }
            }
        }
    }
    let _ = to_client.send(ws_frame(0x8, &1000u16.to_be_bytes())).await;
    up.abort();
    drop(out_tx);
    let _ = writer.await;
}

/// SPDY/3 header blocks: one zlib stream per direction, here of stored deflate blocks.
#[derive(Debug, Default)]
struct HeaderWriter {
    started: bool,
}

impl HeaderWriter {
    fn syn_stream(&mut self, id: u32, headers: &[(&str, &str)], fin: bool) -> Vec<u8> {
        let mut block = Vec::new();
        block.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            block.extend_from_slice(&(k.len() as u32).to_be_bytes());
            block.extend_from_slice(k.as_bytes());
            block.extend_from_slice(&(v.len() as u32).to_be_bytes());
            block.extend_from_slice(v.as_bytes());
        }
        let mut z = Vec::new();
        if !self.started {
            // zlib header: deflate, 32 KiB window, no preset dictionary.
            z.extend_from_slice(&[0x78, 0x01]);
            self.started = true;
        }
        // A non-final stored block.
        let n = block.len() as u16;
        z.push(0x00);
        z.extend_from_slice(&n.to_le_bytes());
        z.extend_from_slice(&(!n).to_le_bytes());
        z.extend_from_slice(&block);
        // A sync flush (an empty stored block), as zlib's Z_SYNC_FLUSH ends every SPDY header
        // block: inflaters hand out a block's data only once the next block begins.
        z.extend_from_slice(&[0x00, 0x00, 0x00, 0xff, 0xff]);

        let mut f = Vec::with_capacity(18 + z.len());
        f.extend_from_slice(&[0x80, 0x03, 0x00, 0x01]);
        let len = (10 + z.len()) as u32;
        f.push(u8::from(fin));
        f.extend_from_slice(&len.to_be_bytes()[1..]);
        f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
        f.extend_from_slice(&0u32.to_be_bytes());
        f.extend_from_slice(&[0x00, 0x00]);
        f.extend_from_slice(&z);
        f
    }
}

fn data_frame(id: u32, data: &[u8], fin: bool) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + data.len());
    f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
    f.push(u8::from(fin));
    f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(data);
    f
}

/// An unmasked server WebSocket frame.
fn ws_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xffff => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    Bytes::from(f)
}

#[derive(Debug, PartialEq)]
enum WsMessage {
    Data(Vec<u8>),
    Ping(Vec<u8>),
    Close,
}

/// Reassembles the client's (masked, possibly fragmented) WebSocket messages.
#[derive(Debug, Default)]
struct WsReader {
    buf: Vec<u8>,
    partial: Vec<u8>,
}

impl WsReader {
    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    fn next_message(&mut self) -> Option<WsMessage> {
        loop {
            let b = &self.buf;
            if b.len() < 2 {
                return None;
            }
            let fin = b[0] & 0x80 != 0;
            let opcode = b[0] & 0x0f;
            let masked = b[1] & 0x80 != 0;
            let (len, mut at) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
                127 if b.len() >= 10 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&b[2..10]);
                    (u64::from_be_bytes(n) as usize, 10)
                }
                126 | 127 => return None,
                n => (usize::from(n), 2),
            };
            let mask = if masked {
                if b.len() < at + 4 {
                    return None;
                }
                let m = [b[at], b[at + 1], b[at + 2], b[at + 3]];
                at += 4;
                Some(m)
            } else {
                None
            };
            if b.len() < at + len {
                return None;
            }
            let mut payload: Vec<u8> = self.buf[at..at + len].to_vec();
            self.buf.drain(..at + len);
            if let Some(m) = mask {
                for (i, byte) in payload.iter_mut().enumerate() {
                    *byte ^= m[i % 4];
                }
            }
            match opcode {
                0x8 => return Some(WsMessage::Close),
                0x9 => return Some(WsMessage::Ping(payload)),
                0xA => continue,
                _ => {
                    self.partial.extend_from_slice(&payload);
                    if fin {
                        return Some(WsMessage::Data(std::mem::take(&mut self.partial)));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_and_fragmented_client_frames_reassemble() {
        let mask = [1u8, 2, 3, 4];
        let masked = |fin: bool, op: u8, data: &[u8]| {
            let mut f = vec![if fin { 0x80 | op } else { op }, 0x80 | data.len() as u8];
            f.extend_from_slice(&mask);
            f.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            f
        };
        let mut r = WsReader::default();
        let mut bytes = masked(false, 0x2, &[0, b'a']);
        bytes.extend(masked(true, 0x0, b"bc"));
        bytes.extend(masked(true, 0x9, b"p"));
        r.push(&bytes[..3]);
        assert_eq!(r.next_message(), None);
        r.push(&bytes[3..]);
        assert_eq!(
            r.next_message(),
            Some(WsMessage::Data(vec![0, b'a', b'b', b'c']))
        );
        assert_eq!(r.next_message(), Some(WsMessage::Ping(b"p".to_vec())));
        assert_eq!(r.next_message(), None);
        assert_eq!(&ws_frame(0x2, &[1, 2])[..], &[0x82, 2, 1, 2]);
        assert_eq!(ws_frame(0x2, &[0; 300])[1], 126);
    }

    #[test]
    fn syn_stream_frames_carry_a_stored_zlib_header_block() {
        let mut h = HeaderWriter::default();
        let f = h.syn_stream(1, &[("streamtype", "error")], true);
        assert_eq!(&f[..5], &[0x80, 0x03, 0x00, 0x01, 0x01]);
        let len = (usize::from(f[5]) << 16) | (usize::from(f[6]) << 8) | usize::from(f[7]);
        assert_eq!(len, f.len() - 8);
        assert_eq!(&f[8..12], &1u32.to_be_bytes());
        assert_eq!(&f[18..20], &[0x78, 0x01]);
        // The next block continues the same zlib stream: no second zlib header.
        let g = h.syn_stream(3, &[("streamtype", "stdin")], false);
        assert_eq!(g[18], 0x00);
        assert_eq!(
            &data_frame(3, b"x", true)[..],
            &[0, 0, 0, 3, 1, 0, 0, 1, b'x']
        );
    }
}
