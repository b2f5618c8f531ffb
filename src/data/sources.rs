//! The clip sources the loader reads: decoded videos through the frame cache, and the
//! synthetic clips drawn in memory (the quick demo needs no files).

use std::sync::Arc;

use super::clip::ClipFrames;
use super::synth::{ClipSpec, SynthParams, render};

/// Where clips come from: decoded videos through the cache, or drawn in memory.
pub trait ClipSource: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// 1 for fake, 0 for real.
    fn target(&self, clip: usize) -> f32;
    /// A name for warnings (the video's path).
    fn name(&self, clip: usize) -> String;
    fn load(&self, clip: usize) -> Result<Arc<ClipFrames>, String>;
}

/// Synthetic clips rendered on demand: `frames` frames of `size²` per clip.
pub struct SyntheticSource {
    clips: Vec<ClipSpec>,
    params: SynthParams,
}

impl SyntheticSource {
    pub fn new(clips: Vec<ClipSpec>, params: SynthParams) -> Self {
        SyntheticSource { clips, params }
    }
}

impl ClipSource for SyntheticSource {
    fn len(&self) -> usize {
        self.clips.len()
    }
    fn target(&self, clip: usize) -> f32 {
        if self.clips[clip].swapped_from.is_some() { 1.0 } else { 0.0 }
    }
    fn name(&self, clip: usize) -> String {
        let c = self.clips[clip];
        match c.swapped_from {
            None => format!("synthetic real {}", c.source),
            Some(d) => format!("synthetic fake {}←{}", c.source, d),
        }
    }
    fn load(&self, clip: usize) -> Result<Arc<ClipFrames>, String> {
        let p = &self.params;
        let data: Vec<u8> = (0..p.frames).flat_map(|t| render(p, self.clips[clip], t)).collect();
        Ok(Arc::new(ClipFrames { frames: p.frames, side: p.size, data }))
    }
}

#[cfg(feature = "video")]
pub use video::VideoSource;

#[cfg(feature = "video")]
mod video {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::ClipSource;
    use crate::data::cache::{ClipSettings, FrameCache};
    use crate::data::clip::{ClipFrames, assemble};
    use crate::data::decode::{probe, read_frames};
    use crate::data::manifest::{Label, VideoEntry};
    use crate::data::sampling::{Sampling, sample_indices};

    /// Videos from the index, decoded once into the frame cache.
    pub struct VideoSource {
        entries: Vec<VideoEntry>,
        cache: Arc<FrameCache>,
        settings: ClipSettings,
        decode_threads: usize,
        decodes: AtomicU64,
    }

    impl VideoSource {
        pub fn new(
            entries: Vec<VideoEntry>,
            cache: Arc<FrameCache>,
            settings: ClipSettings,
            decode_threads: usize,
        ) -> Self {
            VideoSource { entries, cache, settings, decode_threads, decodes: AtomicU64::new(0) }
        }

        /// Videos decoded so far (cache misses).
        pub fn decodes(&self) -> u64 {
            self.decodes.load(Ordering::Relaxed)
        }

        fn decode(&self, clip: usize) -> Result<ClipFrames, String> {
            self.decodes.fetch_add(1, Ordering::Relaxed);
            let path = &self.entries[clip].path;
            let info = probe(path).map_err(|e| e.reason)?;
            // The cache holds one deterministic sample per video (segment centres); training
            // variety comes from the per-epoch crop, flip and jitter.
            let wanted = sample_indices(info.frames.max(1), self.settings.max_frames, Sampling::Eval);
            let (frames, _) = read_frames(path, &wanted, self.decode_threads).map_err(|e| e.reason)?;
            let decoded: Vec<(usize, usize, usize, Vec<u8>)> =
                wanted.iter().zip(frames).map(|(&i, f)| (i, f.width, f.height, f.data)).collect();
            let s = &self.settings;
            assemble(path, &decoded, s.frame_size, s.quality_threshold, s.face_scale).map(|(clip, _)| clip)
        }
    }

    impl ClipSource for VideoSource {
        fn len(&self) -> usize {
            self.entries.len()
        }
        fn target(&self, clip: usize) -> f32 {
            if self.entries[clip].label == Label::Fake { 1.0 } else { 0.0 }
        }
        fn name(&self, clip: usize) -> String {
            self.entries[clip].path.display().to_string()
        }
        fn load(&self, clip: usize) -> Result<Arc<ClipFrames>, String> {
            let key = FrameCache::key(&self.entries[clip].path, &self.settings)?;
            self.cache.get_or_load(key, || self.decode(clip))
        }
    }
}
