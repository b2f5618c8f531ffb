//! The loader: batches of clips, produced by `num_workers` threads ahead of the trainer,
//! in an order fixed by the seed and the epoch.
//!
//! A batch holds its frames as stored (u8 RGB, or I420) and each clip's crop, flip and
//! jitter (`FrameOp`): the conversion to the network's normalised input happens on the
//! device that preprocesses. When the run preprocesses on the CPU, the workers also run
//! the CPU twin (`data::preprocess`) and the batch carries its result, so that it costs
//! the step nothing; a `LoaderControl` switches that between batches, and sets how many
//! batches may be made ahead (`prefetch_factor` per worker, or one per worker when the
//! governor asks for fewer).
//!
//! Workers take batches in order from a shared queue; batch b starts only once the
//! trainer has taken batch b − depth, so a slow trainer stops the workers rather than
//! growing a queue, and the batch the trainer waits for is always among those started.
//! With `persistent_workers` one pool of threads serves every epoch. The consumer
//! re-orders by batch index, so timing never changes what the trainer sees. A clip that
//! fails to load is skipped with one warning, counted, and listed; past
//! `max_bad_fraction` of the clips tried, the epoch stops with an error.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;

use super::sources::ClipSource;
use crate::data::preprocess::{FrameFormat, FrameOp, IMAGENET_MEAN, IMAGENET_STD, Rect, preprocess_as};
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

/// The frames of a batch's clips as the cache stores them, one clip after the other, and
/// each clip's crop, flip and jitter (the same for all its frames).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFrames {
    pub format: FrameFormat,
    /// Height and width of every frame.
    pub h: usize,
    pub w: usize,
    pub data: Vec<u8>,
    /// One per clip.
    pub ops: Vec<FrameOp>,
}

impl StoredFrames {
    /// The bytes of clips `clips` (of `frames_per_clip` frames each) and one op per frame.
    pub fn clips(&self, clips: std::ops::Range<usize>, frames_per_clip: usize) -> (&[u8], Vec<FrameOp>) {
        let per_clip = frames_per_clip * self.format.frame_bytes(self.h, self.w);
        let ops = self.ops[clips.clone()].iter().flat_map(|&op| std::iter::repeat_n(op, frames_per_clip));
        (&self.data[clips.start * per_clip..clips.end * per_clip], ops.collect())
    }

    /// The CPU twin on clips `clips`: the network input, NHWC f32, `side²` per frame.
    pub fn preprocess_cpu(
        &self,
        clips: std::ops::Range<usize>,
        frames_per_clip: usize,
        side: usize,
    ) -> Vec<f32> {
        let (data, ops) = self.clips(clips, frames_per_clip);
        preprocess_as(self.format, data, (self.h, self.w), &ops, side, IMAGENET_MEAN, IMAGENET_STD)
    }
}

/// A batch's network input, before or after preprocessing.
#[derive(Debug, Clone, PartialEq)]
pub enum Pixels {
    /// As stored: the step preprocesses them on its backend's device (or the CPU twin,
    /// when the run preprocesses on the CPU).
    Stored(StoredFrames),
    /// Preprocessed already (by the loader's CPU twin, or made elsewhere): `clips ×
    /// frames` frames of `side × side × 3` f32, NHWC.
    Prepared(Vec<f32>),
}

/// A batch: `clips × frames_per_clip` frames, the network input `side²` per frame, one
/// target per clip.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub index: usize,
    pub clips: Vec<usize>,
    pub frames_per_clip: usize,
    pub side: usize,
    pub pixels: Pixels,
    pub targets: Vec<f32>,
}

impl Batch {
    /// Host memory the batch holds.
    pub fn bytes(&self) -> usize {
        let pixels = match &self.pixels {
            Pixels::Stored(f) => f.data.len() + f.ops.len() * std::mem::size_of::<FrameOp>(),
            Pixels::Prepared(p) => p.len() * 4,
        };
        pixels + self.targets.len() * 4 + self.clips.len() * 8
    }
}

/// What the trainer changes in a running loader between steps: whether the workers run
/// the CPU preprocessing, and whether they make fewer batches ahead. Shared by every
/// epoch's loader of a run.
#[derive(Default)]
pub struct LoaderControl {
    prepare_on_cpu: AtomicBool,
    fewer_ahead: AtomicBool,
    /// The epochs running now, woken when the depth changes.
    gates: Mutex<Vec<Weak<Gate>>>,
}

impl LoaderControl {
    /// Batches `Pixels::Prepared` by the workers' CPU twin when `prepare_on_cpu`, else
    /// `Pixels::Stored`.
    pub fn new(prepare_on_cpu: bool) -> Arc<Self> {
        let c = LoaderControl::default();
        c.prepare_on_cpu.store(prepare_on_cpu, Ordering::Relaxed);
        Arc::new(c)
    }

    pub fn prepares_on_cpu(&self) -> bool {
        self.prepare_on_cpu.load(Ordering::Relaxed)
    }

    /// Batches started from now on are preprocessed on the CPU by the workers (or not).
    pub fn set_prepare_on_cpu(&self, on: bool) {
        self.prepare_on_cpu.store(on, Ordering::Relaxed);
    }

    pub fn fewer_ahead(&self) -> bool {
        self.fewer_ahead.load(Ordering::Relaxed)
    }

    /// One batch per worker ahead (as `prefetch_factor = 1`), or `prefetch_factor` again.
    pub fn set_fewer_ahead(&self, on: bool) {
        self.fewer_ahead.store(on, Ordering::Relaxed);
        for gate in self.live_gates() {
            // Taking the lock orders the change before any worker's next check.
            drop(gate.lock());
            gate.wake.notify_all();
        }
    }

    /// Batches made ahead and not yet taken by the trainer, over the running epochs, and
    /// the host memory they hold.
    pub fn held(&self) -> (usize, usize) {
        self.live_gates().iter().map(|g| g.lock().held).fold((0, 0), |a, h| (a.0 + h.0, a.1 + h.1))
    }

    fn live_gates(&self) -> Vec<Arc<Gate>> {
        let mut gates = self.gates.lock().unwrap_or_else(PoisonError::into_inner);
        gates.retain(|g| g.strong_count() > 0);
        gates.iter().filter_map(Weak::upgrade).collect()
    }
}

/// The flow control of one epoch: batch b may start once the trainer has taken batch
/// b − depth.
struct Gate {
    state: Mutex<GateState>,
    wake: Condvar,
    threads: usize,
    prefetch_factor: usize,
    control: Arc<LoaderControl>,
}

#[derive(Default)]
struct GateState {
    /// The index of the next batch the trainer takes.
    taken: usize,
    stop: bool,
    /// Batches made and not taken, and their bytes.
    held: (usize, usize),
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn depth(&self) -> usize {
        self.threads * if self.control.fewer_ahead() { 1 } else { self.prefetch_factor.max(1) }
    }

    /// Waits until batch `b` may start; false when the epoch stopped.
    fn enter(&self, b: usize) -> bool {
        let mut st = self.lock();
        while !st.stop && b >= st.taken + self.depth() {
            st = self.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        !st.stop
    }
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
pub fn clip_op(s: &LoaderSettings, frame_side: usize, epoch: u64, clip: usize) -> FrameOp {
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

/// One epoch's batches, produced in the background.
pub struct EpochLoader {
    /// Dropped first on drop, so that nothing more is received.
    rx: Option<Receiver<(usize, Produced)>>,
    pending: BTreeMap<usize, Produced>,
    next: usize,
    batches: usize,
    /// Released after `rx` on drop; the last user of a pool joins its threads.
    workers: Option<Arc<Workers>>,
    gate: Arc<Gate>,
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
    /// the very batch it would have seen next), on `num_workers` threads of its own,
    /// preprocessed on the CPU by the workers.
    pub fn start_at(source: Arc<dyn ClipSource>, s: LoaderSettings, epoch: u64, first: usize) -> Self {
        let batches = source.len().div_ceil(s.batch_size.max(1));
        let workers = Workers::new(s.num_workers.clamp(1, batches.max(1)));
        Self::start_on(workers, source, s, epoch, first, LoaderControl::new(true))
    }

    /// As `start_at`, on a pool of loader threads that may serve other epochs too, under
    /// `control` (CPU preprocessing on the workers or not; how many batches ahead).
    pub fn start_on(
        workers: Arc<Workers>,
        source: Arc<dyn ClipSource>,
        s: LoaderSettings,
        epoch: u64,
        first: usize,
        control: Arc<LoaderControl>,
    ) -> Self {
        let order = Arc::new(epoch_order(source.len(), s.seed, epoch, s.train));
        let batch = s.batch_size.max(1);
        let batches = order.len().div_ceil(batch);
        let gate = Arc::new(Gate {
            state: Mutex::new(GateState { taken: first, ..GateState::default() }),
            wake: Condvar::new(),
            threads: workers.threads(),
            prefetch_factor: s.prefetch_factor,
            control: control.clone(),
        });
        control.gates.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::downgrade(&gate));
        // Unbounded: the gate bounds what is made ahead.
        let (tx, rx) = channel();
        for b in first..batches {
            let (tx, source, order, gate) = (tx.clone(), source.clone(), order.clone(), gate.clone());
            workers.submit(Box::new(move || {
                if !gate.enter(b) {
                    return;
                }
                let clips = &order[b * batch..((b + 1) * batch).min(order.len())];
                let made = make_batch(&*source, &s, epoch, b, clips, gate.control.prepares_on_cpu());
                let bytes = made.batch.bytes();
                {
                    let mut st = gate.lock();
                    if st.stop {
                        return;
                    }
                    st.held = (st.held.0 + 1, st.held.1 + bytes);
                }
                // A send fails only when the epoch was dropped early: nothing to do then.
                let _ = tx.send((b, made));
            }));
        }
        EpochLoader {
            rx: Some(rx),
            pending: BTreeMap::new(),
            next: first,
            batches,
            workers: Some(workers),
            gate,
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

/// Loads the clips of batch `b` and gives each its crop, flip and jitter; runs the CPU
/// preprocessing too when `prepare_on_cpu`.
fn make_batch(
    source: &dyn ClipSource,
    s: &LoaderSettings,
    epoch: u64,
    b: usize,
    clips: &[usize],
    prepare_on_cpu: bool,
) -> Produced {
    let mut loaded = Vec::new();
    let mut failures = Vec::new();
    for &c in clips {
        match source.load(c) {
            Ok(frames) => loaded.push((c, frames)),
            Err(e) => failures.push(format!("{}: {e}", source.name(c))),
        }
    }
    let (frames_per_clip, frame_side) = loaded.first().map_or((0, 0), |(_, f)| (f.frames, f.side));
    let mut stored = StoredFrames {
        format: FrameFormat::Rgb,
        h: frame_side,
        w: frame_side,
        data: Vec::new(),
        ops: Vec::new(),
    };
    let mut targets = Vec::new();
    let mut kept = Vec::new();
    for (c, f) in &loaded {
        if f.frames != frames_per_clip || f.side != frame_side {
            failures.push(format!(
                "{}: {} frames of {}² where the batch has {frames_per_clip} of {frame_side}²",
                source.name(*c),
                f.frames,
                f.side
            ));
            continue;
        }
        stored.data.extend_from_slice(&f.data);
        stored.ops.push(clip_op(s, f.side, epoch, *c));
        targets.push(source.target(*c));
        kept.push(*c);
    }
    let pixels = if prepare_on_cpu && !kept.is_empty() {
        Pixels::Prepared(stored.preprocess_cpu(0..kept.len(), frames_per_clip, s.input_size))
    } else {
        Pixels::Stored(stored)
    };
    let batch = Batch { index: b, clips: kept, frames_per_clip, side: s.input_size, pixels, targets };
    Produced { batch, failures }
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
                {
                    let mut st = self.gate.lock();
                    st.taken = self.next;
                    st.held = (st.held.0.saturating_sub(1), st.held.1.saturating_sub(batch.bytes()));
                }
                self.gate.wake.notify_all();
                self.tried += batch.clips.len() + failures.len();
                for line in failures {
                    eprintln!("warning: skipping {line}");
                    self.bad.push(line);
                }
                if self.bad.len() as f64 > self.limit * self.tried.max(1) as f64 {
                    self.stop();
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

impl EpochLoader {
    /// Queued jobs of this epoch return without loading; workers waiting at the gate wake.
    fn stop(&self) {
        let mut st = self.gate.lock();
        st.stop = true;
        st.held = (0, 0);
        drop(st);
        self.gate.wake.notify_all();
    }
}

impl Drop for EpochLoader {
    fn drop(&mut self) {
        self.stop();
        self.rx.take();
        self.workers.take();
    }
}
