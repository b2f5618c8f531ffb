//! Where a sliding window (a convolution's filter, a pooling window) lands on its input
//! along one axis, so that the ops copy or compare whole runs of cells instead of testing
//! every tap against the padding.

use std::ops::Range;

/// The taps of one window that land inside the input, along one axis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taps {
    /// The window's taps, 0..window, less those in the padding (possibly empty).
    pub taps: Range<usize>,
    /// The input position of the first tap in `taps`.
    pub first: usize,
}

impl Taps {
    /// The taps of the window of output position `out`: it starts at `out·stride − pad`
    /// and spans `window` cells of an axis of `extent` input cells.
    pub fn of(out: usize, stride: usize, pad: usize, window: usize, extent: usize) -> Taps {
        let start = (out * stride) as isize - pad as isize;
        let lo = (-start).clamp(0, window as isize);
        let hi = (extent as isize - start).clamp(lo, window as isize);
        Taps { taps: lo as usize..hi as usize, first: (start + lo).max(0) as usize }
    }

    /// The input positions the taps cover.
    pub fn inputs(&self) -> Range<usize> {
        self.first..self.first + self.taps.len()
    }
}

#[cfg(test)]
mod tests {
    use super::Taps;

    #[test]
    fn taps_drop_the_padding_on_either_side() {
        // 3 taps, stride 2, pad 1 over 5 cells: windows start at -1, 1, 3.
        assert_eq!(Taps::of(0, 2, 1, 3, 5), Taps { taps: 1..3, first: 0 });
        assert_eq!(Taps::of(1, 2, 1, 3, 5), Taps { taps: 0..3, first: 1 });
        assert_eq!(Taps::of(2, 2, 1, 3, 5), Taps { taps: 0..2, first: 3 });
        // A window wholly in the padding has no taps.
        assert!(Taps::of(0, 1, 4, 3, 5).taps.is_empty());
        assert!(Taps::of(9, 1, 0, 3, 5).taps.is_empty());
    }
}
