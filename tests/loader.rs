//! The loader: the same seed gives the same batches whatever the thread timing, every
//! clip appears once per epoch, bad clips are skipped and counted up to a limit, and an
//! abandoned epoch shuts its workers down.

use std::sync::Arc;

use dfengine::data::clip::ClipFrames;
use dfengine::data::loader::{
    Batch, EpochLoader, LoaderControl, LoaderError, LoaderSettings, Pixels, epoch_order,
};
use dfengine::data::sources::ClipSource;
use dfengine::data::sources::SyntheticSource;
use dfengine::data::synth::{SynthParams, clip_set};

fn synthetic(n: u32) -> SyntheticSource {
    SyntheticSource::new(clip_set(n), SynthParams { seed: 2, size: 20, frames: 3, difficulty: 0.2 })
}

fn settings(train: bool) -> LoaderSettings {
    LoaderSettings {
        batch_size: 3,
        num_workers: 3,
        prefetch_factor: 1,
        input_size: 16,
        seed: 9,
        train,
        max_bad_fraction: 0.25,
    }
}

fn epoch(source: Arc<dyn ClipSource>, s: LoaderSettings, e: u64) -> Vec<Batch> {
    EpochLoader::start(source, s, e).map(|b| b.unwrap()).collect()
}

#[test]
fn same_seed_same_batches_and_each_clip_once() {
    let source: Arc<dyn ClipSource> = Arc::new(synthetic(12));
    let a = epoch(source.clone(), settings(true), 0);
    let b = epoch(source.clone(), LoaderSettings { num_workers: 1, ..settings(true) }, 0);
    assert_eq!(a, b, "worker count or timing changed the batches");
    assert_eq!(a.len(), 4);
    assert_eq!(a.iter().map(|b| b.index).collect::<Vec<_>>(), [0, 1, 2, 3]);
    let mut seen: Vec<usize> = a.iter().flat_map(|b| b.clips.clone()).collect();
    seen.sort();
    assert_eq!(seen, (0..12).collect::<Vec<_>>());
    let first = &a[0];
    let Pixels::Prepared(pixels) = &first.pixels else {
        panic!("EpochLoader::start preprocesses on the CPU")
    };
    assert_eq!(pixels.len(), first.clips.len() * 3 * 16 * 16 * 3);
    assert_eq!(first.targets.len(), first.clips.len());
    for (c, t) in first.clips.iter().zip(&first.targets) {
        assert_eq!(*t, source.target(*c));
    }
    let next = epoch(source, settings(true), 1);
    assert_ne!(next[0].clips, a[0].clips, "a new epoch reshuffles");
}

#[test]
fn evaluation_keeps_order_and_does_not_augment() {
    let source: Arc<dyn ClipSource> = Arc::new(synthetic(6));
    let a = epoch(source.clone(), settings(false), 0);
    let b = epoch(source, settings(false), 5);
    assert_eq!(a[0].clips, [0, 1, 2]);
    assert_eq!(a, b, "evaluation must not depend on the epoch");
    assert_eq!(epoch_order(5, 1, 0, false), [0, 1, 2, 3, 4]);
}

/// Fails on the clips it is told to.
struct Failing(SyntheticSource, Vec<usize>);

impl ClipSource for Failing {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn target(&self, c: usize) -> f32 {
        self.0.target(c)
    }
    fn name(&self, c: usize) -> String {
        format!("clip{c}.mp4")
    }
    fn load(&self, c: usize) -> Result<Arc<ClipFrames>, String> {
        if self.1.contains(&c) { Err("truncated file".into()) } else { self.0.load(c) }
    }
}

#[test]
fn bad_clips_are_skipped_and_counted() {
    let source: Arc<dyn ClipSource> = Arc::new(Failing(synthetic(12), vec![4]));
    let mut loader = EpochLoader::start(source, settings(false), 0);
    let batches: Vec<Batch> = loader.by_ref().map(|b| b.unwrap()).collect();
    assert_eq!(batches.iter().map(|b| b.clips.len()).sum::<usize>(), 11);
    assert!(batches.iter().all(|b| !b.clips.contains(&4)));
    assert_eq!(loader.skipped(), ["clip4.mp4: truncated file"]);
}

#[test]
fn too_many_bad_clips_stop_the_epoch_with_the_reasons() {
    let source: Arc<dyn ClipSource> = Arc::new(Failing(synthetic(10), vec![0, 1, 2]));
    let err = EpochLoader::start(source, settings(false), 0).find_map(|b| b.err()).expect("an error");
    let LoaderError::TooManyBad { bad, tried, .. } = &err;
    assert_eq!((*bad, *tried), (3, 3));
    let text = err.to_string();
    assert!(text.contains("3 of 3 clips failed") && text.contains("clip0.mp4: truncated file"), "{text}");
}

#[test]
fn dropping_an_epoch_early_stops_its_workers() {
    let source: Arc<dyn ClipSource> = Arc::new(synthetic(40));
    let mut loader = EpochLoader::start(source, LoaderSettings { batch_size: 1, ..settings(true) }, 0);
    assert!(loader.next().is_some());
    drop(loader); // joins the workers: a hang here fails the test by timeout
}

/// A source that notes which threads loaded its clips.
struct ThreadSpy {
    inner: SyntheticSource,
    seen: std::sync::Mutex<std::collections::HashSet<std::thread::ThreadId>>,
}

impl ClipSource for ThreadSpy {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn target(&self, clip: usize) -> f32 {
        self.inner.target(clip)
    }
    fn name(&self, clip: usize) -> String {
        self.inner.name(clip)
    }
    fn load(&self, clip: usize) -> Result<Arc<ClipFrames>, String> {
        self.seen.lock().unwrap().insert(std::thread::current().id());
        self.inner.load(clip)
    }
}

#[test]
fn persistent_workers_serve_every_epoch_with_the_same_batches() {
    use dfengine::data::loader::Workers;
    let spy = |n| Arc::new(ThreadSpy { inner: synthetic(n), seen: Default::default() });
    let s = settings(true);

    let kept = spy(12);
    let pool = Workers::new(s.num_workers);
    let source: Arc<dyn ClipSource> = kept.clone();
    let on_pool: Vec<Vec<Batch>> = (0..3)
        .map(|e| {
            EpochLoader::start_on(pool.clone(), source.clone(), s, e, 0, LoaderControl::new(true))
                .map(|b| b.unwrap())
                .collect()
        })
        .collect();
    assert!(kept.seen.lock().unwrap().len() <= s.num_workers, "three epochs, one pool of threads");

    let fresh = spy(12);
    let source: Arc<dyn ClipSource> = fresh.clone();
    for (e, batches) in on_pool.iter().enumerate() {
        assert_eq!(&epoch(source.clone(), s, e as u64), batches, "epoch {e}: the pool changed the batches");
    }
    assert!(
        fresh.seen.lock().unwrap().len() > s.num_workers,
        "without the pool, each epoch has its own threads"
    );

    // An epoch abandoned half way leaves the pool able to serve the next one.
    let mut partial = EpochLoader::start_on(pool.clone(), kept.clone(), s, 7, 0, LoaderControl::new(true));
    partial.next().unwrap().unwrap();
    drop(partial);
    let after: Vec<Batch> =
        EpochLoader::start_on(pool, kept, s, 8, 0, LoaderControl::new(true)).map(|b| b.unwrap()).collect();
    assert_eq!(after.len(), 4);
}

/// A loader on its own pool under `control`.
fn controlled(source: Arc<dyn ClipSource>, s: LoaderSettings, control: &Arc<LoaderControl>) -> EpochLoader {
    use dfengine::data::loader::Workers;
    EpochLoader::start_on(Workers::new(s.num_workers), source, s, 0, 0, control.clone())
}

#[test]
fn stored_batches_are_the_frames_as_stored_and_preprocess_to_the_prepared_pixels() {
    let source: Arc<dyn ClipSource> = Arc::new(synthetic(9));
    let stored: Vec<Batch> =
        controlled(source.clone(), settings(true), &LoaderControl::new(false)).map(|b| b.unwrap()).collect();
    let prepared = epoch(source.clone(), settings(true), 0);
    assert_eq!(stored.len(), prepared.len());
    for (s, p) in stored.iter().zip(&prepared) {
        assert_eq!((s.index, &s.clips, &s.targets), (p.index, &p.clips, &p.targets));
        let (Pixels::Stored(frames), Pixels::Prepared(pixels)) = (&s.pixels, &p.pixels) else {
            panic!("batch {}: stored and prepared expected", s.index)
        };
        // u8 as the source gave them, 20² RGB, one op per clip.
        let raw: Vec<u8> = s.clips.iter().flat_map(|&c| source.load(c).unwrap().data.clone()).collect();
        assert_eq!((frames.h, frames.w, frames.ops.len()), (20, 20, s.clips.len()));
        assert_eq!(frames.data, raw);
        assert_eq!(&frames.preprocess_cpu(0..s.clips.len(), 3, 16), pixels);
        assert!(s.bytes() < p.bytes(), "u8 frames of 20² take less than f32 pixels of 16²");
    }
}

/// A source that takes its time, so that a test can watch the loader run ahead.
struct Slow(SyntheticSource);

impl ClipSource for Slow {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn target(&self, c: usize) -> f32 {
        self.0.target(c)
    }
    fn name(&self, c: usize) -> String {
        self.0.name(c)
    }
    fn load(&self, c: usize) -> Result<Arc<ClipFrames>, String> {
        std::thread::sleep(std::time::Duration::from_millis(2));
        self.0.load(c)
    }
}

/// Waits until the loader has made all it may ahead: `held` stops changing.
fn settled(control: &LoaderControl) -> (usize, usize) {
    let mut last = control.held();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(60));
        let now = control.held();
        if now == last {
            return now;
        }
        last = now;
    }
}

#[test]
fn prefetch_depth_changes_live_without_changing_the_batches() {
    let source: Arc<dyn ClipSource> = Arc::new(Slow(synthetic(60)));
    let s = LoaderSettings { batch_size: 2, num_workers: 2, prefetch_factor: 3, ..settings(true) };
    let control = LoaderControl::new(false);
    let mut loader = controlled(source.clone(), s, &control);
    let mut got = vec![loader.next().unwrap().unwrap()];
    let (full, full_bytes) = settled(&control);
    assert_eq!(full, 6, "2 workers × prefetch_factor 3 batches ahead");
    control.set_fewer_ahead(true);
    got.push(loader.next().unwrap().unwrap());
    got.push(loader.next().unwrap().unwrap());
    got.push(loader.next().unwrap().unwrap());
    got.push(loader.next().unwrap().unwrap());
    let (fewer, fewer_bytes) = settled(&control);
    assert!(
        fewer <= 2 && fewer_bytes < full_bytes,
        "one batch per worker ahead: {fewer} held ({fewer_bytes} B)"
    );
    control.set_fewer_ahead(false);
    got.push(loader.next().unwrap().unwrap());
    assert_eq!(settled(&control).0, 6, "restored");
    got.extend(loader.map(|b| b.unwrap()));
    let plain: Vec<Batch> = controlled(source, s, &LoaderControl::new(false)).map(|b| b.unwrap()).collect();
    assert_eq!(got, plain, "the depth changed what the trainer saw");
}

#[test]
fn switching_cpu_preprocessing_mid_epoch_loses_and_repeats_nothing() {
    let source: Arc<dyn ClipSource> = Arc::new(synthetic(30));
    let s = LoaderSettings { batch_size: 2, ..settings(true) };
    let control = LoaderControl::new(false);
    let mut loader = controlled(source.clone(), s, &control);
    let mut got: Vec<Batch> = loader.by_ref().take(4).map(|b| b.unwrap()).collect();
    control.set_prepare_on_cpu(true);
    got.extend(loader.map(|b| b.unwrap()));
    let reference = epoch(source, s, 0);
    assert_eq!(got.iter().map(|b| b.index).collect::<Vec<_>>(), (0..reference.len()).collect::<Vec<_>>());
    for (b, r) in got.iter().zip(&reference) {
        assert_eq!((&b.clips, &b.targets), (&r.clips, &r.targets));
        let pixels = match &b.pixels {
            Pixels::Stored(f) => f.preprocess_cpu(0..b.clips.len(), b.frames_per_clip, b.side),
            Pixels::Prepared(p) => p.clone(),
        };
        assert_eq!(Pixels::Prepared(pixels), r.pixels, "batch {}", b.index);
    }
    assert!(matches!(got.last().unwrap().pixels, Pixels::Prepared(_)), "the switch took effect");
}
