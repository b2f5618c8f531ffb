//! The loader: the same seed gives the same batches whatever the thread timing, every
//! clip appears once per epoch, bad clips are skipped and counted up to a limit, and an
//! abandoned epoch shuts its workers down.

use std::sync::Arc;

use dfengine::data::clip::ClipFrames;
use dfengine::data::loader::{Batch, EpochLoader, LoaderError, LoaderSettings, epoch_order};
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
    assert_eq!(first.pixels.len(), first.clips.len() * 3 * 16 * 16 * 3);
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
        .map(|e| EpochLoader::start_on(pool.clone(), source.clone(), s, e, 0).map(|b| b.unwrap()).collect())
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
    let mut partial = EpochLoader::start_on(pool.clone(), kept.clone(), s, 7, 0);
    partial.next().unwrap().unwrap();
    drop(partial);
    let after: Vec<Batch> = EpochLoader::start_on(pool, kept, s, 8, 0).map(|b| b.unwrap()).collect();
    assert_eq!(after.len(), 4);
}
