//! The segmented STREAM body, sealed and opened on every core in constant memory.
//!
//! The calling thread does all the I/O (so readers and writers need not be `Send`, and stdin
//! works): it reads batches of segments into a bounded pool of buffers, hands them to worker
//! threads that seal or open each segment independently, and writes finished batches back in
//! order. Memory stays at `POOL` batches whatever the input size. An input that fits in one
//! batch is processed on the calling thread without starting any thread, so small objects
//! pay nothing for the pipeline.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::mpsc;
use std::sync::Mutex;

use kagi_crypto::{AeadKey, SecretKey32, TAG_LEN};
use zeroize::Zeroize;

use super::format::{nonce, Header, SEGMENT_KEY_INFO};
use super::EnvelopeError;

/// Segments per batch: the unit handed to a worker (1 MiB of data at the default size).
const BATCH: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Seal,
    Open,
}

/// A run of consecutive segments. `buf` holds them at a stride of `segment + 16` bytes;
/// sealing works in place (tag after each segment), opening writes plaintext to `out`.
struct Batch {
    seq: u64,
    first: u64,
    lens: Vec<usize>,
    /// Input ended while reading this batch.
    eof: bool,
    last: bool,
    buf: Vec<u8>,
    out: Vec<u8>,
    out_len: usize,
    err: Option<EnvelopeError>,
    /// How far into `buf` / `out` data was ever written: what must be wiped.
    dirty: (usize, usize),
}

impl Drop for Batch {
    fn drop(&mut self) {
        // Both buffers held plaintext at some point. Only the written prefix is wiped: a 1 KiB
        // object should not pay for wiping a whole 64 KiB segment buffer.
        let (b, o) = self.dirty;
        let (bl, ol) = (self.buf.len(), self.out.len());
        self.buf[..b.min(bl)].zeroize();
        self.out[..o.min(ol)].zeroize();
    }
}

impl Batch {
    fn new() -> Self {
        Self {
            seq: 0,
            first: 0,
            lens: Vec::with_capacity(BATCH),
            eof: false,
            last: false,
            buf: Vec::new(),
            out: Vec::new(),
            out_len: 0,
            err: None,
            dirty: (0, 0),
        }
    }

    /// Nothing was read: the previous batch ended exactly at the end of input.
    fn is_empty(&self) -> bool {
        self.lens == [0]
    }
}

struct Job {
    dir: Dir,
    key: AeadKey,
    aad: [u8; 32],
    prefix: [u8; 7],
    segment: usize,
}

impl Job {
    fn slot(&self) -> usize {
        match self.dir {
            Dir::Seal => self.segment,
            Dir::Open => self.segment + TAG_LEN,
        }
    }

    /// Reads up to `BATCH` slots into `b`, stopping at end of input.
    fn read(&self, input: &mut (impl Read + ?Sized), b: &mut Batch) -> std::io::Result<()> {
        let (slot, stride) = (self.slot(), self.segment + TAG_LEN);
        b.lens.clear();
        b.err = None;
        b.last = false;
        b.eof = false;
        for j in 0..BATCH {
            let off = j * stride;
            if b.buf.len() < off + stride {
                if j == 1 {
                    // A second segment means a full batch is likely: size it once.
                    b.buf.reserve_exact(BATCH * stride - b.buf.len());
                }
                b.buf.resize(off + stride, 0);
            }
            let n = fill(input, &mut b.buf[off..off + slot])?;
            b.dirty.0 = b.dirty.0.max(off + n + TAG_LEN);
            // An empty read after full segments only tells us the last full one was final.
            if n > 0 || j == 0 {
                b.lens.push(n);
            }
            if n < slot {
                b.eof = true;
                break;
            }
        }
        Ok(())
    }

    /// Seals or opens every segment of `b`; on failure records the first error.
    fn process(&self, b: &mut Batch) {
        let stride = self.segment + TAG_LEN;
        let count = b.lens.len();
        b.out_len = 0;
        for j in 0..count {
            let (off, n) = (j * stride, b.lens[j]);
            let i = b.first + j as u64;
            let last = b.last && j + 1 == count;
            let result = match self.dir {
                Dir::Seal => self.seal_one(&mut b.buf[off..off + n + TAG_LEN], i, last),
                Dir::Open => {
                    if b.out.len() < (j + 1) * self.segment {
                        b.out.reserve_exact(count * self.segment - b.out.len());
                        b.out.resize((j + 1) * self.segment, 0);
                    }
                    b.dirty.1 = b.dirty.1.max(j * self.segment + n);
                    self.open_one(
                        &b.buf[off..off + n],
                        &mut b.out[j * self.segment..],
                        i,
                        last,
                    )
                }
            };
            match result {
                Ok(k) => b.out_len += k,
                Err(e) => {
                    b.err = Some(e);
                    return;
                }
            }
        }
    }

    fn seal_one(&self, seg: &mut [u8], i: u64, last: bool) -> Result<usize, EnvelopeError> {
        let n = seg.len() - TAG_LEN;
        let tag = self
            .key
            .seal_detached(&nonce(&self.prefix, i, last)?, &self.aad, &mut seg[..n]);
        seg[n..].copy_from_slice(&tag);
        Ok(seg.len())
    }

    fn open_one(
        &self,
        chunk: &[u8],
        out: &mut [u8],
        i: u64,
        last: bool,
    ) -> Result<usize, EnvelopeError> {
        if chunk.len() < TAG_LEN {
            return Err(EnvelopeError::Truncated);
        }
        let (ct, tag) = chunk.split_at(chunk.len() - TAG_LEN);
        let out = &mut out[..ct.len()];
        let try_open = |last: bool, out: &mut [u8]| -> Result<bool, EnvelopeError> {
            Ok(self
                .key
                .open_detached(&nonce(&self.prefix, i, last)?, &self.aad, ct, tag, out)
                .is_ok())
        };
        if try_open(last, out)? {
            return Ok(ct.len());
        }
        // A non-final segment that authenticates as final means bytes were appended; a final
        // one that only authenticates as non-final means the file was cut.
        let mut scratch = vec![0u8; ct.len()];
        let flipped = try_open(!last, &mut scratch)?;
        scratch.zeroize();
        Err(match (flipped, last) {
            (true, true) => EnvelopeError::Truncated,
            (true, false) => EnvelopeError::Trailing,
            (false, _) => EnvelopeError::Segment(i),
        })
    }

    fn write(&self, b: &Batch, out: &mut (impl Write + ?Sized)) -> std::io::Result<()> {
        match self.dir {
            Dir::Seal => out.write_all(&b.buf[..b.out_len]),
            Dir::Open => out.write_all(&b.out[..b.out_len]),
        }
    }

    /// Runs the whole body; returns plaintext bytes processed.
    fn run(
        &self,
        input: &mut (impl Read + ?Sized),
        out: &mut (impl Write + ?Sized),
    ) -> Result<u64, EnvelopeError> {
        let mut first = Batch::new();
        self.read(input, &mut first)?;
        if first.eof {
            // Small input: no threads.
            first.last = true;
            self.process(&mut first);
            if let Some(e) = first.err.take() {
                return Err(e);
            }
            self.write(&first, out)?;
            out.flush()?;
            return Ok(self.plain(&first));
        }
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 8);
        let (job_tx, job_rx) = mpsc::channel::<Batch>();
        let (done_tx, done_rx) = mpsc::channel::<Batch>();
        let job_rx = Mutex::new(job_rx);
        std::thread::scope(|s| {
            for _ in 0..workers {
                let (rx, tx) = (&job_rx, done_tx.clone());
                s.spawn(move || loop {
                    let next = rx
                        .lock()
                        .map_err(|_| ())
                        .and_then(|r| r.recv().map_err(|_| ()));
                    let Ok(mut b) = next else { return };
                    self.process(&mut b);
                    if tx.send(b).is_err() {
                        return;
                    }
                });
            }
            drop(done_tx);
            self.pipeline(first, 2 * workers + 2, input, out, job_tx, &done_rx)
        })
    }

    fn plain(&self, b: &Batch) -> u64 {
        match self.dir {
            Dir::Seal => b.lens.iter().sum::<usize>() as u64,
            Dir::Open => b.out_len as u64,
        }
    }

    /// The I/O loop: keeps up to `pool` batches in flight and writes them back in order.
    fn pipeline(
        &self,
        first: Batch,
        pool: usize,
        input: &mut (impl Read + ?Sized),
        out: &mut (impl Write + ?Sized),
        jobs: mpsc::Sender<Batch>,
        done: &mpsc::Receiver<Batch>,
    ) -> Result<u64, EnvelopeError> {
        let mut free: Vec<Batch> = Vec::new();
        let mut allocated = 1;
        let mut held = Some(first); // read, but not sent until we know whether more follows
        let (mut seq, mut next_seg, mut next_write) = (0u64, 0u64, 0u64);
        let mut in_flight = 0usize;
        let mut eof = false;
        let mut finished: BTreeMap<u64, Batch> = BTreeMap::new();
        let mut total = 0u64;
        let mut send =
            |mut b: Batch, last: bool, in_flight: &mut usize| -> Result<(), EnvelopeError> {
                b.seq = seq;
                b.first = next_seg;
                b.last = last;
                seq += 1;
                next_seg += b.lens.len() as u64;
                *in_flight += 1;
                jobs.send(b)
                    .map_err(|_| EnvelopeError::Io(std::io::Error::other("worker thread stopped")))
            };
        loop {
            while !eof && (allocated < pool || !free.is_empty()) {
                let mut b = free.pop().unwrap_or_else(|| {
                    allocated += 1;
                    Batch::new()
                });
                self.read(input, &mut b)?;
                let prev = held.take();
                if b.is_empty() {
                    // The previous batch ended exactly at the end of input.
                    if let Some(p) = prev {
                        send(p, true, &mut in_flight)?;
                    }
                    free.push(b);
                    eof = true;
                } else {
                    if let Some(p) = prev {
                        send(p, false, &mut in_flight)?;
                    }
                    if b.eof {
                        send(b, true, &mut in_flight)?;
                        eof = true;
                    } else {
                        held = Some(b);
                    }
                }
            }
            if in_flight == 0 {
                break;
            }
            let b = done
                .recv()
                .map_err(|_| EnvelopeError::Io(std::io::Error::other("worker thread stopped")))?;
            in_flight -= 1;
            finished.insert(b.seq, b);
            while let Some(mut b) = finished.remove(&next_write) {
                if let Some(e) = b.err.take() {
                    return Err(e);
                }
                self.write(&b, out)?;
                total += self.plain(&b);
                next_write += 1;
                free.push(b);
            }
        }
        out.flush()?;
        Ok(total)
    }
}

/// Reads until `buf` is full or EOF; returns the bytes read.
fn fill(r: &mut (impl Read + ?Sized), buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn job(dir: Dir, dek: &[u8], header: &Header, header_bytes: &[u8]) -> Result<Job, EnvelopeError> {
    Ok(Job {
        dir,
        key: AeadKey::new(&kagi_crypto::hkdf_sha256_32(
            SecretKey32::from_slice(dek)
                .map_err(|_| EnvelopeError::BadKey)?
                .expose(),
            &header.salt,
            SEGMENT_KEY_INFO,
        )),
        aad: kagi_crypto::sha256(header_bytes),
        prefix: header.prefix,
        segment: header.segment as usize,
    })
}

/// Encrypts `input` to `out` under `dek` (32 bytes), writing `header` first. Memory use is
/// bounded (a few MiB) whatever the input size. Returns plaintext bytes encrypted.
pub fn seal_stream(
    dek: &[u8],
    header: &Header,
    input: &mut (impl Read + ?Sized),
    out: &mut (impl Write + ?Sized),
) -> Result<u64, EnvelopeError> {
    let hb = header.to_bytes();
    let j = job(Dir::Seal, dek, header, &hb)?;
    out.write_all(&hb)?;
    j.run(input, out)
}

/// Decrypts the body that follows a header already read (`header_bytes` as read). Plaintext
/// is written as segments authenticate: send it somewhere temporary until this returns `Ok`.
pub fn open_stream(
    dek: &[u8],
    header: &Header,
    header_bytes: &[u8],
    input: &mut (impl Read + ?Sized),
    out: &mut (impl Write + ?Sized),
) -> Result<u64, EnvelopeError> {
    job(Dir::Open, dek, header, header_bytes)?.run(input, out)
}
