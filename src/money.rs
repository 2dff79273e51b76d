//! Money and tokens: a model's price, a call's usage, and the exact integer arithmetic between
//! them (micro-dollars, never floats). A leaf module: providers report [`Usage`], the catalog holds
//! [`Price`]s, spend books their product, and none of them depends on another for it.

use serde::{Deserialize, Serialize};

/// Tokens as reported by the provider (never estimated here).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// Catalog prices in micro-dollars per million tokens ($0.15 / Mtok is 150_000).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    pub input_micros_per_mtok: u64,
    pub output_micros_per_mtok: u64,
}

impl Price {
    /// Cost of one call in micro-dollars, rounded half up once per call.
    pub fn cost_micros(&self, usage: Usage) -> i64 {
        let input = u128::from(usage.input_tokens) * u128::from(self.input_micros_per_mtok);
        let output = u128::from(usage.output_tokens) * u128::from(self.output_micros_per_mtok);
        let micros = input.saturating_add(output).saturating_add(500_000) / 1_000_000;
        i64::try_from(micros).unwrap_or(i64::MAX)
    }
}

/// Micro-dollars as `$d.dddddd`, exactly.
pub fn usd(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    format!("{sign}${}.{:06}", m / 1_000_000, m % 1_000_000)
}

/// Parses a dollar amount (`10`, `0.25`, `$3.50`) into micro-dollars without floats.
pub fn parse_usd(text: &str) -> Result<i64, String> {
    let t = text.trim().trim_start_matches('$');
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !(frac.is_empty() || digits(frac)) || frac.len() > 6 {
        return Err(format!(
            "`{text}` is not a dollar amount with at most 6 decimals"
        ));
    }
    let whole: i64 = whole
        .parse()
        .map_err(|_| format!("`{text}` is too large"))?;
    let frac: i64 = format!("{frac:0<6}")
        .parse()
        .map_err(|_| format!("`{text}` is not a dollar amount"))?;
    whole
        .checked_mul(1_000_000)
        .and_then(|w| w.checked_add(frac))
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_exact_integer_micros() {
        let price = Price {
            input_micros_per_mtok: 150_000,
            output_micros_per_mtok: 600_000,
        };
        let usage = Usage {
            input_tokens: 1_000,
            output_tokens: 500,
        };
        // 1000 * 0.15 $/M + 500 * 0.6 $/M = 150 + 300 micro-dollars
        assert_eq!(price.cost_micros(usage), 450);
        // 7 tokens at $0.15/M is 1.05 micros: rounds to 1; 10 tokens is 1.5: rounds up to 2
        let small = |n| Usage {
            input_tokens: n,
            output_tokens: 0,
        };
        assert_eq!(price.cost_micros(small(7)), 1);
        assert_eq!(price.cost_micros(small(10)), 2);
        assert_eq!(price.cost_micros(Usage::default()), 0);
    }

    #[test]
    fn huge_usage_does_not_overflow() {
        let price = Price {
            input_micros_per_mtok: u64::MAX,
            output_micros_per_mtok: u64::MAX,
        };
        let usage = Usage {
            input_tokens: u64::MAX,
            output_tokens: u64::MAX,
        };
        assert_eq!(price.cost_micros(usage), i64::MAX);
    }

    #[test]
    fn dollars_round_trip_exactly() {
        assert_eq!(parse_usd("10"), Ok(10_000_000));
        assert_eq!(parse_usd("$0.25"), Ok(250_000));
        assert_eq!(parse_usd("1.000001"), Ok(1_000_001));
        assert!(parse_usd("1.0000001").is_err());
        assert!(parse_usd("-1").is_err() && parse_usd("1e3").is_err() && parse_usd("").is_err());
        assert_eq!(usd(1_234_567), "$1.234567");
        assert_eq!(usd(-5), "-$0.000005");
    }
}
