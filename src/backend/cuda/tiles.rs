//! The tile table of the tensor-core kernels: which block tile (kernels/mma.cuh
//! `Tile<WARPS_M, WARPS_N>`) a GEMM-shaped problem gets, and how the weight gradient
//! splits its pixel reduction.
//!
//! The choices are heuristics from the kernels' shape, not from timings: a side of at
//! most 64 (ResNet's 64-channel layers) takes the half-width tile rather than computing
//! zeros in half of a 128-wide one, and a forward or input-gradient grid that would not
//! fill every multiprocessor once also halves its tile to double its blocks (the weight
//! gradient fills the device by splitting its reduction instead). Refining this table by timing each
//! layer once on a GPU is owed to measurements there (docs/BENCHMARKS.md).

use cudarc::driver::LaunchConfig;

/// A block tile: BM × BN of C per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TileShape {
    /// 8 warps, 2 blocks per multiprocessor.
    M128N128,
    /// 4 warps.
    M128N64,
    /// 4 warps.
    M64N128,
}

impl TileShape {
    pub fn bm(self) -> usize {
        match self {
            TileShape::M64N128 => 64,
            _ => 128,
        }
    }
    pub fn bn(self) -> usize {
        match self {
            TileShape::M128N64 => 64,
            _ => 128,
        }
    }
    pub fn threads(self) -> u32 {
        (self.bm() * self.bn() / (64 * 32) * 32) as u32
    }
    /// 3 stages of (BM + BN) rows of 32 halves.
    pub fn smem_bytes(self) -> u32 {
        (3 * (self.bm() + self.bn()) * 32 * 2) as u32
    }
    /// The suffix of the kernel entry points built with this tile, e.g. `128x64`.
    pub fn suffix(self) -> &'static str {
        match self {
            TileShape::M128N128 => "128x128",
            TileShape::M128N64 => "128x64",
            TileShape::M64N128 => "64x128",
        }
    }
    /// Blocks of this tile that one multiprocessor holds at once (registers ≈ 128 per
    /// thread and shared memory both allow 2 of the 8-warp tile, 4 of the others).
    fn blocks_per_sm(self) -> usize {
        match self {
            TileShape::M128N128 => 2,
            _ => 4,
        }
    }
    /// The launch of this tile over C [m, n], `z` blocks deep (split-K).
    pub fn launch(self, m: usize, n: usize, z: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (n.div_ceil(self.bn()) as u32, m.div_ceil(self.bm()) as u32, z as u32),
            block_dim: (self.threads(), 1, 1),
            shared_mem_bytes: self.smem_bytes(),
        }
    }
    /// Output tiles of an m × n problem.
    pub fn tiles(self, m: usize, n: usize) -> usize {
        m.div_ceil(self.bm()) * n.div_ceil(self.bn())
    }
}

/// The tile for C [m, n] when the narrow one has BN = 64 (forward, input gradient, GEMM):
/// n ≤ 64, or a 128×128 grid smaller than one wave.
pub fn pick_n64(m: usize, n: usize, sm_count: usize) -> TileShape {
    let wide = TileShape::M128N128;
    if n <= 64 || wide.tiles(m, n) < sm_count { TileShape::M128N64 } else { wide }
}

/// The weight gradient's tile for C [m, n] (m the output channels): BM = 64 when m ≤ 64.
/// Its split-K fills the device, so grid size does not enter.
pub fn pick_m64(m: usize) -> TileShape {
    if m <= 64 { TileShape::M64N128 } else { TileShape::M128N128 }
}

/// Split-K of the weight gradient: `splits` blocks share each output tile, each over
/// `tiles_per_split` reduction tiles of 32 pixels, and write FP32 partials that one
/// kernel then sums in split order (deterministic: the split count depends only on the
/// shape and the device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WgradPlan {
    pub tile: TileShape,
    pub splits: usize,
    pub tiles_per_split: usize,
}

impl WgradPlan {
    /// Whether the plan is one the weight-gradient kernel can run over `pixels`: a tile
    /// it is built with (BN = 128), and splits that each start inside the reduction and
    /// together cover every reduction tile exactly once.
    pub fn covers(&self, pixels: usize) -> bool {
        let k_tiles = reduction_tiles(pixels);
        self.tile != TileShape::M128N64
            && self.splits >= 1
            && self.tiles_per_split >= 1
            && (self.splits - 1) * self.tiles_per_split < k_tiles
            && self.splits * self.tiles_per_split >= k_tiles
    }
}

/// Pixels per reduction tile of the weight gradient (the K step of kernels/mma.cuh).
const REDUCTION_TILE: usize = 32;

/// Reduction tiles over `pixels` (at least one, so an empty problem still has a plan).
pub fn reduction_tiles(pixels: usize) -> usize {
    pixels.div_ceil(REDUCTION_TILE).max(1)
}

/// Fewest reduction tiles a split gets: fewer would spend more time filling and draining
/// the 3-stage pipeline and writing partials than multiplying.
const MIN_TILES_PER_SPLIT: usize = 8;
/// Waves of blocks the split aims for, so the last wave's tail is a small part.
const WAVES: usize = 2;

/// The plan for dw [m = K, n = R·S·C] reduced over `pixels` = N·P·Q, with at most
/// `max_workspace` bytes of partial sums.
pub fn plan_wgrad(m: usize, n: usize, pixels: usize, sm_count: usize, max_workspace: usize) -> WgradPlan {
    let tile = pick_m64(m);
    let k_tiles = reduction_tiles(pixels);
    let out_tiles = tile.tiles(m, n);
    let target = WAVES * tile.blocks_per_sm() * sm_count;
    let by_occupancy = target.div_ceil(out_tiles);
    let by_length = (k_tiles / MIN_TILES_PER_SPLIT).max(1);
    let by_memory = (max_workspace / (m * n * 4).max(1)).max(1);
    let wanted = by_occupancy.min(by_length).min(by_memory).max(1);
    let tiles_per_split = k_tiles.div_ceil(wanted);
    WgradPlan { tile, splits: k_tiles.div_ceil(tiles_per_split), tiles_per_split }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_constants_follow_the_kernels() {
        assert_eq!(TileShape::M128N128.threads(), 256);
        assert_eq!(TileShape::M128N64.threads(), 128);
        assert_eq!(TileShape::M64N128.threads(), 128);
        assert_eq!(TileShape::M128N128.smem_bytes(), 48 * 1024);
        assert_eq!(TileShape::M128N64.smem_bytes(), 36 * 1024);
    }

    #[test]
    fn narrow_sides_take_narrow_tiles() {
        // ResNet layer 1 at 512 frames of 56²: 64 output channels.
        assert_eq!(pick_n64(512 * 56 * 56, 64, 132), TileShape::M128N64);
        assert_eq!(pick_n64(512 * 56 * 56, 256, 132), TileShape::M128N128);
        // Small grids halve the tile to fill the device.
        assert_eq!(pick_n64(2 * 7 * 7, 512, 132), TileShape::M128N64);
        assert_eq!(pick_m64(64), TileShape::M64N128);
        assert_eq!(pick_m64(128), TileShape::M128N128);
    }

    #[test]
    fn wgrad_splits_cover_the_reduction_exactly_once() {
        for &(m, n, pixels) in
            &[(64, 576, 512 * 56 * 56), (512, 4608, 512 * 49), (64, 392 * 8 / 8, 2 * 112 * 112), (8, 8, 1)]
        {
            let plan = plan_wgrad(m, n, pixels, 132, 256 << 20);
            assert!(plan.covers(pixels), "{plan:?} over {pixels} pixels");
        }
        // What `covers` refuses: a split past the end, a short plan, the narrow tile.
        let plan = WgradPlan { tile: TileShape::M128N128, splits: 4, tiles_per_split: 2 };
        assert!(plan.covers(7 * 32) && plan.covers(8 * 32));
        assert!(!plan.covers(6 * 32), "the fourth split would start past the end");
        assert!(!plan.covers(9 * 32), "a tile left out");
        assert!(!WgradPlan { tile: TileShape::M128N64, ..plan }.covers(8 * 32));
        // Layer 1's 3×3 at batch 512: few output tiles, a long reduction → many splits.
        let deep = plan_wgrad(64, 576, 512 * 56 * 56, 132, 256 << 20);
        assert!(deep.splits > 50, "{deep:?}");
        // A workspace cap bounds the splits.
        let capped = plan_wgrad(64, 576, 512 * 56 * 56, 132, 64 * 576 * 4 * 3);
        assert!(capped.splits <= 3, "{capped:?}");
        // A reduction of one tile is never split.
        assert_eq!(plan_wgrad(8, 8, 1, 132, 1 << 30).splits, 1);
    }
}
