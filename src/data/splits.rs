//! The clip sources of a run's three splits, from the config: the in-memory synthetic
//! set, or a dataset's videos through the frame cache.

use std::sync::Arc;

use crate::config::{Config, DatasetLayout};
use crate::data::loader::epoch_order;
use crate::data::manifest::{ManifestError, Split};
use crate::data::sources::ClipSource;
use crate::data::sources::SyntheticSource;
use crate::data::synth::{ClipSpec, SynthParams, clip_set};

/// The synthetic set's pixels do not depend on the training seed, so that runs with
/// different seeds see the same data.
const SYNTHETIC_DATA_SEED: u64 = 2024;

pub struct Splits {
    pub train: Arc<dyn ClipSource>,
    pub val: Arc<dyn ClipSource>,
    pub test: Arc<dyn ClipSource>,
    /// e.g. "synthetic (200 clips)" or "FaceForensics++ at data/ff".
    pub description: String,
}

impl Splits {
    pub fn get(&self, split: Split) -> &Arc<dyn ClipSource> {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }
}

pub fn splits(config: &Config) -> Result<Splits, ManifestError> {
    if config.data.layout == DatasetLayout::Synthetic {
        return Ok(synthetic_splits(config));
    }
    video_splits(config)
}

/// The synthetic set split by source pair (a real, its partner, and the two fakes made
/// from them stay together, as FaceForensics++'s official splits keep them).
pub fn synthetic_splits(config: &Config) -> Splits {
    let d = &config.data;
    let params = SynthParams {
        seed: SYNTHETIC_DATA_SEED,
        size: d.frame_size as usize,
        frames: d.max_frames as usize,
        difficulty: d.synthetic_difficulty as f32,
    };
    let clips = clip_set(d.synthetic_videos);
    let pairs = clips.iter().map(|c| c.source / 2).max().map_or(0, |m| m as usize + 1);
    let order = epoch_order(pairs, SYNTHETIC_DATA_SEED, 0, true);
    let n_val = ((pairs as f64 * d.val_fraction).round() as usize).max(1);
    let n_test = ((pairs as f64 * d.test_fraction).round() as usize).min(pairs - n_val - 1);
    let split_of = |pair: usize| {
        let rank = order.iter().position(|&p| p == pair).expect("every pair is ordered");
        if rank < n_val {
            Split::Val
        } else if rank < n_val + n_test {
            Split::Test
        } else {
            Split::Train
        }
    };
    let pick = |split: Split| -> Arc<dyn ClipSource> {
        let chosen: Vec<ClipSpec> =
            clips.iter().copied().filter(|c| split_of(c.source as usize / 2) == split).collect();
        Arc::new(SyntheticSource::new(chosen, params))
    };
    Splits {
        train: pick(Split::Train),
        val: pick(Split::Val),
        test: pick(Split::Test),
        description: format!(
            "synthetic ({} clips of {} frames, {}², difficulty {})",
            clips.len(),
            d.max_frames,
            d.frame_size,
            d.synthetic_difficulty
        ),
    }
}

#[cfg(feature = "video")]
fn video_splits(config: &Config) -> Result<Splits, ManifestError> {
    use crate::data::cache::{ClipSettings, FrameCache};
    use crate::data::sources::VideoSource;

    let m = crate::data::manifest::load(&config.data)?;
    let d = &config.data;
    // The in-memory LRU takes what the config allows; the disk cache is the one
    // `dfengine prepare` fills.
    let (dir, memory) = if d.enable_cache {
        (Some(std::path::PathBuf::from(&d.cache_dir)), crate::data::cache::MEMORY_BUDGET)
    } else {
        (None, 0)
    };
    let cache = Arc::new(FrameCache::new(dir.as_deref(), memory).map_err(|e| ManifestError::Invalid {
        path: dir.clone().unwrap_or_default(),
        problem: format!("frame cache: {e}"),
    })?);
    let settings = ClipSettings::from_config(d);
    let faces = crate::data::face_boxes::FaceSettings::from_config(d);
    let detector = crate::data::face_boxes::detector_for(d)
        .map_err(|problem| ManifestError::Invalid { path: d.face_detector.clone().into(), problem })?;
    let pick = |split: Split| -> Arc<dyn ClipSource> {
        let entries = m.split(split).cloned().collect();
        Arc::new(VideoSource::new(entries, cache.clone(), settings, 1).with_faces(faces, detector.clone()))
    };
    Ok(Splits {
        train: pick(Split::Train),
        val: pick(Split::Val),
        test: pick(Split::Test),
        description: format!("{} layout at {}", m.layout, m.root.display()),
    })
}

#[cfg(not(feature = "video"))]
fn video_splits(_: &Config) -> Result<Splits, ManifestError> {
    Err(ManifestError::Invalid {
        path: Default::default(),
        problem: "this dfengine was built without the `video` feature (FFmpeg): it cannot decode videos; \
                  use [data] layout = \"synthetic\""
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_splits_keep_pairs_together_and_cover_every_clip() {
        let mut c = Config::default();
        c.data.layout = DatasetLayout::Synthetic;
        c.data.synthetic_videos = 80;
        c.data.frame_size = 16;
        c.data.max_frames = 1;
        let s = synthetic_splits(&c);
        let (tr, va, te) = (s.train.len(), s.val.len(), s.test.len());
        assert_eq!(tr + va + te, 80);
        assert!(va >= 4 && te >= 4 && tr > va + te, "{tr}/{va}/{te}");
        // Each split holds whole pairs: two reals and two fakes per pair.
        for src in [&s.train, &s.val, &s.test] {
            let fakes = (0..src.len()).filter(|&i| src.target(i) == 1.0).count();
            assert_eq!(fakes * 2, src.len());
            assert_eq!(src.len() % 4, 0);
        }
    }
}
