//! Loader throughput in clips/s, with the frames as stored (what `[gpu] preprocess =
//! "gpu"` hands the step) and with the CPU twin run on the loader threads (`"cpu"`).
//! Yardstick: the stored mode is the loader's ceiling (rendering the synthetic clips is
//! all it does); the gap to it is what CPU preprocessing costs the loader threads.
//!
//! `cargo bench --bench loader`

use std::sync::Arc;
use std::time::Instant;

use dfengine::data::loader::{EpochLoader, LoaderControl, LoaderSettings, Workers};
use dfengine::data::sources::{ClipSource, SyntheticSource};
use dfengine::data::synth::{SynthParams, clip_set};

fn main() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("loader throughput, {threads} worker threads, one epoch each");
    // (frames per clip, stored side, input side, clips): the quick demo; default.toml's shapes.
    for (frames, size, input, clips) in [(4, 40, 32, 400), (16, 256, 224, 48)] {
        let params = SynthParams { seed: 1, size, frames, difficulty: 0.3 };
        let source: Arc<dyn ClipSource> = Arc::new(SyntheticSource::new(clip_set(clips), params));
        let s = LoaderSettings {
            batch_size: 8,
            num_workers: threads,
            prefetch_factor: 2,
            input_size: input,
            seed: 0,
            train: true,
            max_bad_fraction: 0.0,
        };
        let mut rates = Vec::new();
        for cpu in [false, true] {
            let t0 = Instant::now();
            let n: usize = EpochLoader::start_on(
                Workers::new(threads),
                source.clone(),
                s,
                0,
                0,
                LoaderControl::new(cpu),
            )
            .map(|b| b.unwrap().clips.len())
            .sum();
            rates.push(n as f64 / t0.elapsed().as_secs_f64());
        }
        println!(
            "  {frames} frames {size}² → {input}²: stored {:.0} clips/s, CPU-preprocessed {:.0} clips/s ({:.0}% of the stored ceiling)",
            rates[0],
            rates[1],
            100.0 * rates[1] / rates[0]
        );
    }
}
