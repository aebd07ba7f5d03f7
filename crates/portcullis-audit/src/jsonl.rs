//! The JSONL sink: an append-only, hash-chained file with signed checkpoints.
//!
//! Records go to the *live* file (`audit/portcullis.jsonl`). When it grows past
//! `rotate_bytes` it is sealed with a `rotate` checkpoint and renamed to the next *segment*
//! (`audit/portcullis.000001.jsonl`, `…000002…`), and a new live file continues the chain.
//! A restarted gateway continues the chain from the last record on disk; a record cut off by
//! a crash stays in the file, is closed with a newline, and the next record (`trail_start`)
//! says how many bytes it discarded.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use portcullis_core::Error;
use tower_service::Service;
use tracing::info;

use crate::chain::{ChainState, SigningKey, parse_line};
use crate::event::{AuditEvent, TrailStart};
use crate::recorder::{AuditBatch, Flush, InlineSink, Stamped};

/// When the sink asks the kernel to put records on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// After every batch, before the batch's commands are acknowledged.
    Always,
    /// At most this long after a write (and at every checkpoint and at shutdown).
    Interval(Duration),
}

/// Settings of a [`JsonlSink`].
#[derive(Debug, Clone)]
pub struct JsonlOptions {
    /// The live file.
    pub path: PathBuf,
    /// When to sync.
    pub fsync: Fsync,
    /// Rotate the live file when it reaches this size.
    pub rotate_bytes: Option<u64>,
    /// How often to write a checkpoint while records arrive.
    pub checkpoint_interval: Duration,
    /// Where to publish a copy of every checkpoint (a second place, so that a rewrite of the
    /// whole file after the last checkpoint is caught too).
    pub checkpoint_copy: Option<PathBuf>,
    /// The key that signs checkpoints; unsigned checkpoints without one.
    pub key: Option<Arc<SigningKey>>,
}

impl JsonlOptions {
    /// `fsync = interval` (1 s), checkpoints every 10 s, no rotation, no key.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        JsonlOptions {
            path: path.into(),
            fsync: Fsync::Interval(Duration::from_secs(1)),
            rotate_bytes: None,
            checkpoint_interval: Duration::from_secs(10),
            checkpoint_copy: None,
            key: None,
        }
    }
}

/// The files of a trail in chain order: its segments, then the live file (when present).
pub fn trail_files(live: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = segments(live)?.into_iter().map(|(_, p)| p).collect();
    if live.exists() {
        files.push(live.to_path_buf());
    }
    Ok(files)
}

/// `(number, path)` of the rotated segments of `live`, in order.
fn segments(live: &Path) -> std::io::Result<Vec<(u32, PathBuf)>> {
    let dir = match live.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (stem, ext) = stem_ext(live);
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(&format!("{stem}.")) else {
            continue;
        };
        let number = match &ext {
            Some(ext) => rest.strip_suffix(&format!(".{ext}")),
            None => Some(rest),
        };
        if let Some(n) = number
            .filter(|n| n.len() == 6)
            .and_then(|n| n.parse::<u32>().ok())
        {
            found.push((n, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

fn stem_ext(live: &Path) -> (String, Option<String>) {
    let stem = live
        .file_stem()
        .map_or_else(|| "audit".into(), |s| s.to_string_lossy().into_owned());
    let ext = live.extension().map(|e| e.to_string_lossy().into_owned());
    (stem, ext)
}

fn segment_path(live: &Path, number: u32) -> PathBuf {
    let (stem, ext) = stem_ext(live);
    let name = match ext {
        Some(ext) => format!("{stem}.{number:06}.{ext}"),
        None => format!("{stem}.{number:06}"),
    };
    live.with_file_name(name)
}

/// The end of a file: its last complete line and the bytes after it (a line cut off).
#[derive(Debug)]
pub(crate) struct Tail {
    pub(crate) line: Option<Vec<u8>>,
    pub(crate) partial: u64,
}

/// Longest record the tail scan reads back.
const MAX_RECORD: usize = 256 << 20;

pub(crate) fn read_tail(path: &Path) -> std::io::Result<Tail> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut data: Vec<u8> = Vec::new();
    let mut pos = len;
    loop {
        if let Some(last_nl) = data.iter().rposition(|&b| b == b'\n') {
            let partial = (data.len() - last_nl - 1) as u64;
            if let Some(prev_nl) = data[..last_nl].iter().rposition(|&b| b == b'\n') {
                return Ok(Tail {
                    line: Some(data[prev_nl + 1..last_nl].to_vec()),
                    partial,
                });
            }
            if pos == 0 {
                return Ok(Tail {
                    line: Some(data[..last_nl].to_vec()),
                    partial,
                });
            }
        } else if pos == 0 {
            return Ok(Tail {
                line: None,
                partial: data.len() as u64,
            });
        }
        if data.len() > MAX_RECORD {
            return Err(std::io::Error::other(format!(
                "{}: the last record is longer than {MAX_RECORD} bytes",
                path.display()
            )));
        }
        let chunk = pos.min(64 * 1024);
        pos -= chunk;
        file.seek(SeekFrom::Start(pos))?;
        let mut block = vec![0u8; chunk as usize];
        file.read_exact(&mut block)?;
        block.extend_from_slice(&data);
        data = block;
    }
}

struct Live {
    file: File,
    size: u64,
    last_sync: Instant,
    dirty: bool,
}

impl Live {
    /// Append `bytes` (whole records) to the file.
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if !bytes.is_empty() {
            self.file.write_all(bytes)?;
            self.size += bytes.len() as u64;
            self.dirty = true;
        }
        Ok(())
    }
}

/// The JSONL sink, a `Service<AuditBatch>`. Its calls do blocking file I/O: run it on its
/// own thread, as [`crate::Recorder`] does.
pub struct JsonlSink {
    options: JsonlOptions,
    live: Option<Live>,
    chain: ChainState,
    /// The record to write first on (re)opening.
    opening: Option<AuditEvent>,
    last_seal: Instant,
    buf: Vec<u8>,
    /// Sealed for shutdown: nothing more is written (not even inline).
    closed: bool,
    /// Records chained by inline writers but not written yet (see `write_inline`).
    deferred: Vec<u8>,
    deferred_records: u64,
}

/// Most bytes inline writers keep in memory before writing.
const DEFER_BYTES: usize = 64 * 1024;

/// A sink lost `records` records in all — more than the batch it was given, when records it
/// had taken earlier (deferred) went down with it. The recorder counts them in its gap.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct LostRecords {
    /// How many records were lost.
    pub records: u64,
    /// Why.
    #[source]
    pub source: Error,
}

impl std::fmt::Debug for JsonlSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonlSink")
            .field("path", &self.options.path)
            .field("next_seq", &self.chain.next_seq)
            .finish_non_exhaustive()
    }
}

/// The trail on disk cannot be continued.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The last record is damaged, so the chain cannot continue from it.
    #[error(
        "{path}: the last record cannot be continued ({reason}); run `portcullis audit verify {path}` and move the file aside to start a new trail"
    )]
    Damaged {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl JsonlSink {
    /// Open the trail at `options.path`, continuing its chain if it exists. The
    /// `trail_start` record is written with the first batch.
    pub fn open(options: JsonlOptions) -> Result<Self, OpenError> {
        let mut sink = JsonlSink {
            options,
            live: None,
            chain: ChainState::genesis(),
            opening: None,
            last_seal: Instant::now(),
            buf: Vec::with_capacity(64 * 1024),
            closed: false,
            deferred: Vec::new(),
            deferred_records: 0,
        };
        sink.reopen("restart")?;
        Ok(sink)
    }

    fn io_error(&self, path: &Path) -> impl FnOnce(std::io::Error) -> OpenError {
        let path = path.display().to_string();
        move |source| OpenError::Io { path, source }
    }

    fn reopen(&mut self, reason: &str) -> Result<(), OpenError> {
        let path = self.options.path.clone();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(self.io_error(dir))?;
        }
        // The checkpoint copies' file, like the trail's: its directories made, the file
        // opened once, so a place that cannot be written fails the start, not a checkpoint.
        if let Some(copy) = self.options.checkpoint_copy.clone() {
            if let Some(dir) = copy.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(self.io_error(dir))?;
            }
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&copy)
                .map_err(self.io_error(&copy))?;
        }
        let segs = segments(&path).map_err(self.io_error(&path))?;
        let live_len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let source = if live_len > 0 {
            Some(path.clone())
        } else {
            segs.last().map(|(_, p)| p.clone())
        };
        let (chain, previous_sealed, discarded) = match source {
            None => (ChainState::genesis(), None, None),
            Some(source) => {
                let tail = read_tail(&source).map_err(self.io_error(&source))?;
                let discarded = (tail.partial > 0 && source == path).then_some(tail.partial);
                match tail.line {
                    None => (ChainState::genesis(), None, discarded),
                    Some(line) => {
                        let parsed = parse_line(&line).map_err(|e| OpenError::Damaged {
                            path: source.display().to_string(),
                            reason: e.to_string(),
                        })?;
                        (
                            ChainState::after(&parsed),
                            Some(parsed.event.closes_trail()),
                            discarded,
                        )
                    }
                }
            }
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(self.io_error(&path))?;
        if discarded.is_some() {
            // Close the cut-off line so the next record starts on its own.
            file.write_all(b"\n").map_err(self.io_error(&path))?;
        }
        let size = file.metadata().map(|m| m.len()).unwrap_or(live_len);
        let reason = if previous_sealed.is_none() && chain.next_seq == 0 {
            "new"
        } else {
            reason
        };
        self.opening = Some(AuditEvent::TrailStart(TrailStart::opened(
            reason,
            previous_sealed,
            discarded,
        )));
        self.chain = chain;
        self.live = Some(Live {
            file,
            size,
            last_sync: Instant::now(),
            dirty: false,
        });
        Ok(())
    }

    fn write(&mut self, batch: &AuditBatch) -> Result<(), Error> {
        if self.closed {
            return Err("the audit trail was sealed for shutdown".into());
        }
        let deferred = std::mem::take(&mut self.deferred_records);
        let result = self.write_batch(batch);
        if batch.flush == Flush::Shutdown && result.is_ok() {
            self.closed = true;
        }
        let result = match result {
            Err(e) if deferred > 0 => Err(Box::new(LostRecords {
                records: deferred + batch.records.len() as u64,
                source: e,
            }) as Error),
            other => other,
        };
        if result.is_err() {
            // The file may end in a partial record: reopen (and say so) at the next batch.
            self.live = None;
        }
        result
    }

    /// Append records on the caller's thread: no checkpoint, sync or rotation here (the
    /// writer thread's next tick does those), so the caller never waits for the disk beyond
    /// the `write` itself.
    ///
    /// With `defer`, the record (one nobody waits for: an outcome, an event) is only chained
    /// into memory and goes to the file with the next write — the next command's record or
    /// the writer thread's next batch or tick (within about a second) — so a transaction's
    /// two records cost one `write`. A crash loses what was deferred (at most a second's
    /// outcomes and events; the next run records the crash); a failed write reports them
    /// lost ([`LostRecords`]).
    fn write_inline(&mut self, record: &Stamped, defer: bool) -> Result<(), Error> {
        if self.live.is_none() {
            return Err("the audit file is not open".into());
        }
        if let Some(opening) = self.opening.take() {
            self.chain
                .append(&mut self.deferred, SystemTime::now(), &opening);
        }
        self.chain
            .append(&mut self.deferred, record.at, &record.event);
        self.deferred_records += 1;
        if defer && self.deferred.len() < DEFER_BYTES {
            return Ok(());
        }
        let written = match self.live.as_mut() {
            Some(live) => live.append(&self.deferred),
            None => Err(std::io::Error::other("the audit file is not open")),
        };
        self.deferred.clear();
        let records = std::mem::take(&mut self.deferred_records);
        if let Err(e) = written {
            self.live = None;
            return Err(Box::new(LostRecords {
                records,
                source: e.into(),
            }));
        }
        Ok(())
    }

    /// Share the sink between its writer thread and inline writers (`writer = "inline"`):
    /// the service for [`crate::RecorderBuilder::inline_sink`] and the inline handle.
    pub fn shared(self) -> (SharedJsonl, Arc<dyn InlineSink>) {
        let shared = SharedJsonl(Arc::new(Mutex::new(self)));
        let inline: Arc<dyn InlineSink> = Arc::new(shared.clone());
        (shared, inline)
    }

    fn write_batch(&mut self, batch: &AuditBatch) -> Result<(), Error> {
        if self.live.is_none() {
            self.reopen("recover")?;
        }
        self.buf.clear();
        // What inline writers chained before this batch goes first.
        self.buf.append(&mut self.deferred);
        let now = SystemTime::now();
        if let Some(opening) = self.opening.take() {
            self.chain.append(&mut self.buf, now, &opening);
        }
        for record in &batch.records {
            self.chain.append(&mut self.buf, record.at, &record.event);
            let size = self.live.as_ref().map_or(0, |l| l.size) + self.buf.len() as u64;
            if self.options.rotate_bytes.is_some_and(|limit| size >= limit) {
                self.rotate()?;
            }
        }
        // Inline writers grow the file too; they leave rotation to this thread.
        let size = self.live.as_ref().map_or(0, |l| l.size) + self.buf.len() as u64;
        if batch.flush != Flush::Shutdown
            && self.options.rotate_bytes.is_some_and(|limit| size >= limit)
        {
            self.rotate()?;
        }
        let seal = if batch.flush == Flush::Shutdown {
            Some("shutdown")
        } else if self.chain.unsealed > 0
            && self.last_seal.elapsed() >= self.options.checkpoint_interval
        {
            Some("interval")
        } else {
            None
        };
        let at = self.buf.len();
        if let Some(reason) = seal {
            self.chain
                .seal(&mut self.buf, now, reason, self.options.key.as_deref());
            self.last_seal = Instant::now();
        }
        self.append_buf(seal.is_some())?;
        if seal.is_some() {
            self.publish_checkpoint(at)?;
        }
        Ok(())
    }

    /// Publish the checkpoint line that starts at `at` in the buffer. The trail itself is
    /// written by then: a copy that cannot be published is logged (and missing from the
    /// copies, which `audit verify --checkpoints` compares), never taken for lost records.
    fn publish_checkpoint(&self, at: usize) -> Result<(), Error> {
        if let Some(copy) = &self.options.checkpoint_copy
            && let Err(e) = publish(copy, &self.buf[at..])
        {
            tracing::warn!(
                target: "portcullis::audit",
                copy = %copy.display(),
                error = %e,
                "the checkpoint copy could not be published; the trail itself is written"
            );
        }
        Ok(())
    }

    /// Append the buffer to the live file; sync as the policy says (`force` at checkpoints).
    fn append_buf(&mut self, force: bool) -> Result<(), Error> {
        let Some(live) = self.live.as_mut() else {
            return Err("the audit file is not open".into());
        };
        live.append(&self.buf)?;
        let due = match self.options.fsync {
            Fsync::Always => true,
            Fsync::Interval(every) => force || live.last_sync.elapsed() >= every,
        };
        if live.dirty && due {
            live.file.sync_data()?;
            live.dirty = false;
            live.last_sync = Instant::now();
        }
        Ok(())
    }

    /// Seal the live file with what the buffer holds, rename it to the next segment and
    /// open a new live file; the buffer then starts with the new file's `trail_start`.
    fn rotate(&mut self) -> Result<(), Error> {
        let at = self.buf.len();
        self.chain.seal(
            &mut self.buf,
            SystemTime::now(),
            "rotate",
            self.options.key.as_deref(),
        );
        self.last_seal = Instant::now();
        self.append_buf(true)?;
        self.publish_checkpoint(at)?;
        let path = self.options.path.clone();
        let next = segments(&path)?.last().map_or(1, |(n, _)| n + 1);
        let target = segment_path(&path, next);
        self.live = None;
        std::fs::rename(&path, &target)?;
        info!(target: "portcullis::audit", file = %target.display(), "audit file rotated");
        self.reopen("rotate")?;
        self.buf.clear();
        if let Some(opening) = self.opening.take() {
            self.chain
                .append(&mut self.buf, SystemTime::now(), &opening);
        }
        Ok(())
    }
}

/// Append a checkpoint line to the copy file and sync it.
fn publish(copy: &Path, line: &[u8]) -> std::io::Result<()> {
    let mut file = OpenOptions::new().create(true).append(true).open(copy)?;
    file.write_all(line)?;
    file.sync_data()
}

impl Service<AuditBatch> for JsonlSink {
    type Response = ();
    type Error = Error;
    type Future = std::future::Ready<Result<(), Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, batch: AuditBatch) -> Self::Future {
        std::future::ready(self.write(&batch))
    }
}

/// A [`JsonlSink`] shared between its writer thread (this service) and inline writers.
#[derive(Clone)]
pub struct SharedJsonl(Arc<Mutex<JsonlSink>>);

impl std::fmt::Debug for SharedJsonl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SharedJsonl").finish_non_exhaustive()
    }
}

impl Service<AuditBatch> for SharedJsonl {
    type Response = ();
    type Error = Error;
    type Future = std::future::Ready<Result<(), Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, batch: AuditBatch) -> Self::Future {
        let mut sink = self.0.lock().unwrap_or_else(|p| p.into_inner());
        std::future::ready(sink.write(&batch))
    }
}

impl InlineSink for SharedJsonl {
    fn try_write(
        &self,
        record: &Stamped,
        defer: bool,
        nothing_queued: &dyn Fn() -> bool,
    ) -> Option<Result<(), Error>> {
        let mut sink = match self.0.try_lock() {
            Ok(sink) => sink,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        if !nothing_queued() || sink.live.is_none() || sink.closed {
            return None;
        }
        Some(sink.write_inline(record, defer))
    }
}
