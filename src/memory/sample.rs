//! One reading of memory: the GPU as NVML sees it (every process on the card) and the
//! host as the OS sees it.

use crate::config::format_bytes;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct DeviceMemory {
    pub used: u64,
    pub total: u64,
    /// Percent of time a kernel ran over the last sample period, when known.
    pub utilisation: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct HostMemory {
    /// Total minus what the OS could give a new allocation (MemAvailable).
    pub used: u64,
    pub total: u64,
    /// This process's resident set.
    pub process_rss: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct MemorySample {
    /// Seconds since monitoring started.
    pub t: f64,
    pub gpu: Option<DeviceMemory>,
    pub host: HostMemory,
}

fn fraction(used: u64, total: u64) -> f64 {
    if total == 0 { 0.0 } else { used as f64 / total as f64 }
}

impl DeviceMemory {
    pub fn fraction(&self) -> f64 {
        fraction(self.used, self.total)
    }
}

impl HostMemory {
    pub fn fraction(&self) -> f64 {
        fraction(self.used, self.total)
    }
}

/// "10.20/12.00 GiB (85%)".
pub fn usage(used: u64, total: u64) -> String {
    format!("{}/{} ({:.0}%)", format_bytes(used), format_bytes(total), 100.0 * fraction(used, total))
}
