//! Byte sizes as users write them: "12GiB", "11.5GB", "9000MiB", "auto".

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The pool's hard cap on device memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VramBudget {
    /// Derived at start-up from the card's total memory and `gpu_threshold`.
    Auto,
    Bytes(u64),
}

const UNITS: &[(&str, u64)] = &[
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("B", 1),
];

/// Parses "12GiB", "11.5 GB", "4096" (bytes). Units are case-sensitive on purpose:
/// "GB" and "GiB" differ by 7%, and a VRAM budget should not guess.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (number, scale) = UNITS
        .iter()
        .find_map(|&(unit, scale)| t.strip_suffix(unit).map(|n| (n.trim(), scale)))
        .unwrap_or((t, 1));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (expected e.g. \"12GiB\", \"11.5GB\", \"9000MiB\")"))?;
    if !value.is_finite() || value <= 0.0 {
        return Err(format!("`{text}` must be a positive size"));
    }
    Ok((value * scale as f64).round() as u64)
}

/// Formats bytes with a binary unit, e.g. "11.50 GiB".
pub fn format_bytes(bytes: u64) -> String {
    const STEPS: &[(&str, u64)] = &[("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    STEPS
        .iter()
        .find(|&&(_, scale)| bytes >= scale)
        .map(|&(unit, scale)| format!("{:.2} {unit}", bytes as f64 / scale as f64))
        .unwrap_or_else(|| format!("{bytes} B"))
}

impl FromStr for VramBudget {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text.trim().eq_ignore_ascii_case("auto") {
            Ok(VramBudget::Auto)
        } else {
            parse_bytes(text).map(VramBudget::Bytes)
        }
    }
}

impl fmt::Display for VramBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VramBudget::Auto => f.write_str("auto"),
            VramBudget::Bytes(b) if b % (1 << 30) == 0 => write!(f, "{}GiB", b >> 30),
            VramBudget::Bytes(b) if b % (1 << 20) == 0 => write!(f, "{}MiB", b >> 20),
            VramBudget::Bytes(b) => write!(f, "{b}B"),
        }
    }
}

impl Serialize for VramBudget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A size as text (`"12GiB"`, `"auto"`) or a bare number of bytes (`vram_budget =
/// 11534336`, and `--vram-budget 11534336`, which reaches TOML as an integer).
impl<'de> Deserialize<'de> for VramBudget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Text(String),
            Bytes(i64),
        }
        match Written::deserialize(d)? {
            Written::Text(text) => text.parse().map_err(serde::de::Error::custom),
            Written::Bytes(b) if b > 0 => Ok(VramBudget::Bytes(b as u64)),
            Written::Bytes(b) => Err(serde::de::Error::custom(format!("`{b}` must be a positive size"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_and_decimal_units() {
        assert_eq!(parse_bytes("12GiB"), Ok(12 << 30));
        assert_eq!(parse_bytes("1.5 KiB"), Ok(1536));
        assert_eq!(parse_bytes("11.5GB"), Ok(11_500_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!("auto".parse(), Ok(VramBudget::Auto));
    }

    #[test]
    fn rejects_nonsense_and_non_positive() {
        assert!(parse_bytes("twelve GiB").is_err());
        assert!(parse_bytes("0GiB").is_err());
        assert!(parse_bytes("-3MiB").is_err());
        assert!(parse_bytes("12gb").is_err());
    }

    #[test]
    fn display_round_trips() {
        for text in ["12GiB", "9000MiB", "auto", "1234B"] {
            let b: VramBudget = text.parse().unwrap();
            assert_eq!(b.to_string(), text);
        }
    }

    #[test]
    fn a_bare_number_is_bytes() {
        let b: VramBudget =
            toml::from_str::<toml::Value>("v = 11534336").unwrap()["v"].clone().try_into().unwrap();
        assert_eq!(b, VramBudget::Bytes(11_534_336));
        let zero: Result<VramBudget, _> =
            toml::from_str::<toml::Value>("v = 0").unwrap()["v"].clone().try_into();
        assert!(zero.unwrap_err().to_string().contains("must be a positive size"));
    }

    #[test]
    fn formats_human_sizes() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(3 << 29), "1.50 GiB");
    }
}
