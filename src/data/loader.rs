//! The loader: batches of preprocessed clips, produced by `num_workers` threads ahead of
//! the trainer, in an order fixed by the seed and the epoch.
//!
//! Workers take batches in order from a shared queue and send them through a bounded
//! channel (`prefetch_factor` batches per worker): a slow trainer stops the workers
//! rather than growing a queue. With `persistent_workers` one pool of threads serves
//! every epoch. The consumer re-orders by batch index, so timing never changes what
//! the trainer sees. A clip that fails to load is skipped with one warning, counted, and
//! listed; past `max_bad_fraction` of the clips tried, the epoch stops with an error.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use super::clip::ClipFrames;
use super::sources::ClipSource;
use crate::data::preprocess::{FrameOp, IMAGENET_MEAN, IMAGENET_STD, Rect, preprocess};
use crate::rng::mix;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoaderSettings {
    pub batch_size: usize,
    pub num_workers: usize,
    pub prefetch_factor: usize,
    /// Side of the network's input crop.
    pub input_size: usize,
    pub seed: u64,
    /// Shuffle and augment (random crop offset, flip, brightness/contrast jitter).
    pub train: bool,
    pub max_bad_fraction: f64,
}

/// A batch: `clips × frames` frames of `side × side × 3` f32 (NHWC), one target per clip.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub index: usize,
    pub clips: Vec<usize>,
    pub frames_per_clip: usize,
    pub side: usize,
    pub pixels: Vec<f32>,
    pub targets: Vec<f32>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("{bad} of {tried} clips failed to load (more than {:.0}% allowed); first failures:\n  {}", limit * 100.0, first.join("\n  "))]
    TooManyBad { bad: usize, tried: usize, limit: f64, first: Vec<String> },
}

/// The clip order of `epoch`: a seeded Fisher–Yates shuffle, or 0..n when not shuffling.
pub fn epoch_order(n: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut state = mix(seed, epoch + 1);
        for i in (1..n).rev() {
            state = mix(state, i as u64);
            order.swap(i, (state % (i as u64 + 1)) as usize);
        }
    }
    order
}

/// The crop, flip and jitter of one clip (the same for all its frames, so that motion
/// between frames stays what the video shows).
fn clip_op(s: &LoaderSettings, frame_side: usize, epoch: u64, clip: usize) -> FrameOp {
    let crop = s.input_size.min(frame_side);
    if !s.train {
        let off = (frame_side - crop) / 2;
        return FrameOp {
            crop: Rect { y0: off, x0: off, h: crop, w: crop },
            flip: false,
            brightness: 0.0,
            contrast: 1.0,
        };
    }
    let r = |k: u64| (mix(mix(s.seed, epoch), clip as u64 * 8 + k) >> 11) as f64 / (1u64 << 53) as f64;
    let room = frame_side - crop;
    let (y0, x0) = ((r(0) * (room + 1) as f64) as usize, (r(1) * (room + 1) as f64) as usize);
    FrameOp {
        crop: Rect { y0: y0.min(room), x0: x0.min(room), h: crop, w: crop },
        flip: r(2) < 0.5,
        brightness: (0.2 * (r(3) - 0.5)) as f32,
        contrast: (0.8 + 0.4 * r(4)) as f32,
    }
}

/// The network input of one clip: its frames cropped, flipped and jittered as
/// `clip_op` says for (epoch, clip), normalised, NHWC f32.
pub fn clip_pixels(s: &LoaderSettings, f: &ClipFrames, epoch: u64, clip: usize) -> Vec<f32> {
    let op = clip_op(s, f.side, epoch, clip);
    preprocess(&f.data, f.side, f.side, &vec![op; f.frames], s.input_size, IMAGENET_MEAN, IMAGENET_STD)
}

/// One epoch's batches, produced in the background.
pub struct EpochLoader {
    /// Dropped first on drop, so that workers blocked on a full channel wake and stop.
    rx: Option<Receiver<(usize, Produced)>>,
    pending: BTreeMap<usize, Produced>,
    next: usize,
    batches: usize,
    /// Released after `rx` on drop; the last user of a pool joins its threads.
    workers: Option<Arc<Workers>>,
    stop: Arc<AtomicBool>,
    bad: Vec<String>,
    tried: usize,
    limit: f64,
}

/// Loader threads taking jobs from one queue. An `EpochLoader` makes its own for one
/// epoch, or runs on a pool kept across epochs (`persistent_workers`), so that the
/// threads (and what they hold: decoder state, warmed caches) outlive the epoch.
pub struct Workers {
    queue: Option<Sender<Job>>,
    handles: Vec<JoinHandle<()>>,
}

type Job = Box<dyn FnOnce() + Send>;

impl Workers {
    pub fn new(threads: usize) -> Arc<Self> {
        let (queue, jobs) = channel::<Job>();
        let jobs = Arc::new(Mutex::new(jobs));
        let handles = (0..threads.max(1))
            .map(|w| {
                let jobs = jobs.clone();
                std::thread::Builder::new()
                    .name(format!("dfengine-loader-{w}"))
                    .spawn(move || {
                        loop {
                            // The lock is held for the receive only, not while the job runs.
                            let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
                            match job {
                                Ok(job) => job(),
                                Err(_) => return,
                            }
                        }
                    })
                    .expect("spawning a loader thread")
            })
            .collect();
        Arc::new(Workers { queue: Some(queue), handles })
    }

    pub fn threads(&self) -> usize {
        self.handles.len()
    }

    fn submit(&self, job: Job) {
        // The queue lives as long as `self`; the threads only stop when it is dropped.
        self.queue
            .as_ref()
            .expect("the queue outlives the pool's users")
            .send(job)
            .expect("loader threads alive");
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.queue.take();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl EpochLoader {
    pub fn start(source: Arc<dyn ClipSource>, s: LoaderSettings, epoch: u64) -> Self {
        Self::start_at(source, s, epoch, 0)
    }

    /// The epoch's batches from `first` on (a run resumed inside an epoch continues with
    /// the very batch it would have seen next), on `num_workers` threads of its own.
    pub fn start_at(source: Arc<dyn ClipSource>, s: LoaderSettings, epoch: u64, first: usize) -> Self {
        let batches = source.len().div_ceil(s.batch_size.max(1));
        let workers = Workers::new(s.num_workers.clamp(1, batches.max(1)));
        Self::start_on(workers, source, s, epoch, first)
    }

    /// As `start_at`, on a pool of loader threads that may serve other epochs too.
    pub fn start_on(
        workers: Arc<Workers>,
        source: Arc<dyn ClipSource>,
        s: LoaderSettings,
        epoch: u64,
        first: usize,
    ) -> Self {
        let order = Arc::new(epoch_order(source.len(), s.seed, epoch, s.train));
        let batch = s.batch_size.max(1);
        let batches = order.len().div_ceil(batch);
        // Bounded: a worker that finished a batch waits here until the trainer takes one,
        // so at most threads + capacity batches exist at once.
        let (tx, rx) = sync_channel(workers.threads() * s.prefetch_factor.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        for b in first..batches {
            let (tx, source, order, stop) = (tx.clone(), source.clone(), order.clone(), stop.clone());
            workers.submit(Box::new(move || {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let clips = &order[b * batch..((b + 1) * batch).min(order.len())];
                // A send fails only when the epoch was dropped early: nothing to do then.
                let _ = tx.send((b, make_batch(&*source, &s, epoch, b, clips)));
            }));
        }
        EpochLoader {
            rx: Some(rx),
            pending: BTreeMap::new(),
            next: first,
            batches,
            workers: Some(workers),
            stop,
            bad: Vec::new(),
            tried: 0,
            limit: s.max_bad_fraction,
        }
    }

    /// Batches in the whole epoch (including any skipped by `start_at`).
    pub fn batches(&self) -> usize {
        self.batches
    }

    /// Clips skipped so far, each with its reason.
    pub fn skipped(&self) -> &[String] {
        &self.bad
    }
}

/// A batch as a worker made it: what loaded, and one line per clip that did not.
struct Produced {
    batch: Batch,
    failures: Vec<String>,
}

/// Loads and preprocesses the clips of batch `b`.
fn make_batch(
    source: &dyn ClipSource,
    s: &LoaderSettings,
    epoch: u64,
    b: usize,
    clips: &[usize],
) -> Produced {
    let mut loaded = Vec::new();
    let mut failures = Vec::new();
    for &c in clips {
        match source.load(c) {
            Ok(frames) => loaded.push((c, frames)),
            Err(e) => failures.push(format!("{}: {e}", source.name(c))),
        }
    }
    let frames_per_clip = loaded.first().map_or(0, |(_, f)| f.frames);
    let side = s.input_size;
    let mut pixels = Vec::new();
    let mut targets = Vec::new();
    let mut kept = Vec::new();
    for (c, f) in &loaded {
        if f.frames != frames_per_clip {
            failures.push(format!(
                "{}: {} frames where the batch has {frames_per_clip}",
                source.name(*c),
                f.frames
            ));
            continue;
        }
        pixels.extend(clip_pixels(s, f, epoch, *c));
        targets.push(source.target(*c));
        kept.push(*c);
    }
    Produced { batch: Batch { index: b, clips: kept, frames_per_clip, side, pixels, targets }, failures }
}

impl Iterator for EpochLoader {
    type Item = Result<Batch, LoaderError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.next >= self.batches {
                return None;
            }
            if let Some(Produced { batch, failures }) = self.pending.remove(&self.next) {
                self.next += 1;
                self.tried += batch.clips.len() + failures.len();
                for line in failures {
                    eprintln!("warning: skipping {line}");
                    self.bad.push(line);
                }
                if self.bad.len() as f64 > self.limit * self.tried.max(1) as f64 {
                    self.stop.store(true, Ordering::Relaxed);
                    return Some(Err(LoaderError::TooManyBad {
                        bad: self.bad.len(),
                        tried: self.tried,
                        limit: self.limit,
                        first: self.bad.iter().take(5).cloned().collect(),
                    }));
                }
                if batch.clips.is_empty() {
                    continue;
                }
                return Some(Ok(batch));
            }
            match self.rx.as_ref()?.recv() {
                Ok((b, r)) => {
                    self.pending.insert(b, r);
                }
                Err(_) => return None,
            }
        }
    }
}

impl Drop for EpochLoader {
    fn drop(&mut self) {
        // Queued jobs of this epoch see `stop` and return; a worker blocked on a full
        // channel wakes when `rx` goes.
        self.stop.store(true, Ordering::Relaxed);
        self.rx.take();
        self.workers.take();
    }
}
