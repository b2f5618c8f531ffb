//! Synthetic face clips: a procedurally drawn face-like object (skin-toned ellipse, eyes,
//! a mouth that opens and closes, head motion, lighting, a textured background, sensor
//! noise) per "identity", and fakes made the way face swaps are: the face region of one
//! clip re-rendered with another identity, at lower resolution, colour-mismatched, blended
//! back through a feathered mask whose strength flickers over time. `difficulty` in
//! [0, 1] weakens those artefacts. Everything is a pure function of (seed, clip, frame),
//! so the same seed gives the same pixels on every machine.

use crate::rng::hash;

/// What varies between identities.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Identity {
    skin: [f32; 3],
    eye_gap: f32,
    eye_size: f32,
    mouth_width: f32,
    aspect: f32,
}

/// What varies between source clips: pose path, lighting, background.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Scene {
    swing: [f32; 2],
    speed: [f32; 2],
    phase: f32,
    light: f32,
    bg: [f32; 3],
    bg_freq: [f32; 2],
}

/// One clip to draw: the source clip whose scene and pose it shows and, for a fake, the
/// identity whose face is swapped in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClipSpec {
    pub source: u32,
    pub swapped_from: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthParams {
    pub seed: u64,
    pub size: usize,
    pub frames: usize,
    pub difficulty: f32,
}

/// Uniform in [0, 1) from (seed, key, slot).
fn unit(seed: u64, key: u64, slot: u64) -> f32 {
    (hash(seed ^ hash(key.wrapping_mul(0x1000_0000_01B3) ^ slot)) >> 40) as f32 / (1u64 << 24) as f32
}

fn identity(seed: u64, id: u32) -> Identity {
    let u = |s| unit(seed, 1_000 + id as u64, s);
    let tone = u(0);
    Identity {
        skin: [0.55 + 0.4 * tone, 0.38 + 0.35 * tone + 0.05 * u(1), 0.30 + 0.3 * tone],
        eye_gap: 0.28 + 0.16 * u(2),
        eye_size: 0.08 + 0.06 * u(3),
        mouth_width: 0.25 + 0.25 * u(4),
        aspect: 1.15 + 0.3 * u(5),
    }
}

fn scene(seed: u64, id: u32) -> Scene {
    let u = |s| unit(seed, 50_000 + id as u64, s);
    Scene {
        swing: [0.06 + 0.08 * u(0), 0.03 + 0.06 * u(1)],
        speed: [0.05 + 0.1 * u(2), 0.04 + 0.1 * u(3)],
        phase: std::f32::consts::TAU * u(4),
        light: -0.3 + 0.6 * u(5),
        bg: [0.2 + 0.6 * u(6), 0.2 + 0.6 * u(7), 0.2 + 0.6 * u(8)],
        bg_freq: [4.0 + 10.0 * u(9), 4.0 + 10.0 * u(10)],
    }
}

/// The face's colour at normalised face coordinates (u, v) (the face ellipse is the unit
/// disc), or `None` outside it.
fn face_colour(id: &Identity, u: f32, v: f32, mouth_open: f32) -> Option<[f32; 3]> {
    let r2 = u * u + v * v;
    if r2 > 1.0 {
        return None;
    }
    let shade = 1.0 - 0.25 * r2;
    let mut c = id.skin.map(|s| s * shade);
    for side in [-1.0f32, 1.0] {
        let (du, dv) = (u - side * id.eye_gap, v + 0.25);
        if du * du + (dv * 1.6) * (dv * 1.6) < id.eye_size * id.eye_size {
            c = [0.08, 0.06, 0.05];
        }
    }
    let (du, dv) = (u / id.mouth_width, (v - 0.45) / (0.03 + 0.09 * mouth_open));
    if du * du + dv * dv < 1.0 {
        c = [0.45, 0.12, 0.12];
    }
    Some(c)
}

/// Frame `t` of `clip` as RGB24 bytes, `size × size`.
pub fn render(p: &SynthParams, clip: ClipSpec, t: usize) -> Vec<u8> {
    let s = p.size as f32;
    let sc = scene(p.seed, clip.source);
    let own = identity(p.seed, clip.source);
    let tf = t as f32;
    let cx = 0.5 + sc.swing[0] * (tf * sc.speed[0] + sc.phase).sin();
    let cy = 0.5 + sc.swing[1] * (tf * sc.speed[1]).sin();
    let rx = 0.22;
    let ry = rx * own.aspect;
    let mouth_open = 0.5 + 0.5 * (tf * 0.3 + sc.phase).sin();
    // Fake artefacts, weaker as difficulty rises.
    let strength = 1.0 - 0.85 * p.difficulty.clamp(0.0, 1.0);
    let swap = clip.swapped_from.map(|other| {
        let donor = identity(p.seed, other);
        let mismatch = [0.10, -0.06, 0.04].map(|d| d * strength);
        let flicker =
            0.25 * strength * unit(p.seed, 90_000 + clip.source as u64 * 7919 + other as u64, t as u64);
        let block = 1.0 + (3.0 * strength).round();
        (donor, mismatch, flicker, block)
    });
    let mut out = Vec::with_capacity(p.size * p.size * 3);
    for y in 0..p.size {
        for x in 0..p.size {
            let (xn, yn) = (x as f32 / s, y as f32 / s);
            let light = 1.0 + sc.light * (xn - 0.5);
            let tex = 0.5 + 0.25 * ((xn * sc.bg_freq[0] + tf * 0.02).sin() * (yn * sc.bg_freq[1]).cos());
            let mut c = sc.bg.map(|b| b * tex);
            let (u, v) = ((xn - cx) / rx, (yn - cy) / ry);
            if let Some(f) = face_colour(&own, u, v, mouth_open) {
                c = f;
            }
            if let Some((donor, mismatch, flicker, block)) = swap {
                // The swapped face is rendered on a coarser grid (the generator's lower
                // resolution), tinted, and blended through a feathered elliptical mask.
                let (qx, qy) =
                    ((x as f32 / block).floor() * block / s, (y as f32 / block).floor() * block / s);
                let (qu, qv) = ((qx - cx) / (rx * 0.95), (qy - cy) / (ry * 0.95));
                if let Some(f) = face_colour(&donor, qu, qv, mouth_open) {
                    let r = (u * u + v * v).sqrt();
                    let mask = ((1.0 - r) / 0.25).clamp(0.0, 1.0) * (1.0 - flicker);
                    for k in 0..3 {
                        c[k] = c[k] * (1.0 - mask) + (f[k] + mismatch[k]) * mask;
                    }
                }
            }
            let noise = 0.03
                * (unit(p.seed, 7 + clip.source as u64, (t * p.size * p.size + y * p.size + x) as u64) - 0.5);
            out.extend(c.map(|v| ((v * light + noise).clamp(0.0, 1.0) * 255.0).round() as u8));
        }
    }
    out
}

/// The clips of a synthetic set of `videos` clips: half real (sources 0, 1, …), half fake
/// (each source's partner swapped in: 0↔1, 2↔3, …), in FaceForensics++'s pairing.
pub fn clip_set(videos: u32) -> Vec<ClipSpec> {
    let reals = (videos / 2).max(2) & !1;
    let mut clips: Vec<ClipSpec> = (0..reals).map(|i| ClipSpec { source: i, swapped_from: None }).collect();
    clips.extend((0..reals).map(|i| ClipSpec { source: i, swapped_from: Some(i ^ 1) }));
    clips
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SynthParams {
        SynthParams { seed: 3, size: 32, frames: 4, difficulty: 0.0 }
    }

    #[test]
    fn rendering_is_deterministic_and_moves() {
        let clip = ClipSpec { source: 2, swapped_from: None };
        let a = render(&params(), clip, 0);
        assert_eq!(a.len(), 32 * 32 * 3);
        assert_eq!(a, render(&params(), clip, 0), "same seed, same pixels");
        assert_ne!(a, render(&params(), clip, 3), "frames differ over time");
        assert_ne!(a, render(&SynthParams { seed: 4, ..params() }, clip, 0), "seeds differ");
    }

    #[test]
    fn a_fake_differs_from_its_source_inside_the_face_only() {
        let p = SynthParams { size: 64, ..params() };
        let real = render(&p, ClipSpec { source: 0, swapped_from: None }, 1);
        let fake = render(&p, ClipSpec { source: 0, swapped_from: Some(1) }, 1);
        let diff = |x: usize, y: usize| {
            (0..3)
                .map(|k| real[(y * 64 + x) * 3 + k].abs_diff(fake[(y * 64 + x) * 3 + k]) as u32)
                .sum::<u32>()
        };
        assert_eq!(diff(1, 1), 0, "the background is the source's");
        let face: u32 = (24..40).flat_map(|y| (24..40).map(move |x| (x, y))).map(|(x, y)| diff(x, y)).sum();
        assert!(face > 16 * 16 * 10, "the face region barely changed: {face}");
    }

    #[test]
    fn harder_fakes_are_closer_to_a_clean_swap() {
        let p = |d| SynthParams { size: 48, difficulty: d, ..params() };
        let gap = |d: f32| {
            let real = render(&p(d), ClipSpec { source: 0, swapped_from: None }, 2);
            let fake = render(&p(d), ClipSpec { source: 0, swapped_from: Some(1) }, 2);
            real.iter().zip(&fake).map(|(a, b)| a.abs_diff(*b) as u64).sum::<u64>()
        };
        assert!(gap(1.0) < gap(0.0), "difficulty must weaken the artefacts");
    }

    #[test]
    fn clip_set_pairs_like_faceforensics() {
        let set = clip_set(8);
        assert_eq!(set.len(), 8);
        assert_eq!(set.iter().filter(|c| c.swapped_from.is_some()).count(), 4);
        assert!(set.contains(&ClipSpec { source: 2, swapped_from: Some(3) }));
    }
}
