//! Captured output of supervised processes: reads the children's pipes, writes the lines
//! to rotating files under the log dir, reads them back (`tail`) and offers them live on a
//! broadcast feed. Must not spawn, wait for or signal processes, and must not touch NATS.
//!
//! # Files
//! One file per watcher and stream: `<log_dir>/<watcher>.<stream>.log` (mode 0600, never
//! opened through a symbolic link), rotated by size to `.log.1` (newest) ...
//! `.log.<backups>` (oldest). Every process (wid) of a watcher writes to the same file.
//! Each line is
//!
//! ```text
//! 2026-11-23T15:04:05.123Z 2 | the text the process wrote
//! ```
//!
//! that is: the UTC time the agent read the line (RFC 3339, milliseconds), one space, the
//! wid, ` | `, the text without its newline. wid 0 marks a note from the agent itself
//! (lines dropped). `grep`, `sort` and `cut -d'|' -f2-` work on it as is.
//!
//! # Never blocking supervision
//! A pump task per pipe reads all the time, so a child never blocks on a full pipe. The
//! lines go to the sink's writer over a queue bounded in bytes ([`QUEUE_BYTES`] per sink);
//! the writer appends them in batches on the blocking pool. When the disk cannot keep up
//! and the queue is full, new lines are dropped (not written), counted in
//! [`LogSinkHandle::dropped_lines`], and a note `[nodeagent] N lines dropped ...` is
//! written in their place as soon as there is room again. The live feed is a
//! `tokio::sync::broadcast` channel: a slow follower lags and misses lines, the pumps
//! never wait for it.
//!
//! # Lines
//! A line longer than [`MAX_LINE_BYTES`] is cut into several lines (at a UTF-8 character
//! boundary), never lost. A last line without a newline is kept when the pipe closes. A
//! trailing `\r` is removed. Invalid UTF-8 is replaced by U+FFFD.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use protocol::logs::{LogLine, LogsData, Stream};
use protocol::subjects::{validate_token, NameError};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{ChildStderr, ChildStdout};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

/// Rotate a log file when it reaches this size, unless the watcher sets `log_max_bytes`.
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// Rotated files kept, unless the watcher sets `log_backups`.
pub const DEFAULT_BACKUPS: u32 = 5;

/// Longer lines are cut into several lines.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// How many bytes of lines may wait for the disk, per sink, before lines are dropped.
pub const QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// How many lines the live feed holds for a follower that is behind.
pub const FEED_CAPACITY: usize = 4096;

/// What a queued line costs beyond its text (for the queue bound).
const ENTRY_OVERHEAD: usize = 64;

/// Lines written per blocking write.
const BATCH_LINES: usize = 1024;

/// Bytes read per step, by the pumps and by `tail` reading backwards.
const CHUNK: usize = 64 * 1024;

/// The output reader's first buffer, before a read fills it.
const FIRST_CHUNK: usize = 512;

/// The most `tail` reads of one stream's files for one request.
pub const TAIL_BUDGET: u64 = 4 * 1024 * 1024;

/// Errors of the log room.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot create the log directory {path}: {source}; check that its parent exists and is writable")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("watcher name '{name}' cannot name a log file: {reason}")]
    BadName { name: String, reason: NameError },
    #[error("cannot read log file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot read the output pipe of watcher '{watcher}' handed over by the agent's previous image: {source}")]
    Handover { watcher: String, source: io::Error },
}

/// The path of a watcher's log file: index 0 is the current file, 1 the newest rotated.
pub fn log_path(dir: &Path, watcher: &str, stream: Stream, index: u32) -> PathBuf {
    if index == 0 {
        dir.join(format!("{watcher}.{stream}.log"))
    } else {
        dir.join(format!("{watcher}.{stream}.log.{index}"))
    }
}

fn check_name(watcher: &str) -> Result<(), LogError> {
    validate_token(watcher).map_err(|reason| LogError::BadName {
        name: watcher.to_owned(),
        reason,
    })
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Writes times as RFC 3339 UTC with milliseconds, reusing the text of the last second.
#[derive(Debug, Default)]
struct Stamp {
    secs: u64,
    /// `2026-11-23T15:04:05` for `secs`, empty before the first use.
    text: String,
}

impl Stamp {
    fn write(&mut self, out: &mut Vec<u8>, time: SystemTime) {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        if self.text.is_empty() || since.as_secs() != self.secs {
            self.secs = since.as_secs();
            let whole = UNIX_EPOCH + std::time::Duration::from_secs(self.secs);
            self.text = humantime::format_rfc3339_seconds(whole).to_string();
            self.text.pop(); // the `Z`
        }
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{}.{:03}Z", self.text, since.subsec_millis());
    }
}

/// Appends one line in the file format, newline included.
fn format_line(out: &mut Vec<u8>, stamp: &mut Stamp, time: SystemTime, wid: u32, text: &str) {
    stamp.write(out, time);
    let _ = write!(out, " {wid} | ");
    out.extend_from_slice(text.as_bytes());
    out.push(b'\n');
}

/// Reads one line of the file format: (unix time, wid, text).
fn parse_line(line: &str) -> Option<(f64, u32, &str)> {
    let (time, rest) = line.split_once(' ')?;
    let (wid, text) = rest.split_once(" | ")?;
    let time = humantime::parse_rfc3339(time).ok()?;
    Some((unix_secs(time), wid.parse().ok()?, text))
}

fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The length of `bytes` without a UTF-8 character cut short at its end.
fn complete_utf8_len(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=len.min(3) {
        let b = bytes[len - back];
        if b & 0xC0 != 0x80 {
            let want = match b {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF7 => 4,
                _ => 1,
            };
            return if want > back && back < len {
                len - back
            } else {
                len
            };
        }
    }
    len
}

/// Reads `reader` to its end and hands each line (without `\n` or `\r\n`) to `emit`;
/// lines longer than `max` are cut. The last line is handed over even without a newline,
/// also when reading fails.
#[cfg(test)]
async fn read_lines<R: AsyncRead + Unpin>(
    mut reader: R,
    max: usize,
    emit: impl FnMut(Vec<u8>),
) -> io::Result<()> {
    read_lines_until(&mut reader, max, None, emit)
        .await
        .map(drop)
}

/// As [`read_lines`], but it also stops, returning `true`, once `pause` says so: then
/// every byte read so far has been handed to `emit` (a line cut short by the pause
/// included) and nothing more is read, so the rest of the pipe can be read by whoever
/// reads it next.
async fn read_lines_until<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
    mut pause: Option<&mut watch::Receiver<bool>>,
    mut emit: impl FnMut(Vec<u8>),
) -> io::Result<bool> {
    // Small until a read fills it, then CHUNK: a quiet process's two streams cost
    // about a kilobyte, a chatty one's the full buffer. Never zeroed (as a
    // `BufReader`'s is): only what a process prints is written to it.
    let mut buf: Vec<u8> = Vec::with_capacity(FIRST_CHUNK);
    let mut start = 0;
    let mut line = Vec::new();
    let mut paused = false;
    let result = loop {
        if start == buf.len() {
            if buf.len() == buf.capacity() && buf.capacity() < CHUNK {
                buf = Vec::with_capacity(CHUNK);
            }
            buf.clear();
            start = 0;
            let filled = match pause.as_deref_mut() {
                // Dropping a pending read loses nothing: `read_buf` is cancel safe.
                Some(p) => tokio::select! {
                    biased;
                    _ = p.wait_for(|p| *p) => None,
                    r = reader.read_buf(&mut buf) => Some(r),
                },
                None => Some(reader.read_buf(&mut buf).await),
            };
            match filled {
                // Every byte read so far was handed over (the pause is only
                // looked at once the buffer is consumed); what the line holds goes below.
                None => {
                    paused = true;
                    break Ok(());
                }
                Some(Ok(0)) => break Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Some(Err(e)) => break Err(e),
            }
        }
        let avail = &buf[start..];
        let room = max.saturating_sub(line.len());
        // Look past what fits: a `\n` or `\r\n` right after a full line ends it.
        let look = avail.len().min(room + 2);
        let newline = avail[..look]
            .iter()
            .position(|&b| b == b'\n')
            .filter(|&i| i <= room || avail[room] == b'\r');
        match newline {
            Some(i) => {
                line.extend_from_slice(&avail[..i]);
                start += i + 1;
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                emit(std::mem::take(&mut line));
            }
            None if room == 0 => {
                // Full, and more of the line follows: cut it.
                let rest = line.split_off(complete_utf8_len(&line));
                emit(std::mem::replace(&mut line, rest));
            }
            None => {
                let take = avail.len().min(room);
                line.extend_from_slice(&avail[..take]);
                start += take;
            }
        }
    };
    if !line.is_empty() {
        emit(line);
    }
    result.map(|()| paused)
}

/// What the writer gets.
#[derive(Debug)]
enum Entry {
    Line {
        time: SystemTime,
        wid: u32,
        text: String,
    },
    /// `count` lines of `wid` were dropped before this point.
    Dropped {
        time: SystemTime,
        wid: u32,
        count: u64,
    },
}

impl Entry {
    fn cost(&self) -> usize {
        match self {
            Entry::Line { text, .. } => text.len() + ENTRY_OVERHEAD,
            Entry::Dropped { .. } => ENTRY_OVERHEAD,
        }
    }

    fn format(&self, out: &mut Vec<u8>, stamp: &mut Stamp) {
        match self {
            Entry::Line { time, wid, text } => format_line(out, stamp, *time, *wid, text),
            Entry::Dropped { time, wid, count } => format_line(
                out,
                stamp,
                *time,
                0,
                &format!(
                    "[nodeagent] {count} lines of wid {wid} dropped: the log writer fell behind"
                ),
            ),
        }
    }
}

/// Counters and limits shared by a sink's handles and its writer.
#[derive(Debug)]
struct Counters {
    /// Bytes queued or being written.
    queued: AtomicUsize,
    budget: usize,
    dropped: AtomicU64,
    written: AtomicU64,
    max_bytes: AtomicU64,
    backups: AtomicU32,
}

#[derive(Debug)]
struct SinkInner {
    node: String,
    watcher: String,
    stream: Stream,
    tx: mpsc::UnboundedSender<Entry>,
    counters: Arc<Counters>,
    feed: broadcast::Sender<Arc<LogLine>>,
    control: Arc<PumpControl>,
}

/// Where the lines of one (watcher, stream) go. Cheap to clone; each pump holds one. The
/// sink's file is closed once the manager forgot it and every handle is dropped.
#[derive(Debug, Clone)]
pub struct LogSinkHandle {
    inner: Arc<SinkInner>,
}

impl LogSinkHandle {
    pub fn watcher(&self) -> &str {
        &self.inner.watcher
    }

    pub fn stream(&self) -> Stream {
        self.inner.stream
    }

    /// Lines not written because the writer fell behind or failed, since the sink opened.
    pub fn dropped_lines(&self) -> u64 {
        self.inner.counters.dropped.load(Ordering::Relaxed)
    }

    /// Lines written to the files since the sink opened.
    pub fn written_lines(&self) -> u64 {
        self.inner.counters.written.load(Ordering::Relaxed)
    }

    /// Starts a pump for a pipe of process `wid`; see [`pump`].
    pub fn pump<R>(&self, reader: R, wid: u32) -> JoinHandle<()>
    where
        R: AsyncRead + AsFd + Unpin + Send + 'static,
    {
        pump(reader, wid, self.clone())
    }

    /// Queues an entry unless the queue is over its budget. Never waits.
    fn enqueue(&self, entry: Entry, force: bool) -> bool {
        let c = &self.inner.counters;
        let cost = entry.cost();
        let before = c.queued.fetch_add(cost, Ordering::AcqRel);
        if (!force && before + cost > c.budget) || self.inner.tx.send(entry).is_err() {
            c.queued.fetch_sub(cost, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Hands one line of `wid` to the live feed and the writer. `pending` counts this
    /// pump's lines dropped since its last successful write.
    fn offer(&self, wid: u32, time: SystemTime, text: String, pending: &mut u64) {
        let inner = &self.inner;
        if inner.feed.receiver_count() > 0 {
            let line = LogLine {
                node: inner.node.clone(),
                watcher: inner.watcher.clone(),
                wid,
                stream: inner.stream,
                time: unix_secs(time),
                line: text.clone(),
            };
            // No receiver left between the check and the send is fine.
            let _ = inner.feed.send(Arc::new(line));
        }
        if *pending > 0
            && self.enqueue(
                Entry::Dropped {
                    time,
                    wid,
                    count: *pending,
                },
                false,
            )
        {
            *pending = 0;
        }
        if *pending > 0 || !self.enqueue(Entry::Line { time, wid, text }, false) {
            *pending += 1;
            inner.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Reads lines from a child's pipe until it closes and hands them to `sink` as process
/// `wid`. Never waits for the disk or for followers: see the module docs. The task ends
/// when every holder of the pipe's write end (the child and any descendant) closed it.
/// While the manager hands the pipes over ([`LogManager::hand_over`]) it reads nothing
/// and keeps the pipe open without close-on-exec.
pub fn pump<R>(reader: R, wid: u32, sink: LogSinkHandle) -> JoinHandle<()>
where
    R: AsyncRead + AsFd + Unpin + Send + 'static,
{
    let control = sink.inner.control.clone();
    let id = control.register(&sink, wid, reader.as_fd().as_raw_fd());
    tokio::spawn(async move {
        let mut reader = reader;
        let mut pause = control.paused.subscribe();
        let mut pending = 0;
        let result = loop {
            let read = read_lines_until(&mut reader, MAX_LINE_BYTES, Some(&mut pause), |bytes| {
                sink.offer(wid, SystemTime::now(), lossy(bytes), &mut pending);
            })
            .await;
            match read {
                Ok(true) => {
                    let handed = crate::process::set_cloexec(&reader, false);
                    if let Err(e) = &handed {
                        tracing::warn!(
                            watcher = sink.watcher(),
                            wid,
                            "cannot hand the pipe over: {e}"
                        );
                    }
                    control.set_paused(id, handed.is_ok());
                    let _ = pause.wait_for(|p| !*p).await;
                    let _ = crate::process::set_cloexec(&reader, true);
                    control.set_paused(id, false);
                }
                other => break other.map(drop),
            }
        };
        control.unregister(id);
        if pending > 0 {
            // The pipe is closed; one small note may go past the budget.
            sink.enqueue(
                Entry::Dropped {
                    time: SystemTime::now(),
                    wid,
                    count: pending,
                },
                true,
            );
        }
        if let Err(e) = result {
            tracing::debug!(
                watcher = sink.watcher(),
                stream = %sink.stream(),
                wid,
                "reading the process's output failed: {e}"
            );
        }
    })
}

/// A pipe handed over across the agent's exec: whose, and its fd (close-on-exec cleared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandedPipe {
    pub watcher: String,
    pub wid: u32,
    pub stream: Stream,
    pub fd: RawFd,
}

#[derive(Debug)]
struct PumpEntry {
    pipe: HandedPipe,
    paused: bool,
}

/// The pumps of a manager, so that they can stop reading while the agent hands their
/// pipes over to its next image, and go on if that fails.
#[derive(Debug)]
struct PumpControl {
    paused: watch::Sender<bool>,
    pumps: std::sync::Mutex<HashMap<u64, PumpEntry>>,
    next: AtomicU64,
    changed: tokio::sync::Notify,
}

impl PumpControl {
    fn new() -> Self {
        PumpControl {
            paused: watch::channel(false).0,
            pumps: Default::default(),
            next: AtomicU64::new(1),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, PumpEntry>> {
        self.pumps.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, sink: &LogSinkHandle, wid: u32, fd: RawFd) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let pipe = HandedPipe {
            watcher: sink.watcher().to_owned(),
            wid,
            stream: sink.stream(),
            fd,
        };
        self.lock().insert(
            id,
            PumpEntry {
                pipe,
                paused: false,
            },
        );
        id
    }

    fn unregister(&self, id: u64) {
        self.lock().remove(&id);
        self.changed.notify_waiters();
    }

    fn set_paused(&self, id: u64, paused: bool) {
        if let Some(e) = self.lock().get_mut(&id) {
            e.paused = paused;
        }
        self.changed.notify_waiters();
    }

    /// The pipes of the pumps that have all stopped, or `None` while some still read.
    fn all_paused(&self) -> Option<Vec<HandedPipe>> {
        let pumps = self.lock();
        pumps
            .values()
            .all(|e| e.paused)
            .then(|| pumps.values().map(|e| e.pipe.clone()).collect())
    }
}

/// Appends to one log file and rotates it.
#[derive(Debug)]
struct FileWriter {
    dir: PathBuf,
    watcher: String,
    stream: Stream,
    file: Option<File>,
    size: u64,
    failing: bool,
    stamp: Stamp,
}

impl FileWriter {
    fn path(&self, index: u32) -> PathBuf {
        log_path(&self.dir, &self.watcher, self.stream, index)
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => {
                use std::os::unix::fs::OpenOptionsExt;
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(self.path(0))?;
                self.size = f.metadata()?.len();
                self.file.insert(f)
            }
        };
        let result = file.write_all(bytes);
        if result.is_err() {
            self.file = None;
        } else {
            self.size += bytes.len() as u64;
        }
        result
    }

    /// Current becomes `.1`, `.1` becomes `.2` ... and only `backups` rotated files stay.
    fn rotate(&mut self, backups: u32) -> io::Result<()> {
        self.file = None;
        self.size = 0;
        let ignore_missing = |r: io::Result<()>| match r {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        };
        if backups == 0 {
            ignore_missing(fs::remove_file(self.path(0)))?;
        } else {
            ignore_missing(fs::remove_file(self.path(backups)))?;
            for i in (0..backups).rev() {
                ignore_missing(fs::rename(self.path(i), self.path(i + 1)))?;
            }
        }
        // Files past the limit, left by a larger `log_backups` earlier.
        let mut i = backups + 1;
        while fs::remove_file(self.path(i)).is_ok() {
            i += 1;
        }
        Ok(())
    }

    /// Writes the batch, rotating before a line that would take the file past
    /// `max_bytes` (a line longer than that gets a file of its own).
    fn write_batch(&mut self, batch: &[Entry], max_bytes: u64, backups: u32) -> io::Result<()> {
        let mut buf = Vec::with_capacity(batch.iter().map(Entry::cost).sum());
        for entry in batch {
            let start = buf.len();
            entry.format(&mut buf, &mut self.stamp);
            let before = self.size + start as u64;
            if before > 0 && before + (buf.len() - start) as u64 > max_bytes {
                self.append(&buf[..start])?;
                buf.drain(..start);
                self.rotate(backups)?;
            }
        }
        self.append(&buf)
    }
}

async fn run_writer(
    mut rx: mpsc::UnboundedReceiver<Entry>,
    mut writer: FileWriter,
    counters: Arc<Counters>,
) {
    let mut batch = Vec::with_capacity(BATCH_LINES);
    while rx.recv_many(&mut batch, BATCH_LINES).await > 0 {
        let cost: usize = batch.iter().map(Entry::cost).sum();
        let lines = batch.len() as u64;
        let max_bytes = counters.max_bytes.load(Ordering::Relaxed);
        let backups = counters.backups.load(Ordering::Relaxed);
        let joined = tokio::task::spawn_blocking(move || {
            let result = writer.write_batch(&batch, max_bytes, backups);
            batch.clear();
            (writer, batch, result)
        })
        .await;
        let result;
        (writer, batch, result) = match joined {
            Ok(parts) => parts,
            Err(e) => {
                tracing::error!("the log writer stopped: {e}");
                return;
            }
        };
        counters.queued.fetch_sub(cost, Ordering::AcqRel);
        match result {
            Ok(()) => {
                counters.written.fetch_add(lines, Ordering::Relaxed);
                if writer.failing {
                    writer.failing = false;
                    tracing::info!(path = %writer.path(0).display(), "writing the log file again");
                }
            }
            Err(e) => {
                counters.dropped.fetch_add(lines, Ordering::Relaxed);
                if !writer.failing {
                    writer.failing = true;
                    tracing::warn!(
                        path = %writer.path(0).display(),
                        "cannot write the log file, dropping lines until it works again: {e}"
                    );
                }
            }
        }
    }
}

/// Subscribes to the lines of every sink of a manager, as they are read.
#[derive(Debug, Clone)]
pub struct LogFeed(broadcast::Sender<Arc<LogLine>>);

impl LogFeed {
    /// A receiver of every line read from now on. A receiver that falls more than
    /// [`FEED_CAPACITY`] lines behind gets `RecvError::Lagged(n)` and goes on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LogLine>> {
        self.0.subscribe()
    }
}

/// Resolves once the writers of closed sinks wrote their last lines.
#[derive(Debug, Default)]
pub struct Closing(Vec<JoinHandle<()>>);

impl Closing {
    /// Waits for the writers. They finish only once every pump of theirs ended (the
    /// processes closed their pipes); put a timeout around this at shutdown.
    pub async fn wait(self) {
        for writer in self.0 {
            let _ = writer.await;
        }
    }
}

#[derive(Debug)]
struct Sink {
    handle: LogSinkHandle,
    writer: JoinHandle<()>,
}

/// A child's output pipe as the agent holds it: the end it spawned the child with, or
/// an fd its previous image handed over across the exec.
trait OutputPipe {
    type Reader: AsyncRead + AsFd + Unpin + Send + 'static;

    /// The pipe made ready for a pump of `watcher`'s.
    fn open(self, watcher: &str) -> Result<Self::Reader, LogError>;
}

impl OutputPipe for ChildStdout {
    type Reader = Self;

    fn open(self, _: &str) -> Result<Self, LogError> {
        Ok(self)
    }
}

impl OutputPipe for ChildStderr {
    type Reader = Self;

    fn open(self, _: &str) -> Result<Self, LogError> {
        Ok(self)
    }
}

impl OutputPipe for OwnedFd {
    type Reader = tokio::net::unix::pipe::Receiver;

    fn open(self, watcher: &str) -> Result<Self::Reader, LogError> {
        tokio::net::unix::pipe::Receiver::from_owned_fd(self).map_err(|source| LogError::Handover {
            watcher: watcher.to_owned(),
            source,
        })
    }
}

/// Owns the sinks of every watcher, one per (watcher, stream), under one log dir.
#[derive(Debug)]
pub struct LogManager {
    dir: PathBuf,
    node: String,
    feed: broadcast::Sender<Arc<LogLine>>,
    queue_bytes: usize,
    sinks: HashMap<(String, Stream), Sink>,
    control: Arc<PumpControl>,
}

impl LogManager {
    /// Creates the log dir if needed. `node` names the node in the live lines.
    pub fn new(dir: impl Into<PathBuf>, node: impl Into<String>) -> Result<Self, LogError> {
        let dir = dir.into();
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| LogError::CreateDir {
                path: dir.clone(),
                source,
            })?;
        Ok(LogManager {
            dir,
            node: node.into(),
            feed: broadcast::channel(FEED_CAPACITY).0,
            queue_bytes: QUEUE_BYTES,
            sinks: HashMap::new(),
            control: Arc::new(PumpControl::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The live feed of every watcher's lines.
    pub fn feed(&self) -> LogFeed {
        LogFeed(self.feed.clone())
    }

    /// The sink of `watcher`'s `stream`, opened on first use (the file itself on the
    /// first line). Asking again returns the same sink with the new limits. Must run
    /// inside the tokio runtime.
    pub fn sink(
        &mut self,
        watcher: &str,
        stream: Stream,
        max_bytes: u64,
        backups: u32,
    ) -> Result<LogSinkHandle, LogError> {
        check_name(watcher)?;
        let key = (watcher.to_owned(), stream);
        if let Some(sink) = self.sinks.get(&key) {
            if !sink.writer.is_finished() {
                let c = &sink.handle.inner.counters;
                c.max_bytes.store(max_bytes, Ordering::Relaxed);
                c.backups.store(backups, Ordering::Relaxed);
                return Ok(sink.handle.clone());
            }
        }
        let counters = Arc::new(Counters {
            queued: AtomicUsize::new(0),
            budget: self.queue_bytes,
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
            max_bytes: AtomicU64::new(max_bytes),
            backups: AtomicU32::new(backups),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = FileWriter {
            dir: self.dir.clone(),
            watcher: watcher.to_owned(),
            stream,
            file: None,
            size: 0,
            failing: false,
            stamp: Stamp::default(),
        };
        let writer = tokio::spawn(run_writer(rx, writer, counters.clone()));
        let handle = LogSinkHandle {
            inner: Arc::new(SinkInner {
                node: self.node.clone(),
                watcher: watcher.to_owned(),
                stream,
                tx,
                counters,
                feed: self.feed.clone(),
                control: self.control.clone(),
            }),
        };
        self.sinks.insert(
            key,
            Sink {
                handle: handle.clone(),
                writer,
            },
        );
        Ok(handle)
    }

    /// Captures the pipes of process `wid` of `watcher` (those that are `Some`): the
    /// call to make right after spawning it. Returns the pumps; they end by themselves
    /// when the pipes close.
    pub fn capture(
        &mut self,
        watcher: &str,
        wid: u32,
        stdout: Option<ChildStdout>,
        stderr: Option<ChildStderr>,
        max_bytes: u64,
        backups: u32,
    ) -> Result<Vec<JoinHandle<()>>, LogError> {
        self.capture_pipes(watcher, wid, stdout, stderr, max_bytes, backups)
    }

    /// Forgets `watcher`'s sinks. Their files close once the pumps still holding them end.
    pub fn remove(&mut self, watcher: &str) -> Closing {
        let keys: Vec<_> = self
            .sinks
            .keys()
            .filter(|(w, _)| w == watcher)
            .cloned()
            .collect();
        Closing(
            keys.iter()
                .filter_map(|k| self.sinks.remove(k))
                .map(|s| s.writer)
                .collect(),
        )
    }

    /// Captures pipes of process `wid` of `watcher` that the agent's previous image
    /// handed over (see [`LogManager::hand_over`]), as [`LogManager::capture`] does.
    pub fn capture_fds(
        &mut self,
        watcher: &str,
        wid: u32,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
        max_bytes: u64,
        backups: u32,
    ) -> Result<Vec<JoinHandle<()>>, LogError> {
        self.capture_pipes(watcher, wid, stdout, stderr, max_bytes, backups)
    }

    /// What [`LogManager::capture`] and [`LogManager::capture_fds`] do: a pump on each
    /// pipe that is there, stdout first, each opened, then given its sink. On an error
    /// the pumps already started go on, and the error is returned.
    fn capture_pipes(
        &mut self,
        watcher: &str,
        wid: u32,
        stdout: Option<impl OutputPipe>,
        stderr: Option<impl OutputPipe>,
        max_bytes: u64,
        backups: u32,
    ) -> Result<Vec<JoinHandle<()>>, LogError> {
        let mut pumps = Vec::with_capacity(2);
        if let Some(pipe) = stdout {
            let reader = pipe.open(watcher)?;
            pumps.push(
                self.sink(watcher, Stream::Stdout, max_bytes, backups)?
                    .pump(reader, wid),
            );
        }
        if let Some(pipe) = stderr {
            let reader = pipe.open(watcher)?;
            pumps.push(
                self.sink(watcher, Stream::Stderr, max_bytes, backups)?
                    .pump(reader, wid),
            );
        }
        Ok(pumps)
    }

    /// Stops every pump reading and returns their pipes (close-on-exec cleared) once
    /// every line read so far is written, for the agent's exec; within `within`, or
    /// `None` when some pump or writer did not stop in time (then they read on).
    /// [`LogManager::resume`] lets them read again.
    pub fn hand_over(
        &self,
        within: std::time::Duration,
    ) -> impl std::future::Future<Output = Option<Vec<HandedPipe>>> + Send + 'static {
        let control = self.control.clone();
        let counters: Vec<Arc<Counters>> = self
            .sinks
            .values()
            .map(|s| s.handle.inner.counters.clone())
            .collect();
        control.paused.send_replace(true);
        async move {
            let until = tokio::time::Instant::now() + within;
            let pipes = loop {
                let changed = control.changed.notified();
                if let Some(pipes) = control.all_paused() {
                    break pipes;
                }
                if tokio::time::timeout_at(until, changed).await.is_err() {
                    control.paused.send_replace(false);
                    return None;
                }
            };
            // The writers write what the pumps queued: a short wait, on the disk.
            while counters
                .iter()
                .any(|c| c.queued.load(Ordering::Acquire) > 0)
            {
                if tokio::time::Instant::now() >= until {
                    control.paused.send_replace(false);
                    return None;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            Some(pipes)
        }
    }

    /// Lets the pumps read again after [`LogManager::hand_over`].
    pub fn resume(&self) {
        self.control.paused.send_replace(false);
    }

    /// Forgets every sink (agent shutdown).
    pub fn close_all(&mut self) -> Closing {
        Closing(self.sinks.drain().map(|(_, s)| s.writer).collect())
    }
}

/// The last `n` lines of a file, in file order, reading backwards `chunk` bytes at a time
/// and at most `budget` bytes in all (taken off it). A line the budget cuts is left out.
fn last_lines(path: &Path, n: usize, chunk: usize, budget: &mut u64) -> io::Result<Vec<Vec<u8>>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut lines = Vec::new();
    let mut pos = len;
    let mut carry: Vec<u8> = Vec::new();
    while pos > 0 && lines.len() < n && *budget > 0 {
        let step = (chunk as u64).min(pos).min(*budget);
        *budget -= step;
        pos -= step;
        let mut buf = vec![0; step as usize];
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut buf)?;
        buf.extend_from_slice(&carry);
        let mut end = buf.len();
        if pos + step == len && buf.last() == Some(&b'\n') {
            end -= 1;
        }
        while lines.len() < n {
            match buf[..end].iter().rposition(|&b| b == b'\n') {
                Some(i) => {
                    lines.push(buf[i + 1..end].to_vec());
                    end = i;
                }
                None => break,
            }
        }
        buf.truncate(end);
        carry = buf;
    }
    if pos == 0 && len > 0 && lines.len() < n {
        lines.push(carry);
    }
    lines.reverse();
    Ok(lines)
}

/// The last `n` lines of one stream, from the current file back through the rotated
/// ones, reading at most `budget` bytes.
fn tail_stream(
    dir: &Path,
    node: &str,
    watcher: &str,
    stream: Stream,
    n: usize,
    budget: u64,
) -> Result<Vec<LogLine>, LogError> {
    let mut files = Vec::new();
    let mut need = n;
    let mut index = 0;
    let mut budget = budget;
    while need > 0 && budget > 0 {
        let path = log_path(dir, watcher, stream, index);
        let raw = match last_lines(&path, need, CHUNK, &mut budget) {
            Ok(raw) => raw,
            // Right after a rotation the current file does not exist yet.
            Err(e) if e.kind() == io::ErrorKind::NotFound && index == 0 => vec![],
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(source) => return Err(LogError::Read { path, source }),
        };
        need -= raw.len();
        files.push(raw);
        index += 1;
    }
    let raw: Vec<String> = files.into_iter().rev().flatten().map(lossy).collect();
    // A line not in the format (written by someone else) takes the time before it.
    let mut last = raw
        .iter()
        .find_map(|l| parse_line(l))
        .map_or(0.0, |(t, _, _)| t);
    Ok(raw
        .iter()
        .map(|l| {
            let (time, wid, text) = parse_line(l).unwrap_or((last, 0, l));
            last = time;
            LogLine {
                node: node.to_owned(),
                watcher: watcher.to_owned(),
                wid,
                stream,
                time,
                line: text.to_owned(),
            }
        })
        .collect())
}

/// Merges two lists ordered by time, keeping each list's own order on ties.
fn merge_by_time(a: Vec<LogLine>, b: Vec<LogLine>) -> Vec<LogLine> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let mut a = a.into_iter().peekable();
    let mut b = b.into_iter().peekable();
    loop {
        let take_b = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => y.time < x.time,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (None, None) => break,
        };
        out.extend(if take_b { b.next() } else { a.next() });
    }
    out
}

/// The last `n` lines `watcher`'s processes wrote, oldest first, from the current and
/// the rotated files: of one stream, or of both merged by time. No files: no lines.
/// Reads backwards, at most [`TAIL_BUDGET`] bytes per stream, so that a huge `n` or
/// huge files cost bounded time and memory. Blocking file I/O: call it in
/// `spawn_blocking`.
pub fn tail(
    dir: &Path,
    node: &str,
    watcher: &str,
    stream: Option<Stream>,
    n: usize,
) -> Result<Vec<LogLine>, LogError> {
    check_name(watcher)?;
    match stream {
        Some(s) => tail_stream(dir, node, watcher, s, n, TAIL_BUDGET),
        None => {
            let out = tail_stream(dir, node, watcher, Stream::Stdout, n, TAIL_BUDGET)?;
            let err = tail_stream(dir, node, watcher, Stream::Stderr, n, TAIL_BUDGET)?;
            let mut all = merge_by_time(out, err);
            all.drain(..all.len().saturating_sub(n));
            Ok(all)
        }
    }
}

/// Counts bytes written to it.
struct Count(usize);

impl Write for Count {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The reply data for `logs`: the newest of `lines` whose JSON takes at most
/// `max_bytes`, with `truncated` set when older ones were left out. Pass the server's
/// max payload less room for the reply's envelope (1 KiB is plenty).
pub fn fit_lines(mut lines: Vec<LogLine>, max_bytes: usize) -> LogsData {
    let mut total = 0;
    let mut keep_from = lines.len();
    for (i, line) in lines.iter().enumerate().rev() {
        let mut count = Count(1); // the comma
        if serde_json::to_writer(&mut count, line).is_err() || total + count.0 > max_bytes {
            break;
        }
        total += count.0;
        keep_from = i;
    }
    lines.drain(..keep_from);
    LogsData {
        truncated: keep_from > 0,
        lines,
    }
}

/// Which watchers' lines someone follows, and until when. Lines of the others are not
/// published: a chatty process costs nothing on NATS while nobody follows it.
#[derive(Debug, Default)]
pub struct FollowLeases {
    until: std::sync::Mutex<HashMap<String, std::time::Instant>>,
}

impl FollowLeases {
    /// Publishes `watcher`'s lines for `for_` from `now` (a later lease is kept).
    pub fn grant(&self, watcher: &str, for_: std::time::Duration, now: std::time::Instant) {
        if for_.is_zero() {
            return;
        }
        let mut until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        until.retain(|_, t| *t > now);
        let t = until.entry(watcher.to_owned()).or_insert(now);
        *t = (*t).max(now + for_);
    }

    /// Whether `watcher`'s lines are followed at `now`.
    pub fn active(&self, watcher: &str, now: std::time::Instant) -> bool {
        let until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        until.get(watcher).is_some_and(|t| *t > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;
    use std::time::Duration;
    use tokio::process::Command;

    /// How long the tests wait for a condition.
    const TEST_WAIT: Duration = Duration::from_secs(10);

    /// Runs `sh -c script` with both pipes captured into the manager's sinks as `wid`,
    /// and waits until the child exited and both pumps ended.
    async fn run(
        manager: &mut LogManager,
        watcher: &str,
        wid: u32,
        script: &str,
        max: u64,
        backups: u32,
    ) {
        let out = manager.sink(watcher, Stream::Stdout, max, backups).unwrap();
        let err = manager.sink(watcher, Stream::Stderr, max, backups).unwrap();
        let mut child = Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let p1 = pump(child.stdout.take().unwrap(), wid, out);
        let p2 = err.pump(child.stderr.take().unwrap(), wid);
        tokio::time::timeout(TEST_WAIT, async {
            child.wait().await.unwrap();
            p1.await.unwrap();
            p2.await.unwrap();
        })
        .await
        .expect("the child and its pumps end");
    }

    async fn close(manager: &mut LogManager, watcher: &str) {
        tokio::time::timeout(TEST_WAIT, manager.remove(watcher).wait())
            .await
            .expect("the writers end");
    }

    fn texts(lines: &[LogLine]) -> Vec<&str> {
        lines.iter().map(|l| l.line.as_str()).collect()
    }

    fn numbered(from: usize, to: usize) -> Vec<String> {
        (from..=to).map(|i| format!("line {i}")).collect()
    }

    #[tokio::test]
    async fn a_child_s_output_rotates_and_tails_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = LogManager::new(dir.path().join("logs"), "n1").unwrap();
        let script = "for i in $(seq 1 2000); do echo line $i; done";
        run(&mut m, "web", 2, script, 4096, 3).await;
        let sink = m.sink("web", Stream::Stdout, 4096, 3).unwrap();
        assert_eq!(sink.dropped_lines(), 0);
        drop(sink);
        close(&mut m, "web").await;

        let logs = dir.path().join("logs");
        for i in 0..=3 {
            let p = log_path(&logs, "web", Stream::Stdout, i);
            let size = fs::metadata(&p).unwrap().len();
            assert!(size > 0 && size <= 4096, "{} is {size} bytes", p.display());
        }
        assert!(!log_path(&logs, "web", Stream::Stdout, 4).exists());
        // stderr got nothing, so it has no file.
        assert!(!log_path(&logs, "web", Stream::Stderr, 0).exists());

        let last = tail(&logs, "n1", "web", Some(Stream::Stdout), 10).unwrap();
        assert_eq!(texts(&last), numbered(1991, 2000));
        for l in &last {
            assert_eq!((l.node.as_str(), l.watcher.as_str()), ("n1", "web"));
            assert_eq!((l.wid, l.stream), (2, Stream::Stdout));
        }
        // Across rotated files, still in order.
        let many = tail(&logs, "n1", "web", Some(Stream::Stdout), 300).unwrap();
        assert_eq!(texts(&many), numbered(1701, 2000));
        // Everything kept: ends at the last line, starts past the first.
        let all = tail(&logs, "n1", "web", None, 100_000).unwrap();
        let first: usize = all[0].line["line ".len()..].parse().unwrap();
        assert!(first > 1 && all.len() < 2000);
        assert_eq!(texts(&all), numbered(first, 2000));
        assert!(all.windows(2).all(|w| w[0].time <= w[1].time));
    }

    #[tokio::test]
    async fn streams_wids_and_unterminated_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = LogManager::new(dir.path(), "n1").unwrap();
        for wid in [1, 2] {
            let script = format!(
                "echo out-a-{wid}; echo err-a-{wid} >&2; echo out-b-{wid}; printf 'tail-{wid}'"
            );
            run(
                &mut m,
                "api",
                wid,
                &script,
                DEFAULT_MAX_BYTES,
                DEFAULT_BACKUPS,
            )
            .await;
            // Lines are stamped to the millisecond, and lines of one stamp keep no order
            // across streams: process 2 starts in a later millisecond.
            let ms = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_millis();
            let last = ms(SystemTime::now());
            while ms(SystemTime::now()) <= last {
                tokio::task::yield_now().await;
            }
        }
        close(&mut m, "api").await;

        let err = tail(dir.path(), "n", "api", Some(Stream::Stderr), 50).unwrap();
        assert_eq!(texts(&err), ["err-a-1", "err-a-2"]);
        assert_eq!(err.iter().map(|l| l.wid).collect::<Vec<_>>(), [1, 2]);
        assert!(err.iter().all(|l| l.stream == Stream::Stderr));

        let out = tail(dir.path(), "n", "api", Some(Stream::Stdout), 50).unwrap();
        assert_eq!(
            texts(&out),
            ["out-a-1", "out-b-1", "tail-1", "out-a-2", "out-b-2", "tail-2"]
        );
        assert_eq!(
            out.iter().map(|l| l.wid).collect::<Vec<_>>(),
            [1, 1, 1, 2, 2, 2]
        );

        let both = tail(dir.path(), "n", "api", None, 50).unwrap();
        assert_eq!(both.len(), 8);
        assert!(both.windows(2).all(|w| w[0].time <= w[1].time));
        // Process 2 ran after process 1 ended.
        let pos = |s: &str| both.iter().position(|l| l.line == s).unwrap();
        assert!(pos("err-a-1") < pos("out-a-2"));
        assert!(pos("tail-1") < pos("err-a-2"));
        assert_eq!(
            texts(&tail(dir.path(), "n", "api", None, 2).unwrap()).len(),
            2
        );

        // The file format, as documented.
        let file = fs::read_to_string(log_path(dir.path(), "api", Stream::Stdout, 0)).unwrap();
        let first = file.lines().next().unwrap();
        let (time, rest) = first.split_once(' ').unwrap();
        assert_eq!(rest, "1 | out-a-1");
        assert_eq!(time.len(), "2026-11-23T15:04:05.123Z".len());
        assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T');
    }

    #[tokio::test]
    async fn a_very_long_line_is_split_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = LogManager::new(dir.path(), "n1").unwrap();
        let script = "head -c 200000 /dev/zero | tr '\\0' x; echo; echo after";
        run(&mut m, "big", 1, script, DEFAULT_MAX_BYTES, 1).await;
        close(&mut m, "big").await;
        let lines = tail(dir.path(), "n1", "big", Some(Stream::Stdout), 100).unwrap();
        let lens: Vec<usize> = lines.iter().map(|l| l.line.len()).collect();
        assert_eq!(lens, [65536, 65536, 65536, 200000 - 3 * 65536, 5]);
        assert!(lines[..4].iter().all(|l| l.line.bytes().all(|b| b == b'x')));
        assert_eq!(lines[4].line, "after");
    }

    #[tokio::test]
    async fn lines_are_cut_at_char_boundaries_and_kept_lossily() {
        let cases: &[(&[u8], usize, &[&str])] = &[
            (b"a\nb\r\nc", 100, &["a", "b", "c"]),
            (b"\n\nx\n", 100, &["", "", "x"]),
            (b"abcdefg\n", 3, &["abc", "def", "g"]),
            (b"abcdef\nx", 3, &["abc", "def", "x"]),
            (b"abc\r\n", 3, &["abc"]),
            ("ééé\n".as_bytes(), 3, &["é", "é", "é"]),
            ("a€b".as_bytes(), 3, &["a", "€", "b"]),
            (b"a\xffb\n\xc3", 100, &["a\u{fffd}b", "\u{fffd}"]),
            (b"", 100, &[]),
        ];
        for (input, max, want) in cases {
            let mut got = vec![];
            read_lines(*input, *max, |l| got.push(lossy(l)))
                .await
                .unwrap();
            assert_eq!(&got, want, "{:?} max {max}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn reads_last_lines_backwards_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let inputs = [
            "",
            "\n",
            "a",
            "a\n",
            "a\nbb",
            "a\nbb\n",
            "\n\n",
            "abc\n\nde\nf\n",
        ];
        for input in inputs {
            fs::write(&path, input).unwrap();
            let mut all: Vec<&str> = input.split('\n').collect();
            if input.is_empty() || input.ends_with('\n') {
                all.pop();
            }
            for n in 0..5 {
                let want: Vec<&str> = all[all.len().saturating_sub(n)..].to_vec();
                for chunk in 1..6 {
                    let got = last_lines(&path, n, chunk, &mut u64::MAX.clone()).unwrap();
                    let got: Vec<String> = got.into_iter().map(lossy).collect();
                    assert_eq!(got, want, "{input:?} n={n} chunk={chunk}");
                }
            }
        }
    }

    #[test]
    fn the_budget_bounds_what_tail_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, "aaaa\nbbbb\ncccc\ndd").unwrap();
        // 7 bytes: "cccc\ndd" holds one whole line and the cut "cccc" start is left out.
        let mut budget = 7;
        let got = last_lines(&path, 10, 3, &mut budget).unwrap();
        assert_eq!(got, [b"dd".to_vec()]);
        assert_eq!(budget, 0);
        // Enough budget: every line, the unterminated last one included.
        let mut budget = 100;
        let got = last_lines(&path, 10, 3, &mut budget).unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(budget, 100 - 17);
        // One huge line without a newline: bounded, and no partial line.
        fs::write(&path, vec![b'x'; 3 * CHUNK]).unwrap();
        let mut budget = CHUNK as u64;
        assert!(last_lines(&path, 10, CHUNK, &mut budget)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn tail_reads_rotated_files_backwards_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let line = |i: usize| format!("2026-01-01T00:00:00.000Z 1 | line {i:07}\n");
        let per = line(0).len();
        // Oldest first: .3 .2 .1 then the current file, 1000 lines each; the current
        // file's last line has no newline.
        let mut i = 0;
        for index in [3, 2, 1, 0] {
            let mut text = String::new();
            for _ in 0..1000 {
                text.push_str(&line(i));
                i += 1;
            }
            if index == 0 {
                text.pop();
            }
            fs::write(log_path(dir.path(), "w", Stream::Stdout, index), text).unwrap();
        }
        let got = tail_stream(dir.path(), "n", "w", Stream::Stdout, 2500, u64::MAX).unwrap();
        assert_eq!(got.len(), 2500);
        assert_eq!(got[0].line, "line 0001500");
        assert_eq!(got[2499].line, "line 0003999");
        // A budget of 1500 lines' bytes: the newest 1500, across two files.
        let budget = (1500 * per) as u64;
        let got = tail_stream(dir.path(), "n", "w", Stream::Stdout, 4000, budget).unwrap();
        assert!((1499..=1500).contains(&got.len()), "{}", got.len());
        assert_eq!(got.last().unwrap().line, "line 0003999");
        let first: usize = got[0].line[5..].parse().unwrap();
        assert_eq!(first + got.len(), 4000);
    }

    #[test]
    fn tail_of_a_huge_file_reads_only_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_path(dir.path(), "w", Stream::Stdout, 0);
        // 64 MiB of 128-byte lines.
        let line = format!("2026-01-01T00:00:00.000Z 1 | {}\n", "x".repeat(98));
        assert_eq!(line.len(), 128);
        let block = line.repeat(8192);
        let mut f = File::create(&path).unwrap();
        for _ in 0..64 {
            f.write_all(block.as_bytes()).unwrap();
        }
        drop(f);
        let t = std::time::Instant::now();
        let got = tail(dir.path(), "n", "w", Some(Stream::Stdout), usize::MAX).unwrap();
        let took = t.elapsed();
        eprintln!(
            "tail of a 64 MiB file, no line limit: {} lines in {took:?}",
            got.len()
        );
        let most = TAIL_BUDGET / 128;
        assert!(
            (most - 1..=most).contains(&(got.len() as u64)),
            "{}",
            got.len()
        );
    }

    #[test]
    fn the_line_format_round_trips() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        let mut buf = vec![];
        let mut stamp = Stamp::default();
        format_line(&mut buf, &mut stamp, t, 12, "a | b");
        format_line(&mut buf, &mut stamp, t, 3, "");
        let later = t + Duration::from_millis(1_001);
        format_line(&mut buf, &mut stamp, later, 3, "x");
        format_line(&mut buf, &mut stamp, UNIX_EPOCH, 3, "x");
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "2026-11-18T11:06:40.123Z 12 | a | b");
        let (time, wid, text) = parse_line(lines[0]).unwrap();
        assert!((time - 1_795_000_000.123).abs() < 1e-6);
        assert_eq!((wid, text), (12, "a | b"));
        assert_eq!(parse_line(lines[1]).map(|(_, w, t)| (w, t)), Some((3, "")));
        assert_eq!(lines[2], "2026-11-18T11:06:41.124Z 3 | x");
        assert_eq!(lines[3], "1970-01-01T00:00:00.000Z 3 | x");
        assert_eq!(parse_line("not a log line"), None);
    }

    /// The test runtime has one thread: the writer cannot run until the test awaits, as
    /// if the disk were stuck.
    #[tokio::test]
    async fn a_full_queue_drops_lines_and_notes_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = LogManager::new(dir.path(), "n1").unwrap();
        // Room for three lines of four bytes.
        m.queue_bytes = 3 * (4 + ENTRY_OVERHEAD);
        let sink = m.sink("w", Stream::Stdout, DEFAULT_MAX_BYTES, 1).unwrap();
        let mut pending = 0;
        let t = SystemTime::now();
        for i in 0..10 {
            sink.offer(7, t, format!("l{i:03}"), &mut pending);
        }
        assert_eq!((sink.dropped_lines(), pending), (7, 7));
        tokio::time::timeout(TEST_WAIT, async {
            while sink.written_lines() < 3 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the writer catches up");
        sink.offer(7, t, "last".into(), &mut pending);
        assert_eq!(pending, 0);
        drop(sink);
        close(&mut m, "w").await;
        let lines = tail(dir.path(), "n1", "w", None, 100).unwrap();
        assert_eq!(
            texts(&lines),
            [
                "l000",
                "l001",
                "l002",
                "[nodeagent] 7 lines of wid 7 dropped: the log writer fell behind",
                "last"
            ]
        );
        assert_eq!(lines[3].wid, 0);
        assert_eq!(lines[4].wid, 7);
    }

    #[tokio::test]
    async fn handed_over_fds_are_captured_and_a_fd_that_is_no_pipe_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = LogManager::new(dir.path(), "n1").unwrap();
        let mut rx = m.feed().subscribe();
        let (read, write) = nix::unistd::pipe().unwrap();
        let file = File::create(dir.path().join("plain")).unwrap();
        let err = m
            .capture_fds("web", 2, None, Some(OwnedFd::from(file)), 1024, 1)
            .unwrap_err();
        assert!(matches!(err, LogError::Handover { .. }), "{err}");
        let pumps = m.capture_fds("web", 2, Some(read), None, 1024, 1).unwrap();
        assert_eq!(pumps.len(), 1);
        File::from(write).write_all(b"handed\n").unwrap();
        let line = tokio::time::timeout(TEST_WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (line.wid, line.stream, line.line.as_str()),
            (2, Stream::Stdout, "handed")
        );
        for pump in pumps {
            tokio::time::timeout(TEST_WAIT, pump)
                .await
                .unwrap()
                .unwrap();
        }
        close(&mut m, "web").await;
    }

    #[tokio::test]
    async fn followers_get_each_line_live() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = LogManager::new(dir.path(), "n1").unwrap();
        let mut rx = m.feed().subscribe();
        let mut child = Command::new("sh")
            .args(["-c", "echo hello; echo oops >&2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pumps = m
            .capture("web", 3, child.stdout.take(), child.stderr.take(), 1024, 1)
            .unwrap();
        assert_eq!(pumps.len(), 2);
        child.wait().await.unwrap();
        let mut got = vec![];
        for _ in 0..2 {
            let line = tokio::time::timeout(TEST_WAIT, rx.recv())
                .await
                .unwrap()
                .unwrap();
            got.push((*line).clone());
        }
        got.sort_by_key(|l| l.stream);
        assert_eq!(
            got.iter()
                .map(|l| (
                    l.node.as_str(),
                    l.watcher.as_str(),
                    l.wid,
                    l.stream,
                    l.line.as_str()
                ))
                .collect::<Vec<_>>(),
            [
                ("n1", "web", 3, Stream::Stdout, "hello"),
                ("n1", "web", 3, Stream::Stderr, "oops"),
            ]
        );
        assert!(got[0].time > 1.7e9);
        close(&mut m, "web").await;
    }

    #[test]
    fn rotation_keeps_only_the_backups_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = FileWriter {
            dir: dir.path().to_owned(),
            watcher: "w".into(),
            stream: Stream::Stderr,
            file: None,
            size: 0,
            failing: false,
            stamp: Stamp::default(),
        };
        let entry = |i: u32| Entry::Line {
            time: UNIX_EPOCH,
            wid: 1,
            text: format!("{i:05}"),
        };
        // Every line is 35 bytes: one line per file.
        let existing = |w: &FileWriter| (0..8).filter(|&i| w.path(i).exists()).collect::<Vec<_>>();
        let cases: &[(u32, &[u32])] = &[(5, &[0, 1, 2, 3, 4, 5]), (2, &[0, 1, 2]), (0, &[0])];
        for (backups, want) in cases {
            let batch: Vec<Entry> = (0..10).map(entry).collect();
            w.write_batch(&batch, 40, *backups).unwrap();
            assert_eq!(existing(&w), *want, "backups {backups}");
            let newest = fs::read_to_string(w.path(0)).unwrap();
            assert!(newest.ends_with("00009\n"), "{newest:?}");
        }
        // A line larger than max_bytes gets a file of its own.
        w.write_batch(&[entry(1), entry(2)], 10, 1).unwrap();
        assert_eq!(fs::read_to_string(w.path(0)).unwrap().lines().count(), 1);
        assert_eq!(fs::read_to_string(w.path(1)).unwrap().lines().count(), 1);
    }

    #[test]
    fn tail_checks_the_name_and_tolerates_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            tail(dir.path(), "n", "../etc", None, 5),
            Err(LogError::BadName { .. })
        ));
        assert!(tail(dir.path(), "n", "nope", None, 5).unwrap().is_empty());
        // Right after a rotation: no current file, lines in `.1`.
        fs::write(
            log_path(dir.path(), "w", Stream::Stdout, 1),
            "2026-01-01T00:00:00.000Z 1 | a\nforeign\n",
        )
        .unwrap();
        let lines = tail(dir.path(), "n", "w", None, 5).unwrap();
        assert_eq!(texts(&lines), ["a", "foreign"]);
        assert_eq!((lines[1].wid, lines[1].time), (0, lines[0].time));
    }

    #[test]
    fn fit_lines_keeps_the_newest_that_fit() {
        let line = |i: u32| LogLine {
            node: "n".into(),
            watcher: "w".into(),
            wid: 1,
            stream: Stream::Stdout,
            time: 1.0,
            line: format!("{i}"),
        };
        let size = serde_json::to_vec(&line(1)).unwrap().len() + 1;
        let data = fit_lines((1..=5).map(line).collect(), 3 * size);
        assert!(data.truncated);
        assert_eq!(texts(&data.lines), ["3", "4", "5"]);
        let data = fit_lines((1..=5).map(line).collect(), 100 * size);
        assert!(!data.truncated);
        assert_eq!(data.lines.len(), 5);
    }

    #[test]
    fn a_lease_runs_out_and_a_renewal_extends_it() {
        use std::time::{Duration, Instant};
        let l = FollowLeases::default();
        let t0 = Instant::now();
        assert!(!l.active("w", t0));
        l.grant("w", Duration::ZERO, t0);
        assert!(!l.active("w", t0));
        l.grant("w", Duration::from_secs(30), t0);
        assert!(l.active("w", t0 + Duration::from_secs(29)));
        assert!(!l.active("w", t0 + Duration::from_secs(30)));
        assert!(!l.active("x", t0));
        // A shorter lease does not cut a longer one short; a later one extends it.
        l.grant("w", Duration::from_secs(1), t0);
        assert!(l.active("w", t0 + Duration::from_secs(29)));
        l.grant("w", Duration::from_secs(30), t0 + Duration::from_secs(20));
        assert!(l.active("w", t0 + Duration::from_secs(49)));
    }

    /// Figures for the docs: `cargo test -p nodeagent --lib measure -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn measure() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = LogManager::new(dir.path(), "n1").unwrap();
        let mut rx = m.feed().subscribe();
        let follower = tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                match rx.recv().await {
                    Ok(_) => n += 1,
                    Err(broadcast::error::RecvError::Lagged(k)) => n += k,
                    Err(broadcast::error::RecvError::Closed) => return n,
                }
            }
        });
        let started = std::time::Instant::now();
        // 1M lines of 100 bytes.
        let script = "yes 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' | head -n 1000000";
        run(&mut m, "w", 1, script, DEFAULT_MAX_BYTES, DEFAULT_BACKUPS).await;
        let sink = m
            .sink("w", Stream::Stdout, DEFAULT_MAX_BYTES, DEFAULT_BACKUPS)
            .unwrap();
        let dropped = sink.dropped_lines();
        drop(sink);
        close(&mut m, "w").await;
        let elapsed = started.elapsed();
        drop(m);
        let followed = follower.await.unwrap();
        println!(
            "pump+write 1M lines of 100 B: {elapsed:?}, dropped {dropped}, follower saw {followed}"
        );
        for n in [50, 10_000, 100_000] {
            let t = std::time::Instant::now();
            let lines = tail(dir.path(), "n1", "w", None, n).unwrap();
            println!(
                "tail {n} of 6 x 10 MiB files: {} lines in {:?}",
                lines.len(),
                t.elapsed()
            );
        }
    }
}
