//! `kubectl logs` on the node: reads a container's CRI log file
//! (`<RFC3339Nano> <stdout|stderr> <F|P> <message>` per line) and writes the messages, with
//! `tailLines`, `timestamps`, `sinceSeconds`/`sinceTime`, `limitBytes`, `previous` (the
//! previous attempt's file) and `follow` (polling the file until the container stops; a file
//! replaced or truncated by rotation is reopened from its start).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt as _;
use hyper::{Response, StatusCode};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use super::{Refusal, StreamBodyOf, StreamContext, channel_body, containers_of};
use crate::cri::v1;

/// How often a followed log is polled for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// How many empty polls pass between checks whether the container still runs.
const STATUS_EVERY: u32 = 10;

/// The `containerLogs` query.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogOptions {
    /// `follow`: keep streaming new lines while the container runs.
    pub follow: bool,
    /// `tailLines`: only the last N lines.
    pub tail_lines: Option<usize>,
    /// `timestamps`: each line prefixed with its RFC 3339 time (nanoseconds, fixed width).
    pub timestamps: bool,
    /// `previous`: the previous attempt's log.
    pub previous: bool,
    /// `sinceSeconds`: only lines newer than this many seconds.
    pub since_seconds: Option<i64>,
    /// `sinceTime`: only lines at or after this time (Unix nanoseconds).
    pub since_time: Option<i128>,
    /// `limitBytes`: stop after this many bytes.
    pub limit_bytes: Option<u64>,
}

impl LogOptions {
    /// Parses the query; `Err` names the bad parameter.
    pub fn from_query(query: &[(String, String)]) -> Result<Self, String> {
        let mut o = Self::default();
        for (k, v) in query {
            let flag = || matches!(v.as_str(), "true" | "1");
            match k.as_str() {
                "follow" => o.follow = flag(),
                "timestamps" => o.timestamps = flag(),
                "previous" => o.previous = flag(),
                "tailLines" => {
                    let n: i64 = v.parse().map_err(|_| format!("invalid tailLines {v:?}"))?;
                    o.tail_lines = Some(n.max(0) as usize);
                }
                "sinceSeconds" => {
                    let n: i64 = v
                        .parse()
                        .map_err(|_| format!("invalid sinceSeconds {v:?}"))?;
                    if n < 1 {
                        return Err("sinceSeconds must be greater than 0".into());
                    }
                    o.since_seconds = Some(n);
                }
                "sinceTime" => {
                    o.since_time =
                        Some(parse_rfc3339(v).ok_or_else(|| format!("invalid sinceTime {v:?}"))?);
                }
                "limitBytes" => {
                    let n: i64 = v.parse().map_err(|_| format!("invalid limitBytes {v:?}"))?;
                    if n < 1 {
                        return Err("limitBytes must be greater than 0".into());
                    }
                    o.limit_bytes = Some(n as u64);
                }
                _ => {}
            }
        }
        Ok(o)
    }
}

/// One parsed CRI log line.
#[derive(Debug, PartialEq, Eq)]
pub struct LogLine<'a> {
    /// The time as written.
    pub timestamp: &'a str,
    /// `stdout` or `stderr`.
    pub stream: &'a str,
    /// A full line (`F`) or a part of a long one (`P`).
    pub full: bool,
    /// The message without the newline.
    pub message: &'a [u8],
}

/// Parses one CRI log line (without its `\n`); `None` for a malformed one.
pub fn parse_line(line: &[u8]) -> Option<LogLine<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let timestamp = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tag = parts.next()?;
    let message = parts.next().unwrap_or_default();
    Some(LogLine {
        timestamp,
        stream,
        full: !tag.starts_with(b"P"),
        message,
    })
}

/// Formats a parsed line as kubelet does: with `timestamps` the time in RFC 3339 with nine
/// fraction digits and a space first; a full line ends with `\n`.
pub fn format_line(line: &LogLine<'_>, timestamps: bool, out: &mut Vec<u8>) {
    if timestamps {
        out.extend_from_slice(fixed_nanos(line.timestamp).as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(line.message);
    if line.full {
        out.push(b'\n');
    }
}

/// `ts` (RFC 3339, any number of fraction digits) with exactly nine.
pub fn fixed_nanos(ts: &str) -> String {
    let zone_at = ts
        .rfind(['Z', 'z', '+', '-'])
        .filter(|i| *i > 10)
        .unwrap_or(ts.len());
    let (clock, zone) = ts.split_at(zone_at);
    let (secs, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    format!("{secs}.{digits}{zone}")
}

/// Unix nanoseconds of an RFC 3339 time.
pub fn parse_rfc3339(ts: &str) -> Option<i128> {
    let b = ts.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut nanos: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = ts.get(start..i)?;
        let mut digits: String = frac.chars().take(9).collect();
        while digits.len() < 9 {
            digits.push('0');
        }
        nanos = digits.parse().ok()?;
    }
    let offset = match ts.get(i..)? {
        "Z" | "z" => 0,
        z if z.len() == 6 && (z.starts_with('+') || z.starts_with('-')) => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            sign * (z.get(1..3)?.parse::<i64>().ok()? * 3600
                + z.get(4..6)?.parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + s - offset;
    Some(secs as i128 * 1_000_000_000 + nanos as i128)
}

/// Serves `/containerLogs/NS/POD/CONTAINER`.
pub(super) async fn serve(
    ctx: Arc<StreamContext>,
    ns: &str,
    pod: &str,
    container: &str,
    opts: LogOptions,
) -> Result<Response<StreamBodyOf>, Refusal> {
    let found = containers_of(ctx.runtime.as_ref(), ns, pod, container).await?;
    let chosen = if opts.previous {
        found.get(1).ok_or_else(|| {
            Refusal::bad_request(format!(
                "previous terminated container {container:?} in pod {pod:?} not found"
            ))
        })?
    } else {
        &found[0]
    };
    let status = ctx
        .runtime
        .container_status(&chosen.id)
        .await
        .map_err(Refusal::runtime)?;
    if status.log_path.is_empty() {
        return Err(Refusal::not_found(format!(
            "container {container:?} in pod {ns}/{pod} has no log file"
        )));
    }
    let path = PathBuf::from(&status.log_path);
    let since = match (opts.since_time, opts.since_seconds) {
        (Some(t), _) => Some(t),
        (None, Some(s)) => {
            let now = ctx
                .clock
                .now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i128);
            Some(now - s as i128 * 1_000_000_000)
        }
        (None, None) => None,
    };
    let follow = opts.follow && !opts.previous;
    let (tx, body) = channel_body();
    let runtime = ctx.runtime.clone();
    let id = chosen.id.clone();
    tokio::spawn(async move {
        let mut w = LogWriter {
            tx,
            opts,
            since,
            written: 0,
        };
        if let Err(err) = stream_file(&path, &mut w, follow, runtime.as_ref(), &id).await {
            tracing::debug!(path = %path.display(), %err, "log stream ended");
        }
    });
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    Ok(resp)
}

struct LogWriter {
    tx: futures::channel::mpsc::Sender<Bytes>,
    opts: LogOptions,
    since: Option<i128>,
    written: u64,
}

/// Why writing stopped: the client left, or `limitBytes` was reached.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("the client went away")]
    Gone,
    #[error("limitBytes reached")]
    Limit,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl LogWriter {
    /// Formats and sends the complete lines of `lines`.
    async fn write(&mut self, lines: &[&[u8]]) -> Result<(), Stop> {
        let mut out = Vec::new();
        for raw in lines {
            let Some(line) = parse_line(raw) else {
                continue;
            };
            if let Some(since) = self.since
                && parse_rfc3339(line.timestamp).is_some_and(|t| t < since)
            {
                continue;
            }
            format_line(&line, self.opts.timestamps, &mut out);
        }
        let mut limited = false;
        if let Some(limit) = self.opts.limit_bytes {
            let room = limit.saturating_sub(self.written) as usize;
            if out.len() >= room {
                out.truncate(room);
                limited = true;
            }
        }
        self.written += out.len() as u64;
        if !out.is_empty() {
            self.tx
                .send(Bytes::from(out))
                .await
                .map_err(|_| Stop::Gone)?;
        }
        if limited {
            return Err(Stop::Limit);
        }
        Ok(())
    }
}

async fn stream_file(
    path: &Path,
    w: &mut LogWriter,
    follow: bool,
    runtime: &dyn crate::cri::StreamingRuntime,
    container_id: &str,
) -> Result<(), Stop> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut identity = file_identity(&file.metadata().await?);
    let mut data = Vec::new();
    file.read_to_end(&mut data).await?;
    let mut offset = data.len() as u64;
    // The complete lines; a line still being written waits for its newline.
    let complete = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut pending = data.split_off(complete);
    let mut lines: VecDeque<&[u8]> = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    if let Some(n) = w.opts.tail_lines {
        while lines.len() > n {
            lines.pop_front();
        }
    }
    w.write(&lines.into_iter().collect::<Vec<_>>()).await?;
    if !follow {
        return Ok(());
    }
    let mut idle = 0u32;
    let mut exited = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        if n > 0 {
            idle = 0;
            offset += n as u64;
            pending.extend_from_slice(&buf[..n]);
            if let Some(i) = pending.iter().rposition(|b| *b == b'\n') {
                let rest = pending.split_off(i + 1);
                let chunk = std::mem::replace(&mut pending, rest);
                let lines: Vec<&[u8]> = chunk
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .collect();
                w.write(&lines).await?;
            }
            continue;
        }
        if exited {
            return Ok(());
        }
        if w.tx.is_closed() {
            return Err(Stop::Gone);
        }
        // Rotation: a new file at the path, or this one truncated.
        if let Ok(meta) = tokio::fs::metadata(path).await {
            let now = file_identity(&meta);
            if now != identity || meta.len() < offset {
                file = tokio::fs::File::open(path).await?;
                identity = now;
                offset = 0;
                pending.clear();
                file.seek(std::io::SeekFrom::Start(0)).await?;
                continue;
            }
        }
        idle += 1;
        if idle.is_multiple_of(STATUS_EVERY) {
            let running = runtime
                .container_status(container_id)
                .await
                .map(|s| s.state == v1::ContainerState::ContainerRunning as i32)
                .unwrap_or(false);
            // One more read after the container stopped catches its last lines.
            exited = !running;
            if exited {
                continue;
            }
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

fn file_identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    (meta.dev(), meta.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_lines_parse_and_format_as_kubelet_writes_them() {
        let line = parse_line(b"2026-12-07T16:00:00.5Z stdout F hello world").unwrap();
        assert_eq!(line.stream, "stdout");
        assert!(line.full);
        assert_eq!(line.message, b"hello world");
        let mut out = Vec::new();
        format_line(&line, true, &mut out);
        assert_eq!(out, b"2026-12-07T16:00:00.500000000Z hello world\n");
        let part = parse_line(b"2026-12-07T16:00:00.123456789+01:00 stderr P abc").unwrap();
        let mut out = Vec::new();
        format_line(&part, false, &mut out);
        assert_eq!(out, b"abc");
        assert_eq!(
            parse_line(b"2026-12-07T16:00:00Z stdout F")
                .unwrap()
                .message,
            b""
        );
        assert!(parse_line(b"garbage").is_none());
    }

    #[test]
    fn rfc3339_times_become_unix_nanoseconds() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01.5Z"), Some(1_500_000_000));
        assert_eq!(
            parse_rfc3339("2000-03-01T01:00:00+01:00"),
            Some(951_868_800 * 1_000_000_000)
        );
        assert_eq!(parse_rfc3339("2026-12-07 junk"), None);
        assert_eq!(
            fixed_nanos("2026-12-07T16:00:00Z"),
            "2026-12-07T16:00:00.000000000Z"
        );
        assert_eq!(
            fixed_nanos("2026-12-07T16:00:00.1234567891-05:00"),
            "2026-12-07T16:00:00.123456789-05:00"
        );
    }

    #[test]
    fn query_parameters_parse_and_bad_ones_are_named() {
        let q = crate::streams::query_pairs(
            "follow=true&tailLines=3&timestamps=1&limitBytes=10&sinceTime=1970-01-01T00:00:02Z",
        );
        let o = LogOptions::from_query(&q).unwrap();
        assert!(o.follow && o.timestamps && !o.previous);
        assert_eq!(o.tail_lines, Some(3));
        assert_eq!(o.limit_bytes, Some(10));
        assert_eq!(o.since_time, Some(2_000_000_000));
        let bad = crate::streams::query_pairs("sinceSeconds=0");
        assert!(
            LogOptions::from_query(&bad)
                .unwrap_err()
                .contains("sinceSeconds")
        );
    }
}
