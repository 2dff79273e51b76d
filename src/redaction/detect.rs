//! The detectors: a regular expression finds candidates, a check keeps the real ones (a Luhn sum
//! for card numbers, ISO 13616's mod-97 for IBANs, an address parse for IPs, a digit count for
//! phone numbers), so a number that merely looks like one is left alone.

use std::net::{Ipv4Addr, Ipv6Addr};

use regex::Regex;

/// What a detector finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BuiltIn {
    Email,
    Card,
    Iban,
    NationalId,
    Ip,
    Phone,
}

impl BuiltIn {
    /// In the order they run: the most specific first, so a card number is never half-taken for
    /// a phone number.
    pub const ALL: [BuiltIn; 6] = [
        BuiltIn::Email,
        BuiltIn::Card,
        BuiltIn::Iban,
        BuiltIn::NationalId,
        BuiltIn::Ip,
        BuiltIn::Phone,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BuiltIn::Email => "email",
            BuiltIn::Card => "card",
            BuiltIn::Iban => "iban",
            BuiltIn::NationalId => "national_id",
            BuiltIn::Ip => "ip",
            BuiltIn::Phone => "phone",
        }
    }

    fn pattern(self) -> &'static str {
        match self {
            BuiltIn::Email => r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
            // Runs of digit groups; `find` picks the Luhn-valid card numbers out of each run.
            BuiltIn::Card => r"\b\d+(?:[ -]\d+)*\b",
            BuiltIn::Iban => r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b",
            // US social security numbers and UK national insurance numbers.
            BuiltIn::NationalId => {
                r"\b(?:\d{3}-\d{2}-\d{4}|[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D])\b"
            }
            BuiltIn::Ip => {
                r"\b(?:\d{1,3}\.){3}\d{1,3}\b|(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{1,4})*"
            }
            BuiltIn::Phone => {
                r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,5}){1,5}"
            }
        }
    }

    /// Whether a candidate the pattern found is the real thing.
    fn holds(self, candidate: &str) -> bool {
        let digits = || candidate.chars().filter(char::is_ascii_digit);
        match self {
            BuiltIn::Card => luhn(&digits().collect::<String>()),
            BuiltIn::Iban => iban_checks(candidate),
            BuiltIn::Ip => {
                candidate.parse::<Ipv4Addr>().is_ok() || candidate.parse::<Ipv6Addr>().is_ok()
            }
            BuiltIn::Phone => (9..=15).contains(&digits().count()),
            BuiltIn::Email | BuiltIn::NationalId => true,
        }
    }
}

/// A detector ready to run: a built-in one, or a custom pattern from config.
#[derive(Debug, Clone)]
pub struct Detector {
    /// Names the kind in placeholders (`[EMAIL_1]`) and counts.
    pub kind: String,
    regex: Regex,
    check: Option<BuiltIn>,
}

impl Detector {
    pub fn built_in(which: BuiltIn) -> Self {
        Self {
            kind: which.name().to_string(),
            // The patterns are constants, exercised by the tests below.
            regex: Regex::new(which.pattern()).unwrap_or_else(|_| never_matches()),
            check: Some(which),
        }
    }

    /// A custom detector; the pattern is checked when the config is loaded.
    pub fn custom(kind: &str, pattern: &str) -> Result<Self, String> {
        let regex = regex::RegexBuilder::new(pattern)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| format!("pattern of `{kind}`: {e}"))?;
        Ok(Self {
            kind: kind.to_string(),
            regex,
            check: None,
        })
    }

    /// The spans of `text` this detector finds, in order.
    pub fn find(&self, text: &str) -> Vec<(usize, usize)> {
        let candidates = self.regex.find_iter(text);
        match self.check {
            Some(BuiltIn::Card) => candidates
                .flat_map(|m| cards_in_run(m.as_str(), m.start()))
                .collect(),
            Some(check) => candidates
                .filter(|m| check.holds(m.as_str()))
                .map(|m| (m.start(), m.end()))
                .collect(),
            None => candidates.map(|m| (m.start(), m.end())).collect(),
        }
    }
}

/// The card numbers in a run of digit groups (`+44 20 7946 0958 4111 1111 1111 1111` holds a
/// phone number, then a card): windows of whole groups holding 13 to 19 digits with a valid Luhn
/// sum, the longest first from each group, left to right.
fn cards_in_run(run: &str, offset: usize) -> Vec<(usize, usize)> {
    let mut groups = Vec::new();
    let mut start = None;
    for (i, c) in run.char_indices() {
        match (c.is_ascii_digit(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                groups.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        groups.push((s, run.len()));
    }
    let mut found = Vec::new();
    let mut i = 0;
    while i < groups.len() {
        // Only windows of at most 19 digits can be cards: the search is linear in the run, so a
        // prompt of thousands of digit groups costs no more than reading it.
        let mut digits = String::with_capacity(19);
        let mut window = None;
        for (j, &(s, e)) in groups.iter().enumerate().skip(i) {
            digits.push_str(&run[s..e]);
            if digits.len() > 19 {
                break;
            }
            if luhn(&digits) {
                window = Some(j);
            }
        }
        match window {
            Some(j) => {
                found.push((offset + groups[i].0, offset + groups[j].1));
                i = j + 1;
            }
            None => i += 1,
        }
    }
    found
}

fn never_matches() -> Regex {
    // `[^\s\S]` matches no character at all; it always compiles.
    Regex::new(r"[^\s\S]").unwrap_or_else(|_| unreachable!("a constant pattern"))
}

/// The Luhn checksum of a 13 to 19 digit number.
fn luhn(digits: &str) -> bool {
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = (digits.bytes().rev().enumerate())
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// ISO 13616: move the first four characters to the end, letters to numbers (A = 10 …), and the
/// number mod 97 is 1.
fn iban_checks(candidate: &str) -> bool {
    let compact: String = candidate.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut remainder: u32 = 0;
    for c in tail.chars().chain(head.chars()) {
        let value = match c.to_digit(36) {
            Some(v) => v,
            None => return false,
        };
        let width = if value >= 10 { 100 } else { 10 };
        remainder = (remainder * width + value) % 97;
    }
    remainder == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finds(which: BuiltIn, text: &str) -> Vec<String> {
        (Detector::built_in(which).find(text).into_iter())
            .map(|(s, e)| text[s..e].to_string())
            .collect()
    }

    #[test]
    fn cards_need_a_valid_luhn_sum() {
        assert_eq!(
            finds(BuiltIn::Card, "pay with 4111 1111 1111 1111 now"),
            ["4111 1111 1111 1111"]
        );
        assert_eq!(
            finds(BuiltIn::Card, "card 5500-0000-0000-0004."),
            ["5500-0000-0000-0004"]
        );
        assert!(
            finds(BuiltIn::Card, "order 4111 1111 1111 1112").is_empty(),
            "bad checksum"
        );
        assert_eq!(
            finds(BuiltIn::Card, "call +44 20 7946 0958 4111 1111 1111 1111"),
            ["4111 1111 1111 1111"],
            "a card after a phone number"
        );
        // 20,000 groups in one run: every window start is tried, none past 19 digits.
        let long_run = "4111 1111 1111 1111 ".to_string() + &"12 ".repeat(20_000);
        assert_eq!(finds(BuiltIn::Card, &long_run)[0], "4111 1111 1111 1111");
        assert!(
            finds(BuiltIn::Card, "id 123456789012").is_empty(),
            "too short"
        );
    }

    #[test]
    fn ibans_need_a_valid_check() {
        assert_eq!(
            finds(BuiltIn::Iban, "to GB82 WEST 1234 5698 7654 32 please"),
            ["GB82 WEST 1234 5698 7654 32"]
        );
        assert_eq!(
            finds(BuiltIn::Iban, "DE89370400440532013000"),
            ["DE89370400440532013000"]
        );
        assert!(finds(BuiltIn::Iban, "GB82 WEST 1234 5698 7654 33").is_empty());
    }

    #[test]
    fn emails_ips_national_ids_and_phones() {
        assert_eq!(
            finds(BuiltIn::Email, "mail jane.doe+x@mail.example.co.uk."),
            ["jane.doe+x@mail.example.co.uk"]
        );
        assert_eq!(
            finds(BuiltIn::Ip, "from 192.168.1.20 and 2001:db8::1"),
            ["192.168.1.20", "2001:db8::1"]
        );
        assert!(finds(BuiltIn::Ip, "version 999.1.1.1").is_empty());
        assert_eq!(
            finds(BuiltIn::NationalId, "SSN 078-05-1120, NINO AB 12 34 56 C"),
            ["078-05-1120", "AB 12 34 56 C"]
        );
        assert_eq!(
            finds(BuiltIn::Phone, "call +44 20 7946 0958 or (555) 123-4567"),
            ["+44 20 7946 0958", "(555) 123-4567"]
        );
        assert!(
            finds(BuiltIn::Phone, "on 2026-12-01 at 10.30").is_empty(),
            "dates are not phones"
        );
    }

    #[test]
    fn custom_patterns_compile_or_say_why() {
        let d = Detector::custom("ticket", r"TCK-\d{6}").unwrap();
        assert_eq!(d.find("see TCK-123456").len(), 1);
        assert!(Detector::custom("bad", "(").unwrap_err().contains("bad"));
    }
}
