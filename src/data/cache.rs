//! The frame cache: each clip's prepared frames (u8, `frame_size`²) stored once on disk,
//! keyed by the video's path, size and modification time and by the settings that shaped
//! them, so that later epochs skip decoding; an in-memory LRU with a byte budget on top,
//! which the governor may clear.
//!
//! Disk entries are written to a temporary name and renamed, so a crash never leaves a
//! half-written entry that a later run would trust.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::UNIX_EPOCH;

use super::clip::ClipFrames;

const MAGIC: &[u8; 4] = b"DFC1";

/// Everything besides the file that decides a clip's frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipSettings {
    pub max_frames: usize,
    pub frame_size: usize,
    pub quality_threshold: f64,
    pub face_scale: f64,
}

impl ClipSettings {
    /// What `[data]` asks for.
    pub fn from_config(d: &crate::config::DataConfig) -> Self {
        ClipSettings {
            max_frames: d.max_frames as usize,
            frame_size: d.frame_size as usize,
            quality_threshold: d.quality_threshold,
            face_scale: d.face_margin,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub memory_hits: u64,
    pub disk_hits: u64,
    pub misses: u64,
    pub memory_bytes: usize,
}

#[derive(Default)]
struct Memory {
    entries: HashMap<u64, (Arc<ClipFrames>, u64)>,
    tick: u64,
    bytes: usize,
    stats: CacheStats,
}

/// Bytes a training run's frame cache keeps in memory (`enable_cache = true`); the disk
/// part is what `dfengine prepare` fills.
pub const MEMORY_BUDGET: usize = 1 << 30;

pub struct FrameCache {
    dir: Option<PathBuf>,
    budget: usize,
    memory: Mutex<Memory>,
}

fn fnv(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl FrameCache {
    /// `dir`: where entries persist (`None`: memory only); `memory_budget`: bytes the LRU
    /// may hold (0: none).
    pub fn new(dir: Option<&Path>, memory_budget: usize) -> std::io::Result<Self> {
        if let Some(d) = dir {
            std::fs::create_dir_all(d)?;
        }
        Ok(FrameCache { dir: dir.map(Path::to_path_buf), budget: memory_budget, memory: Mutex::default() })
    }

    /// The key of `video` under `s`; changes when the file or the settings change.
    pub fn key(video: &Path, s: &ClipSettings) -> Result<u64, String> {
        let meta =
            std::fs::metadata(video).map_err(|e| format!("video {}: cannot read: {e}", video.display()))?;
        let mtime =
            meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        let mut h = fnv(video.to_string_lossy().as_bytes(), 0xcbf2_9ce4_8422_2325);
        for part in [meta.len() as u128, mtime, s.max_frames as u128, s.frame_size as u128] {
            h = fnv(&part.to_le_bytes(), h);
        }
        for f in [s.quality_threshold, s.face_scale] {
            h = fnv(&f.to_bits().to_le_bytes(), h);
        }
        Ok(h)
    }

    /// The folder entries persist in, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn path(&self, key: u64) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{key:016x}.frames")))
    }

    /// The clip under `key`: from memory, else disk, else `load` (whose result is stored).
    pub fn get_or_load(
        &self,
        key: u64,
        load: impl FnOnce() -> Result<ClipFrames, String>,
    ) -> Result<Arc<ClipFrames>, String> {
        {
            let mut m = self.lock();
            m.tick += 1;
            let tick = m.tick;
            if let Some((clip, used)) = m.entries.get_mut(&key) {
                *used = tick;
                let clip = clip.clone();
                m.stats.memory_hits += 1;
                return Ok(clip);
            }
        }
        let from_disk = self.path(key).and_then(|p| read_entry(&p));
        let clip = match from_disk {
            Some(c) => {
                self.lock().stats.disk_hits += 1;
                Arc::new(c)
            }
            None => {
                let c = Arc::new(load()?);
                self.lock().stats.misses += 1;
                if let Some(p) = self.path(key) {
                    // A cache that cannot be written only costs speed.
                    let _ = write_entry(&p, &c);
                }
                c
            }
        };
        self.remember(key, clip.clone());
        Ok(clip)
    }

    fn remember(&self, key: u64, clip: Arc<ClipFrames>) {
        if clip.bytes() > self.budget {
            return;
        }
        let mut m = self.lock();
        m.tick += 1;
        let tick = m.tick;
        m.bytes += clip.bytes();
        if let Some((old, _)) = m.entries.insert(key, (clip, tick)) {
            m.bytes -= old.bytes();
        }
        while m.bytes > self.budget {
            let Some((&oldest, _)) = m.entries.iter().min_by_key(|(_, (_, used))| *used) else { break };
            let (gone, _) = m.entries.remove(&oldest).expect("the key was just found");
            m.bytes -= gone.bytes();
        }
        m.stats.memory_bytes = m.bytes;
    }

    /// Drops the in-memory entries (the governor's cache clear); returns the bytes freed.
    pub fn clear_memory(&self) -> usize {
        let mut m = self.lock();
        let freed = m.bytes;
        m.entries.clear();
        m.bytes = 0;
        m.stats.memory_bytes = 0;
        freed
    }

    pub fn stats(&self) -> CacheStats {
        self.lock().stats
    }
}

fn read_entry(path: &Path) -> Option<ClipFrames> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < 12 || &bytes[..4] != MAGIC {
        return None;
    }
    let frames = u32::from_le_bytes(bytes[4..8].try_into().ok()?) as usize;
    let side = u32::from_le_bytes(bytes[8..12].try_into().ok()?) as usize;
    let data = bytes[12..].to_vec();
    // A short entry (a disk that filled up mid-write under another tool) is not trusted.
    (data.len() == frames * side * side * 3).then_some(ClipFrames { frames, side, data })
}

fn write_entry(path: &Path, clip: &ClipFrames) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(MAGIC)?;
    f.write_all(&(clip.frames as u32).to_le_bytes())?;
    f.write_all(&(clip.side as u32).to_le_bytes())?;
    f.write_all(&clip.data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip(v: u8) -> ClipFrames {
        ClipFrames { frames: 2, side: 4, data: vec![v; 2 * 4 * 4 * 3] }
    }

    #[test]
    fn second_read_comes_from_memory_then_disk_after_a_clear() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FrameCache::new(Some(dir.path()), 1 << 20).unwrap();
        let a = cache.get_or_load(7, || Ok(clip(1))).unwrap();
        let b = cache.get_or_load(7, || panic!("must not reload")).unwrap();
        assert_eq!(a, b);
        assert_eq!(cache.stats().memory_hits, 1);
        assert_eq!(cache.clear_memory(), 96);
        let c = cache.get_or_load(7, || panic!("must come from disk")).unwrap();
        assert_eq!(*c, clip(1));
        assert_eq!((cache.stats().disk_hits, cache.stats().misses), (1, 1));
        // A fresh cache over the same folder (the next run) finds it too.
        let again = FrameCache::new(Some(dir.path()), 0).unwrap();
        assert_eq!(*again.get_or_load(7, || panic!("must come from disk")).unwrap(), clip(1));
    }

    #[test]
    fn lru_stays_under_its_budget_dropping_the_least_recent() {
        let cache = FrameCache::new(None, 200).unwrap();
        cache.get_or_load(1, || Ok(clip(1))).unwrap();
        cache.get_or_load(2, || Ok(clip(2))).unwrap();
        cache.get_or_load(1, || panic!("1 is cached")).unwrap();
        cache.get_or_load(3, || Ok(clip(3))).unwrap();
        assert!(cache.stats().memory_bytes <= 200);
        cache.get_or_load(1, || panic!("1 was used most recently and stays")).unwrap();
        let mut reloaded = false;
        cache
            .get_or_load(2, || {
                reloaded = true;
                Ok(clip(2))
            })
            .unwrap();
        assert!(reloaded, "2 was the least recent and must have been dropped");
    }

    #[test]
    fn keys_change_with_the_file_and_the_settings() {
        let dir = tempfile::tempdir().unwrap();
        let v = dir.path().join("a.mp4");
        std::fs::write(&v, b"one").unwrap();
        let s = ClipSettings { max_frames: 8, frame_size: 64, quality_threshold: 0.0, face_scale: 1.3 };
        let k = FrameCache::key(&v, &s).unwrap();
        assert_ne!(k, FrameCache::key(&v, &ClipSettings { frame_size: 32, ..s }).unwrap());
        std::fs::write(&v, b"longer").unwrap();
        assert_ne!(k, FrameCache::key(&v, &s).unwrap());
        assert!(FrameCache::key(&dir.path().join("gone.mp4"), &s).unwrap_err().contains("gone.mp4"));
    }
}
