//! Which frames of a video to decode: `max_frames` spread uniformly over the whole
//! video. The video is cut into `max_frames` equal segments; training takes a random
//! frame inside each segment (seeded per video and epoch, so that runs repeat), evaluation
//! the centre of each (deterministic). A video shorter than `max_frames` repeats frames.

use crate::rng::{GOLDEN_GAMMA, Rng};

/// How to pick inside each segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    /// Segment centres.
    Eval,
    /// A random offset in each segment from this seed.
    Train { seed: u64 },
}

/// `max_frames` frame indices in `0..frame_count`, ascending (repeats allowed only when
/// the video is shorter than `max_frames`). Empty when the video has no frames.
pub fn sample_indices(frame_count: usize, max_frames: usize, sampling: Sampling) -> Vec<usize> {
    if frame_count == 0 || max_frames == 0 {
        return Vec::new();
    }
    let mut rng = match sampling {
        Sampling::Eval => Rng::new(0),
        Sampling::Train { seed } => Rng::new(seed ^ GOLDEN_GAMMA),
    };
    (0..max_frames)
        .map(|i| {
            // Segment i covers [i·n/m, (i+1)·n/m), in exact integer arithmetic.
            let start = i * frame_count / max_frames;
            let end = ((i + 1) * frame_count / max_frames).max(start + 1);
            let width = end - start;
            let offset = match sampling {
                Sampling::Eval => width / 2,
                Sampling::Train { .. } => (rng.next_u64() % width as u64) as usize,
            };
            (start + offset).min(frame_count - 1)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_takes_segment_centres() {
        assert_eq!(sample_indices(300, 4, Sampling::Eval), [37, 112, 187, 262]);
        assert_eq!(sample_indices(10, 10, Sampling::Eval), (0..10).collect::<Vec<_>>());
        assert_eq!(sample_indices(7, 3, Sampling::Eval), [1, 3, 5]);
    }

    #[test]
    fn train_picks_one_frame_inside_each_segment_reproducibly() {
        let a = sample_indices(300, 16, Sampling::Train { seed: 5 });
        assert_eq!(a, sample_indices(300, 16, Sampling::Train { seed: 5 }), "same seed, same frames");
        assert_ne!(a, sample_indices(300, 16, Sampling::Train { seed: 6 }), "another epoch, other frames");
        for (i, &f) in a.iter().enumerate() {
            let (start, end) = (i * 300 / 16, (i + 1) * 300 / 16);
            assert!((start..end).contains(&f), "frame {f} outside segment {i} [{start}, {end})");
        }
        // Over many seeds every frame of a segment is reachable.
        let seen: std::collections::HashSet<usize> =
            (0..400).map(|s| sample_indices(300, 16, Sampling::Train { seed: s })[0]).collect();
        assert_eq!(seen.len(), 300 / 16);
    }

    #[test]
    fn short_videos_repeat_frames_in_order() {
        assert_eq!(sample_indices(3, 8, Sampling::Eval), [0, 0, 0, 1, 1, 1, 2, 2]);
        let t = sample_indices(3, 8, Sampling::Train { seed: 1 });
        assert!(t.windows(2).all(|w| w[0] <= w[1]) && t.iter().all(|&f| f < 3));
        assert!(sample_indices(0, 8, Sampling::Eval).is_empty());
    }
}
