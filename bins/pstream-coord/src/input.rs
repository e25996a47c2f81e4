//! Reading the input: a reader thread cuts it into chunks of whole lines, an
//! iterator hands the lines to the pool one by one, and [`Pending`] keeps each line
//! until its result is back, so a failed item's error record can quote it.
//!
//! The reader runs on its own thread so that a stop request (Ctrl-C) ends the input
//! promptly even while a read from stdin blocks: the iterator waits on a channel
//! with a timeout and checks the stop flag in between.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::fingerprint::{Fingerprint, Hashing, InputChanged};
use crate::signals::Stop;

/// How much the reader asks for per read.
const READ_SIZE: usize = 64 << 10;

/// Chunks waiting between the reader and the pool.
const CHANNEL_CHUNKS: usize = 4;

/// How often the line iterator looks at the stop flag while it waits for input.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Consecutive whole lines of the input, without their newlines.
#[derive(Debug)]
pub struct Chunk {
    /// The job's index of the first line (0 for the first line read, after any lines
    /// skipped by --resume).
    first_index: u64,
    data: Vec<u8>,
    /// Where each line ends in `data`; the next starts one byte (the newline) later.
    ends: Vec<usize>,
    /// Lines whose results have not been handed out yet.
    remaining: AtomicUsize,
    /// Where `data` starts in the input (skipped lines included), and the hash of
    /// every input byte before it (when the input is fingerprinted).
    offset: u64,
    hash_before: Option<Sha256>,
}

impl Chunk {
    fn len(&self) -> usize {
        self.ends.len()
    }

    fn line(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] + 1 };
        &self.data[start..self.ends[i]]
    }

    fn contains(&self, index: u64) -> bool {
        index >= self.first_index && index < self.first_index + self.len() as u64
    }
}

/// One line, as the pool reads it.
#[derive(Debug)]
pub struct Line {
    chunk: Arc<Chunk>,
    i: usize,
}

impl AsRef<[u8]> for Line {
    fn as_ref(&self) -> &[u8] {
        self.chunk.line(self.i)
    }
}

/// Figures the reader keeps for the progress display and the summary.
#[derive(Debug, Default)]
pub struct ReadStats {
    /// Lines read so far (after any skipped by --resume).
    pub lines: AtomicU64,
    /// Set when the input ended (EOF or a read error).
    pub done: AtomicBool,
}

/// The running reader thread.
#[derive(Debug)]
pub struct Reader {
    /// The chunks it reads, for [`Lines`].
    pub chunks: Receiver<Arc<Chunk>>,
    /// One message once the skipped lines are read: whether they are the ones the
    /// interrupted run read (always `Ok` without a fingerprint to compare). None if
    /// the input ended with a read error first.
    pub verified: Receiver<Result<(), InputChanged>>,
    /// Its end: a read error, if the input ended with one.
    pub handle: JoinHandle<io::Result<()>>,
}

/// Start the reader thread over `source`, skipping its first `skip` lines; with
/// `hashing`, fingerprint what it reads (and compare the skipped lines with the
/// recorded fingerprint, if it has one).
pub fn start_reader(
    mut source: Box<dyn Read + Send>,
    skip: u64,
    separator: u8,
    stats: Arc<ReadStats>,
    hashing: Option<Hashing>,
) -> io::Result<Reader> {
    let (tx, rx) = sync_channel(CHANNEL_CHUNKS);
    let (verified_tx, verified) = sync_channel(1);
    let handle = std::thread::Builder::new()
        .name("pstream-coord-input".into())
        .spawn(move || {
            let result = read_chunks(
                &mut *source,
                skip,
                separator,
                &tx,
                &stats,
                hashing,
                verified_tx,
            );
            stats.done.store(true, Ordering::Release);
            result
        })?;
    Ok(Reader {
        chunks: rx,
        verified,
        handle,
    })
}

fn read_chunks(
    source: &mut dyn Read,
    mut skip: u64,
    separator: u8,
    tx: &SyncSender<Arc<Chunk>>,
    stats: &ReadStats,
    mut hashing: Option<Hashing>,
    verified: SyncSender<Result<(), InputChanged>>,
) -> io::Result<()> {
    let mut data: Vec<u8> = Vec::with_capacity(READ_SIZE);
    // Where the line being read starts, and where the search for its end resumes.
    let mut line_start = 0;
    let mut next_index = 0u64;
    // Lines read, skipped ones included.
    let mut lines_total = 0u64;
    // Until the skipped lines are read and compared.
    let mut verified = Some(verified);
    if skip == 0 {
        if let Some(v) = verified.take() {
            let _ = v.send(Ok(()));
        }
    }
    loop {
        let filled = data.len();
        data.resize(filled + READ_SIZE, 0);
        let n = loop {
            match source.read(&mut data[filled..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    data.truncate(filled);
                    return Err(e);
                }
            }
        };
        data.truncate(filled + n);
        let eof = n == 0;
        let mut ends = Vec::new();
        let mut first_kept = line_start;
        let mut pos = filled;
        let mut changed = Ok(());
        while let Some(offset) = data[pos..].iter().position(|&b| b == separator) {
            let end = pos + offset;
            lines_total += 1;
            if let Some(h) = &mut hashing {
                if h.is_checkpoint(lines_total) {
                    changed = h.checkpoint(lines_total, &data[..end + 1]);
                    if changed.is_err() {
                        break;
                    }
                }
            }
            if skip > 0 {
                skip -= 1;
                first_kept = end + 1;
            } else {
                ends.push(end - first_kept);
            }
            pos = end + 1;
            line_start = pos;
        }
        if changed.is_ok() && eof && line_start < data.len() {
            // A last line without a newline is still a line.
            lines_total += 1;
            if let Some(h) = &mut hashing {
                if h.is_checkpoint(lines_total) {
                    changed = h.checkpoint(lines_total, &data);
                }
            }
            if skip > 0 {
                skip -= 1;
                first_kept = data.len();
            } else {
                ends.push(data.len() - first_kept);
            }
            line_start = data.len();
        }
        if changed.is_err() || (verified.is_some() && (skip == 0 || eof)) {
            // The skipped lines are read (or differ already): are they the ones the
            // interrupted run handled?
            let skipped = lines_total - ends.len() as u64;
            let result = changed.and_then(|()| match &mut hashing {
                Some(h) => h.verify_prefix(skipped, &data[..first_kept]),
                None => Ok(()),
            });
            let ok = result.is_ok();
            if let Some(v) = verified.take() {
                let _ = v.send(result);
            }
            if !ok {
                return Ok(()); // Nothing more is read.
            }
        }
        let mut hash_before = None;
        let mut offset = 0;
        if let Some(h) = &mut hashing {
            h.hasher.update(&data[..first_kept]);
            if !ends.is_empty() {
                hash_before = Some(h.hasher.clone());
            }
            h.hasher.update(&data[first_kept..line_start]);
            offset = h.offset + first_kept as u64;
            h.offset += line_start as u64;
        }
        if !ends.is_empty() {
            let lines = ends.len();
            let chunk = Arc::new(Chunk {
                first_index: next_index,
                data: data[first_kept..line_start].to_vec(),
                remaining: AtomicUsize::new(lines),
                ends,
                offset,
                hash_before,
            });
            next_index += lines as u64;
            stats.lines.fetch_add(lines as u64, Ordering::Relaxed);
            if tx.send(chunk).is_err() {
                return Ok(()); // The job stopped reading.
            }
        }
        // Keep the unfinished line for the next round.
        data.drain(..line_start);
        line_start = 0;
        if eof {
            return Ok(());
        }
    }
}

/// The lines read and not yet answered, by index, for quoting in error records.
/// Holds whole chunks, each until every line in it has its result.
#[derive(Debug, Default)]
pub struct Pending {
    chunks: Mutex<VecDeque<Arc<Chunk>>>,
}

impl Pending {
    fn push(&self, chunk: Arc<Chunk>) {
        self.chunks.lock().unwrap().push_back(chunk);
    }

    fn find(&self, index: u64) -> Option<Arc<Chunk>> {
        let mut chunks = self.chunks.lock().unwrap();
        // Drop the chunks that are fully answered (anywhere: results may come out
        // of order, and one slow item must not pin the chunks after its own).
        chunks.retain(|c| c.remaining.load(Ordering::Relaxed) > 0);
        let at = chunks.partition_point(|c| c.first_index + c.len() as u64 <= index);
        chunks.get(at).filter(|c| c.contains(index)).cloned()
    }
}

/// The consumer's side of [`Pending`]: marks lines answered, and returns the text
/// of the ones that need quoting.
#[derive(Debug)]
pub struct Answered {
    pending: Arc<Pending>,
    /// The chunk of the last answered line: results come in runs.
    last: Option<Arc<Chunk>>,
}

impl Answered {
    pub fn new(pending: Arc<Pending>) -> Answered {
        Answered {
            pending,
            last: None,
        }
    }

    /// Mark line `index` answered; with `quote`, return its text.
    pub fn answer(&mut self, index: u64, quote: bool) -> Option<Vec<u8>> {
        if !self.last.as_ref().is_some_and(|c| c.contains(index)) {
            self.last = self.pending.find(index);
        }
        let chunk = self.last.as_ref()?;
        chunk.remaining.fetch_sub(1, Ordering::Relaxed);
        quote.then(|| chunk.line((index - chunk.first_index) as usize).to_vec())
    }
}

/// The chunks handed to the pool and not yet covered by the journal, in order, so
/// that the fingerprint of any handled prefix can be computed (each chunk carries
/// the hash of the input before it).
#[derive(Debug, Default)]
pub struct Consumed {
    chunks: Mutex<VecDeque<Arc<Chunk>>>,
}

/// The fingerprint of the first lines of the input, for the journal: from the
/// chunks that hold them.
#[derive(Debug)]
pub struct Fingerprinter {
    consumed: Arc<Consumed>,
    /// The lines before this run's first (skipped on resume).
    resumed: Fingerprint,
    checkpoints: Arc<Mutex<Vec<Fingerprint>>>,
}

impl Fingerprinter {
    pub fn new(
        consumed: Arc<Consumed>,
        resumed: Fingerprint,
        checkpoints: Arc<Mutex<Vec<Fingerprint>>>,
    ) -> Fingerprinter {
        Fingerprinter {
            consumed,
            resumed,
            checkpoints,
        }
    }

    /// Forget the chunks wholly before the first `handled` lines of this run.
    pub fn release(&self, handled: u64) {
        let mut chunks = self.consumed.chunks.lock().unwrap();
        while chunks
            .front()
            .is_some_and(|c| c.first_index + (c.len() as u64) < handled)
        {
            chunks.pop_front();
        }
    }

    /// The fingerprint of the input up to the end of this run's first `handled`
    /// lines, and the checkpoints within it. `None` if those lines are not known
    /// (which does not happen: a line is handed to the pool before it is handled).
    pub fn at(&self, handled: u64) -> Option<(Fingerprint, Vec<Fingerprint>)> {
        let here = if handled == 0 {
            self.resumed
        } else {
            self.release(handled);
            let chunks = self.consumed.chunks.lock().unwrap();
            let chunk = chunks
                .front()
                .filter(|c| c.first_index < handled && handled <= c.first_index + c.len() as u64)?;
            let k = (handled - chunk.first_index) as usize;
            let len = (chunk.ends[k - 1] + 1).min(chunk.data.len());
            let mut hasher = chunk.hash_before.clone()?;
            hasher.update(&chunk.data[..len]);
            Fingerprint::of(
                self.resumed.lines + handled,
                chunk.offset + len as u64,
                hasher,
            )
        };
        let checkpoints = self
            .checkpoints
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.lines <= here.lines)
            .copied()
            .collect();
        Some((here, checkpoints))
    }
}

/// The iterator the pool reads: the lines from the reader, until the input ends or
/// a stop is requested.
#[derive(Debug)]
pub struct Lines {
    rx: Receiver<Arc<Chunk>>,
    stop: Arc<Stop>,
    /// Where lines are kept for quoting, if the consumer quotes them.
    pending: Option<Arc<Pending>>,
    /// Where chunks go for the fingerprint, if the input is fingerprinted.
    consumed: Option<Arc<Consumed>>,
    current: Option<Arc<Chunk>>,
    next: usize,
}

impl Lines {
    pub fn new(
        rx: Receiver<Arc<Chunk>>,
        stop: Arc<Stop>,
        pending: Arc<Pending>,
        consumed: Option<Arc<Consumed>>,
    ) -> Lines {
        Lines {
            rx,
            stop,
            pending: Some(pending),
            consumed,
            current: None,
            next: 0,
        }
    }

    /// Lines that are not kept for quoting: for a consumer that copies them.
    pub fn unquoted(
        rx: Receiver<Arc<Chunk>>,
        stop: Arc<Stop>,
        consumed: Option<Arc<Consumed>>,
    ) -> Lines {
        Lines {
            rx,
            stop,
            pending: None,
            consumed,
            current: None,
            next: 0,
        }
    }
}

impl Iterator for Lines {
    type Item = Line;

    fn next(&mut self) -> Option<Line> {
        loop {
            if self.stop.is_requested() {
                return None;
            }
            if let Some(chunk) = &self.current {
                if self.next < chunk.len() {
                    self.next += 1;
                    return Some(Line {
                        chunk: Arc::clone(chunk),
                        i: self.next - 1,
                    });
                }
                self.current = None;
            }
            match self.rx.recv_timeout(STOP_POLL) {
                Ok(chunk) => {
                    // Known to the consumer before any of its lines can be answered.
                    if let Some(pending) = &self.pending {
                        pending.push(Arc::clone(&chunk));
                    }
                    if let Some(consumed) = &self.consumed {
                        consumed
                            .chunks
                            .lock()
                            .unwrap()
                            .push_back(Arc::clone(&chunk));
                    }
                    self.current = Some(chunk);
                    self.next = 0;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// The lines left in the chunk in hand: what can be read without waiting. The
    /// pool sends a partial batch before a read that may wait.
    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self
            .current
            .as_ref()
            .map_or(0, |chunk| chunk.len().saturating_sub(self.next));
        (left, None)
    }
}

/// An input that can be counted for the progress bar's total without taking
/// anything from the reader: a regular file, read with positional reads from the
/// offset the reader starts at. A pipe, a FIFO, a terminal or a socket cannot: what
/// is read from them is gone.
#[derive(Debug)]
pub struct Countable {
    file: File,
    from: u64,
}

impl Countable {
    /// `None` unless `input` is a regular file.
    pub fn of(input: &File) -> Option<Countable> {
        if !input.metadata().ok()?.file_type().is_file() {
            return None;
        }
        // A duplicate shares the reader's file offset; `read_at` (pread) neither
        // uses nor moves it. Where the reader starts: stdin may be a file a shell
        // has already read from.
        let mut file = input.try_clone().ok()?;
        let from = file.stream_position().ok()?;
        Some(Countable { file, from })
    }

    /// Count the lines ending with `separator` (a last line without one counts).
    /// `None` if it cannot be read.
    pub fn count_lines(&self, separator: u8) -> Option<u64> {
        let mut buf = vec![0u8; 256 << 10];
        let mut lines = 0u64;
        let mut last = separator;
        let mut at = self.from;
        loop {
            let n = match self.file.read_at(&mut buf, at) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return None,
            };
            at += n as u64;
            lines += buf[..n].iter().filter(|&&b| b == separator).count() as u64;
            last = buf[n - 1];
        }
        Some(lines + u64::from(last != separator))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Expected;

    fn read_all(input: &[u8], skip: u64) -> Vec<(u64, Vec<u8>)> {
        let stats = Arc::new(ReadStats::default());
        let Reader {
            chunks: rx, handle, ..
        } = start_reader(
            Box::new(io::Cursor::new(input.to_vec())),
            skip,
            b'\n',
            stats,
            None,
        )
        .expect("start the reader");
        let stop = Arc::new(Stop::default());
        let pending = Arc::new(Pending::default());
        let mut answered = Answered::new(Arc::clone(&pending));
        let lines: Vec<Line> = Lines::new(rx, stop, pending, None).collect();
        handle.join().unwrap().unwrap();
        let mut out = Vec::new();
        for (index, line) in lines.iter().enumerate() {
            let quoted = answered.answer(index as u64, true).unwrap();
            assert_eq!(quoted, line.as_ref());
            out.push((line.chunk.first_index + line.i as u64, quoted));
        }
        out
    }

    fn texts(v: &[(u64, Vec<u8>)]) -> Vec<String> {
        v.iter()
            .map(|(_, l)| String::from_utf8_lossy(l).into_owned())
            .collect()
    }

    #[test]
    fn lines_split_as_the_shell_does() {
        assert_eq!(
            texts(&read_all(b"a\nbb\n\nccc\n", 0)),
            ["a", "bb", "", "ccc"]
        );
        assert_eq!(texts(&read_all(b"a\nlast", 0)), ["a", "last"]);
        assert!(read_all(b"", 0).is_empty());
        assert_eq!(texts(&read_all(b"\n", 0)), [""]);
    }

    #[test]
    fn indices_are_consecutive_across_chunks_and_long_lines() {
        let mut input = Vec::new();
        for i in 0..50_000 {
            input.extend_from_slice(format!("{i}\n").as_bytes());
        }
        input.extend(std::iter::repeat_n(b'x', 3 * READ_SIZE));
        input.push(b'\n');
        let lines = read_all(&input, 0);
        assert_eq!(lines.len(), 50_001);
        for (i, (index, text)) in lines.iter().enumerate().take(50_000) {
            assert_eq!(*index, i as u64);
            assert_eq!(text, i.to_string().as_bytes());
        }
        assert_eq!(lines[50_000].1.len(), 3 * READ_SIZE);
    }

    #[test]
    fn resume_skips_lines() {
        let lines = read_all(b"a\nb\nc\nd", 2);
        assert_eq!(texts(&lines), ["c", "d"]);
        assert_eq!(lines[0].0, 0);
        assert!(read_all(b"a\nb\n", 5).is_empty());
    }

    #[test]
    fn counting_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let count = |text: &[u8]| {
            std::fs::write(&path, text).unwrap();
            Countable::of(&File::open(&path).unwrap())
                .unwrap()
                .count_lines(b'\n')
        };
        assert_eq!(count(b"a\nb\nc"), Some(3));
        assert_eq!(count(b"a\nb\n"), Some(2));
        assert_eq!(count(b""), Some(0));
    }

    #[test]
    fn counting_neither_moves_the_reader_nor_reads_a_pipe() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"a\nb\nc\nd\n").unwrap();
        let mut file = File::open(&path).unwrap();
        let mut first = [0u8; 2];
        file.read_exact(&mut first).unwrap();
        // Counted from where the reader is, and the reader stays there.
        assert_eq!(Countable::of(&file).unwrap().count_lines(b'\n'), Some(3));
        let mut rest = String::new();
        file.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "b\nc\nd\n");

        let (read, _write) = nix::unistd::pipe().unwrap();
        assert!(Countable::of(&File::from(read)).is_none());
    }

    /// A reader that gives a few bytes at a time, as a slow pipe does: many chunks.
    struct Trickle(io::Cursor<Vec<u8>>);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(7);
            self.0.read(&mut buf[..n])
        }
    }

    /// Read `input` fingerprinted, skipping `skip` lines against `expected`: what
    /// the verification said, the lines read, and the fingerprinter.
    fn read_fingerprinted(
        input: &[u8],
        skip: u64,
        expected: Option<Expected>,
    ) -> (Result<(), InputChanged>, Vec<Vec<u8>>, Fingerprinter) {
        let checkpoints = Arc::new(Mutex::new(Vec::new()));
        let resumed = expected
            .as_ref()
            .map_or_else(Fingerprint::empty, |e| e.handled);
        let hashing = Hashing::new(Arc::clone(&checkpoints), expected);
        let reader = start_reader(
            Box::new(Trickle(io::Cursor::new(input.to_vec()))),
            skip,
            b'\n',
            Arc::new(ReadStats::default()),
            Some(hashing),
        )
        .unwrap();
        let verified = reader.verified.recv().unwrap();
        let consumed = Arc::new(Consumed::default());
        let lines: Vec<Vec<u8>> = Lines::new(
            reader.chunks,
            Arc::new(Stop::default()),
            Arc::new(Pending::default()),
            Some(Arc::clone(&consumed)),
        )
        .map(|l| l.as_ref().to_vec())
        .collect();
        reader.handle.join().unwrap().unwrap();
        (
            verified,
            lines,
            Fingerprinter::new(consumed, resumed, checkpoints),
        )
    }

    fn numbers(from: u64, to: u64) -> Vec<u8> {
        (from..=to)
            .map(|i| format!("{i}\n"))
            .collect::<String>()
            .into_bytes()
    }

    /// The fingerprint of the first `lines` lines of `input`, computed directly.
    fn prefix_fingerprint(input: &[u8], lines: u64) -> Fingerprint {
        let mut len = 0;
        for _ in 0..lines {
            len += input[len..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(input.len() - len, |p| p + 1);
        }
        let mut hasher = Sha256::new();
        hasher.update(&input[..len]);
        Fingerprint::of(lines, len as u64, hasher)
    }

    #[test]
    fn the_fingerprint_of_every_prefix_is_the_hash_of_its_lines() {
        let mut input = numbers(1, 300);
        input.extend_from_slice(b"last");
        let (verified, lines, fingerprinter) = read_fingerprinted(&input, 0, None);
        assert_eq!(verified, Ok(()));
        assert_eq!(lines.len(), 301);
        for handled in 0..=301 {
            let (here, checkpoints) = fingerprinter.at(handled).unwrap();
            assert_eq!(here, prefix_fingerprint(&input, handled), "{handled} lines");
            let want: Vec<Fingerprint> = [1, 2, 4, 8, 16, 32, 64, 128, 256]
                .into_iter()
                .filter(|&c| c <= handled)
                .map(|c| prefix_fingerprint(&input, c))
                .collect();
            assert_eq!(checkpoints, want);
        }
    }

    #[test]
    fn resume_compares_the_skipped_lines() {
        let original = numbers(1, 1000);
        let (_, _, fingerprinter) = read_fingerprinted(&original, 0, None);
        let (handled, checkpoints) = fingerprinter.at(700).unwrap();
        let expected = Expected {
            handled,
            checkpoints,
        };
        // The same input: the rest is read.
        let (verified, lines, _) = read_fingerprinted(&original, 700, Some(expected.clone()));
        assert_eq!(verified, Ok(()));
        assert_eq!(lines.first().map(Vec::as_slice), Some(&b"701"[..]));
        assert_eq!(lines.len(), 300);
        // Lines put in front: line 1 differs, and nothing is read.
        let mut prepended = numbers(5000, 5009);
        prepended.extend_from_slice(&original);
        let (verified, lines, _) = read_fingerprinted(&prepended, 700, Some(expected.clone()));
        let message = verified.unwrap_err().0;
        assert!(message.contains("line 1 differs"), "{message}");
        assert!(lines.is_empty());
        // Line 300 changed: between two checkpoints.
        let changed = [numbers(1, 299), b"x\n".to_vec(), numbers(301, 1000)].concat();
        let message = read_fingerprinted(&changed, 700, Some(expected.clone()))
            .0
            .unwrap_err()
            .0;
        assert!(message.contains("between lines 257 and 512"), "{message}");
        // Line 600 changed: after the last checkpoint.
        let changed = [numbers(1, 599), b"x\n".to_vec(), numbers(601, 1000)].concat();
        let message = read_fingerprinted(&changed, 700, Some(expected.clone()))
            .0
            .unwrap_err()
            .0;
        assert!(message.contains("between lines 513 and 700"), "{message}");
        // Cut short.
        let message = read_fingerprinted(&numbers(1, 100), 700, Some(expected))
            .0
            .unwrap_err()
            .0;
        assert!(
            message.contains("100 lines, fewer than the 700"),
            "{message}"
        );
    }
}
