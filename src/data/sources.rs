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
    /// Drops what the source keeps in memory (the frame cache's LRU) and returns the
    /// bytes freed: the governor's "clear caches".
    fn clear_memory(&self) -> u64 {
        0
    }
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
pub use video::{FaceStats, VideoSource};

#[cfg(feature = "video")]
mod video {
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, PoisonError};

    use super::ClipSource;
    use crate::config::FaceSource;
    use crate::data::cache::{ClipSettings, FrameCache};
    use crate::data::clip::{ClipFrames, FrameCrops, assemble};
    use crate::data::decode::{RgbFrame, VideoInfo, sample_frames};
    use crate::data::detect::FaceDetector;
    use crate::data::face_boxes::{self, FaceSettings};
    use crate::data::faces::{self, FaceBox};
    use crate::data::image::RgbImage;
    use crate::data::manifest::{Label, VideoEntry};
    use crate::data::sampling::{Sampling, sample_indices};

    /// Videos from the index, decoded once into the frame cache.
    pub struct VideoSource {
        entries: Vec<VideoEntry>,
        cache: Arc<FrameCache>,
        settings: ClipSettings,
        decode_threads: usize,
        decodes: AtomicU64,
        faces: FaceSettings,
        detector: Option<Arc<FaceDetector>>,
        face_stats: Mutex<FaceStats>,
    }

    /// What face detection did in this source's videos (those detected, not those whose
    /// boxes came from the cache).
    #[derive(Debug, Clone, Copy, Default, PartialEq)]
    pub struct FaceStats {
        pub videos: usize,
        pub frames: usize,
        pub faces: usize,
        pub tracks: usize,
        pub without_face: usize,
        pub seconds: f64,
    }

    impl VideoSource {
        pub fn new(
            entries: Vec<VideoEntry>,
            cache: Arc<FrameCache>,
            settings: ClipSettings,
            decode_threads: usize,
        ) -> Self {
            VideoSource {
                entries,
                cache,
                settings,
                decode_threads,
                decodes: AtomicU64::new(0),
                faces: FaceSettings::default(),
                detector: None,
                face_stats: Mutex::default(),
            }
        }

        /// Where face boxes come from (sidecars unless told otherwise); `detector` is
        /// needed for `FaceSource::Detect` (see `face_boxes::detector_for`).
        pub fn with_faces(mut self, faces: FaceSettings, detector: Option<Arc<FaceDetector>>) -> Self {
            self.faces = faces;
            self.detector = detector;
            self
        }

        pub fn face_stats(&self) -> FaceStats {
            *self.face_stats.lock().unwrap_or_else(PoisonError::into_inner)
        }

        /// Detected boxes from the cache folder, else detected now (and stored there).
        fn detected_boxes(
            &self,
            path: &Path,
            decoded: &[(usize, usize, usize, Vec<u8>)],
        ) -> Result<HashMap<usize, FaceBox>, String> {
            let frame_key =
                ClipSettings { frame_size: 0, quality_threshold: 0.0, face_scale: 0.0, ..self.settings };
            let key = crate::rng::mix(FrameCache::key(path, &frame_key)?, self.faces.key());
            if let Some(dir) = self.cache.dir()
                && let Some(boxes) = face_boxes::read_cached(dir, key)?
            {
                return Ok(boxes);
            }
            let det =
                self.detector.as_ref().ok_or("[data] faces = \"detect\" but no face detector was loaded")?;
            let start = std::time::Instant::now();
            let found = face_boxes::detect_clip(det, decoded, &self.faces.track)?;
            {
                let mut st = self.face_stats.lock().unwrap_or_else(PoisonError::into_inner);
                st.videos += 1;
                st.frames += found.frames;
                st.faces += found.faces_found;
                st.tracks += found.tracks;
                st.without_face += usize::from(found.boxes.is_empty());
                st.seconds += start.elapsed().as_secs_f64();
            }
            if let Some(dir) = self.cache.dir() {
                // A sidecar that cannot be written only costs a detection next time.
                let _ = face_boxes::write_cached(dir, key, &found.boxes);
            }
            Ok(found.boxes)
        }

        /// Videos decoded so far (cache misses).
        pub fn decodes(&self) -> u64 {
            self.decodes.load(Ordering::Relaxed)
        }

        fn decode(&self, clip: usize) -> Result<ClipFrames, String> {
            self.decodes.fetch_add(1, Ordering::Relaxed);
            let path = &self.entries[clip].path;
            let s = &self.settings;
            // The cache holds one deterministic sample per video (segment centres); training
            // variety comes from the per-epoch crop, flip and jitter.
            let pick = |info: &VideoInfo| sample_indices(info.frames.max(1), s.max_frames, Sampling::Eval);
            let crops = |boxes| FrameCrops {
                boxes,
                side: s.frame_size,
                quality_threshold: s.quality_threshold,
                face_scale: s.face_scale,
            };
            let cropped = match self.faces.source {
                // The boxes are known before decoding: each frame is cropped as it comes
                // out of the decoder, and no full-size frame is kept.
                FaceSource::None | FaceSource::Boxes => {
                    let boxes = match self.faces.source {
                        FaceSource::Boxes => faces::sidecar(path)?,
                        _ => HashMap::new(),
                    };
                    let crops = crops(&boxes);
                    sample_frames(path, pick, self.decode_threads, |index, img| crops.crop(index, img))
                        .map_err(|e| e.reason)?
                        .frames
                        .into_iter()
                        .map(Option::flatten)
                        .collect::<Vec<_>>()
                }
                // Detection needs every sampled frame before the first crop.
                FaceSource::Detect => {
                    let sampled =
                        sample_frames(path, pick, self.decode_threads, |_, img| RgbFrame::from(img))
                            .map_err(|e| e.reason)?;
                    let decoded: Vec<(usize, usize, usize, Vec<u8>)> = sampled
                        .indices
                        .iter()
                        .zip(sampled.frames)
                        .map(|(&i, f)| f.map_or((i, 0, 0, Vec::new()), |f| (i, f.width, f.height, f.data)))
                        .collect();
                    let boxes = self.detected_boxes(path, &decoded)?;
                    if boxes.is_empty() {
                        return Err(format!("no face in any of its {} sampled frames", decoded.len()));
                    }
                    let crops = crops(&boxes);
                    decoded
                        .iter()
                        .map(|(i, w, h, rgb)| {
                            (!rgb.is_empty()).then(|| crops.crop(*i, RgbImage::packed(rgb, *w, *h))).flatten()
                        })
                        .collect()
                }
            };
            let (clip, _) = assemble(&cropped, s.frame_size)
                .map_err(|e| format!("{e} (data.quality_threshold = {})", s.quality_threshold))?;
            Ok(clip)
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
            // Sidecar boxes (key 0) keep the keys caches were written under before detection.
            let key = match self.faces.key() {
                0 => key,
                faces => crate::rng::mix(key, faces),
            };
            self.cache.get_or_load(key, || self.decode(clip))
        }
        fn clear_memory(&self) -> u64 {
            self.cache.clear_memory() as u64
        }
    }
}
