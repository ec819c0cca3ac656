//! Kubernetes `resource.Quantity`: the fixed-point numbers used for CPU, memory and every
//! other resource amount. Parsing, comparison, addition and the canonical string form follow
//! upstream `k8s.io/apimachinery/pkg/api/resource` so that clients see the same values and the
//! same strings as from a real API server. Arithmetic is decimal and exact; no floats.
//!
//! Deliberate differences from upstream, all outside what real manifests use:
//! - the mantissa is an `i128` limited to 37 significant digits (upstream is unbounded);
//!   longer decimal inputs are rejected with [`QuantityError::TooPrecise`] and sums that
//!   would need more digits return `None`;
//! - upstream cannot print a binary quantity of 1024 Ei or more (it drops the suffix and so
//!   the magnitude); here such values keep the `Ei` suffix with a larger number.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[cfg(test)]
mod tests;

/// Number of significant decimal digits a [`Quantity`] mantissa may hold. 37 rather than the
/// 38 an `i128` could hold, so that aligning one operand of an addition to the other either
/// fits or proves the result unrepresentable (see [`Quantity::checked_add`]).
pub const MAX_DIGITS: u32 = 37;

/// Exclusive bound on the magnitude of a mantissa: 10^[`MAX_DIGITS`].
const MANTISSA_LIMIT: i128 = 10_i128.pow(MAX_DIGITS);

/// Parsing rounds every non-zero value away from zero to a multiple of 10^-9 (one nano), as
/// upstream does: asking for a tiny amount of a resource should still get some of it.
const NANO_SCALE: i64 = -9;

/// Upstream caps binary SI quantities at the largest `int64`; decimal ones are not capped.
const BINARY_MAX: i128 = i64::MAX as i128;

/// Decimal SI suffixes and their powers of ten, in the order upstream lists them.
const DECIMAL_SUFFIXES: [(&str, i64); 10] = [
    ("n", -9),
    ("u", -6),
    ("m", -3),
    ("", 0),
    ("k", 3),
    ("M", 6),
    ("G", 9),
    ("T", 12),
    ("P", 15),
    ("E", 18),
];

/// Binary SI suffixes and their powers of two.
const BINARY_SUFFIXES: [(&str, u32); 6] = [
    ("Ki", 10),
    ("Mi", 20),
    ("Gi", 30),
    ("Ti", 40),
    ("Pi", 50),
    ("Ei", 60),
];

/// Why a string is not a quantity. The first three messages are upstream's, word for word,
/// because they reach clients in 422 responses and tools match on them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuantityError {
    /// The text is not a number followed by a suffix (empty, stray characters, whitespace).
    #[error(
        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    )]
    FormatWrong,
    /// The number part has no digits in a case where upstream has to read it as a number
    /// (for example `"e-10"` or `"Pi"`).
    #[error("unable to parse numeric part of quantity")]
    Numeric,
    /// The suffix is none of the SI suffixes and not a valid decimal exponent.
    #[error("unable to parse quantity's suffix")]
    Suffix,
    /// The value needs more significant digits than EdgeSite stores exactly.
    #[error(
        "quantity has more than 37 significant digits after rounding to nano precision; \
         use fewer digits or a larger suffix"
    )]
    TooPrecise,
}

/// How a quantity is written back out. Parsing remembers the family of the suffix the value
/// was written with, so that `"1Gi"` stays binary and `"1e3"` stays an exponent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Format {
    /// `12e6`: a plain number with a power-of-ten exponent that is a multiple of three.
    DecimalExponent,
    /// `12Mi`: powers of 1024 (`Ki` … `Ei`).
    BinarySI,
    /// `12M`: powers of 1000 (`n` … `E`); the format of suffix-less numbers.
    #[default]
    DecimalSI,
}

/// A Kubernetes resource quantity: the exact value `mantissa × 10^scale` plus the [`Format`]
/// used to print it.
///
/// Equality, ordering and hashing look at the value only, so `"1Gi" == "1073741824"` and
/// `"1" == "1000m"`. The value is kept normalised (no trailing zeros in the mantissa, zero
/// has scale 0) so that the derived-looking field comparison is value comparison.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quantity {
    /// Significand, `|mantissa| < 10^37`, without trailing zeros.
    mantissa: i128,
    /// Power of ten applied to the mantissa; `i64` so that no exponent a client can write
    /// overflows it.
    scale: i64,
    /// How [`fmt::Display`] writes the value.
    format: Format,
}

impl Quantity {
    /// A zero quantity in [`Format::DecimalSI`], the value of an absent quantity.
    pub const ZERO: Quantity = Quantity {
        mantissa: 0,
        scale: 0,
        format: Format::DecimalSI,
    };

    /// `value` units in the given format, like upstream `NewQuantity`.
    pub fn new(value: i64, format: Format) -> Self {
        Self::from_parts(value.into(), 0, format)
    }

    /// `value / 1000` units in the given format, like upstream `NewMilliQuantity`; the
    /// scheduler and kubelet keep CPU in millicores.
    pub fn new_milli(value: i64, format: Format) -> Self {
        Self::from_parts(value.into(), -3, format)
    }

    /// `value × 10^scale` in [`Format::DecimalSI`], like upstream `NewScaledQuantity`. The value
    /// is kept exactly, even below nano precision; only parsing rounds.
    pub fn new_scaled(value: i64, scale: i32) -> Self {
        Self::from_parts(value.into(), scale.into(), Format::DecimalSI)
    }

    /// Builds a normalised quantity; callers guarantee `|mantissa| < 10^37` or at least that
    /// it shrinks below that once trailing zeros are removed (true for any `i64`).
    fn from_parts(mantissa: i128, scale: i64, format: Format) -> Self {
        let (mantissa, scale) = normalize(mantissa, scale);
        Quantity {
            mantissa,
            scale,
            format,
        }
    }

    /// The format [`fmt::Display`] uses.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The same value printed in another format.
    pub fn with_format(self, format: Format) -> Self {
        Quantity { format, ..self }
    }

    /// Whether the value is zero (of any format).
    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }

    /// -1, 0 or 1 by the sign of the value.
    pub fn signum(&self) -> i32 {
        self.mantissa.signum() as i32
    }

    /// `self + other`, or `None` when the exact sum needs more than [`MAX_DIGITS`] digits.
    ///
    /// As upstream `Add`, the result keeps `self`'s format unless `self` is zero, in which
    /// case it takes `other`'s: adding to an empty total must not turn `"1Gi"` into bytes.
    pub fn checked_add(&self, other: &Quantity) -> Option<Quantity> {
        if self.is_zero() {
            return Some(*other);
        }
        if other.is_zero() {
            return Some(*self);
        }
        let scale = self.scale.min(other.scale);
        let a = self.mantissa.checked_mul(pow10(self.scale - scale)?)?;
        let b = other.mantissa.checked_mul(pow10(other.scale - scale)?)?;
        // An operand that overflowed while being aligned is at least 1.7e38 units of the
        // smaller scale, while the other is below 1e37 of them, so the sum could not have
        // fitted in 37 digits either: returning None above loses nothing representable.
        let (mantissa, scale) = normalize(a.checked_add(b)?, scale);
        if mantissa.abs() >= MANTISSA_LIMIT {
            return None;
        }
        Some(Quantity {
            mantissa,
            scale,
            format: self.format,
        })
    }

    /// `self - other`, or `None` when the exact difference does not fit; formats as in
    /// [`Quantity::checked_add`].
    pub fn checked_sub(&self, other: &Quantity) -> Option<Quantity> {
        self.checked_add(&-*other)
    }

    /// The value rounded to an integer away from zero, as upstream `Value` (so `"100m"` is 1
    /// and `"-1.5"` is -2). Upstream silently overflows past the `i64` range; this saturates
    /// at `i64::MIN`/`i64::MAX` instead, which keeps comparisons against limits meaningful.
    pub fn value(&self) -> i64 {
        self.scaled_value(0)
    }

    /// The value in thousandths rounded away from zero, as upstream `MilliValue` (so `"1n"`
    /// is 1 milli); saturates like [`Quantity::value`]. This is how CPU is accounted.
    pub fn milli_value(&self) -> i64 {
        self.scaled_value(-3)
    }

    /// The value in units of `10^scale`, rounded away from zero and saturated to `i64`, as
    /// upstream `ScaledValue` (`scaled_value(-3)` is [`Quantity::milli_value`]).
    pub fn scaled_value(&self, scale: i32) -> i64 {
        if self.mantissa == 0 {
            return 0;
        }
        let shift = self.scale - i64::from(scale);
        let result = if shift >= 0 {
            match pow10(shift).and_then(|p| self.mantissa.checked_mul(p)) {
                Some(v) => v,
                None => return saturate(self.mantissa.signum()),
            }
        } else {
            match pow10(-shift) {
                Some(p) => {
                    let quotient = self.mantissa / p;
                    if self.mantissa % p == 0 {
                        quotient
                    } else {
                        quotient + self.mantissa.signum()
                    }
                }
                // 10^-shift exceeds every mantissa: a non-zero fraction of one unit.
                None => self.mantissa.signum(),
            }
        };
        i64::try_from(result).unwrap_or_else(|_| saturate(result.signum()))
    }

    /// Order of the magnitudes `|self|` and `|other|`.
    fn cmp_magnitude(&self, other: &Quantity) -> Ordering {
        let (a, b) = (self.mantissa.unsigned_abs(), other.mantissa.unsigned_abs());
        match (a, b) {
            (0, 0) => return Ordering::Equal,
            (0, _) => return Ordering::Less,
            (_, 0) => return Ordering::Greater,
            _ => {}
        }
        // Compare the position of the leading digit first: it decides unless both numbers
        // start at the same power of ten, and then aligning them cannot overflow.
        let lead_a = i64::from(a.ilog10()) + self.scale;
        let lead_b = i64::from(b.ilog10()) + other.scale;
        lead_a.cmp(&lead_b).then_with(|| {
            if self.scale >= other.scale {
                (a * 10_u128.pow((self.scale - other.scale) as u32)).cmp(&b)
            } else {
                a.cmp(&(b * 10_u128.pow((other.scale - self.scale) as u32)))
            }
        })
    }

    /// The decimal digits and power-of-ten exponent (a multiple of three) of the canonical
    /// decimal form, as upstream `AsCanonicalBytes`: `1.5` is `("1500", -3)`.
    fn canonical_decimal(&self) -> (String, i64) {
        let extra = self.scale.rem_euclid(3);
        let mut digits = self.mantissa.to_string();
        digits.extend(std::iter::repeat_n('0', extra as usize));
        (digits, self.scale - extra)
    }

    /// The integer value when [`Format::BinarySI`] can print it: upstream prints binary only
    /// for whole numbers of magnitude 1024 or more and falls back to decimal SI otherwise, so
    /// that `"0.5Gi"` is not rounded and `"512"` does not become `"0.5Ki"`.
    fn binary_integer(&self) -> Option<i128> {
        if self.scale < 0 {
            return None;
        }
        let value = self.mantissa.checked_mul(pow10(self.scale)?)?;
        (value.unsigned_abs() >= 1024).then_some(value)
    }
}

/// Removes trailing zeros from the mantissa into the scale; zero gets scale 0.
fn normalize(mut mantissa: i128, mut scale: i64) -> (i128, i64) {
    if mantissa == 0 {
        return (0, 0);
    }
    while mantissa % 10 == 0 {
        mantissa /= 10;
        scale += 1;
    }
    (mantissa, scale)
}

/// `10^exp` when it fits an `i128`.
fn pow10(exp: i64) -> Option<i128> {
    10_i128.checked_pow(u32::try_from(exp).ok()?)
}

/// The `i64` bound in the direction of `sign`.
fn saturate(sign: i128) -> i64 {
    if sign < 0 { i64::MIN } else { i64::MAX }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        // Normalisation makes the representation of a value unique.
        self.mantissa == other.mantissa && self.scale == other.scale
    }
}

impl Eq for Quantity {}

impl Hash for Quantity {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Consistent with `eq`: the format is not part of the value.
        self.mantissa.hash(state);
        self.scale.hash(state);
    }
}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        let (sa, sb) = (self.mantissa.signum(), other.mantissa.signum());
        if sa != sb {
            return sa.cmp(&sb);
        }
        let by_magnitude = self.cmp_magnitude(other);
        if sa < 0 {
            by_magnitude.reverse()
        } else {
            by_magnitude
        }
    }
}

impl std::ops::Neg for Quantity {
    type Output = Quantity;

    /// The opposite value in the same format; never overflows, the mantissa range is
    /// symmetric.
    fn neg(self) -> Quantity {
        Quantity {
            mantissa: -self.mantissa,
            ..self
        }
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;

    /// Parses like upstream `ParseQuantity`: `<sign><digits>.<digits><suffix>`, where either
    /// digit run may be empty, then rounds non-zero values away from zero to nano precision and
    /// caps binary SI values at 2^63-1. Whitespace is an error (see the serde impl for JSON).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let scanned = scan(s)?;
        let (multiplier, format) = interpret_suffix(scanned.suffix)?;

        if !scanned
            .int
            .iter()
            .chain(scanned.frac)
            .any(u8::is_ascii_digit)
        {
            // Upstream reads digit-less numbers ("", ".", "-") as zero on its fast path but
            // fails with ErrNumeric where it falls back to its slow path: decimal exponents
            // below -9 and binary suffixes whose fast-path precision estimate goes negative.
            return match multiplier {
                Multiplier::Ten(exp) if exp < NANO_SCALE => Err(QuantityError::Numeric),
                Multiplier::Two(exp) if exp >= 50 => Err(QuantityError::Numeric),
                _ => Ok(Quantity::ZERO.with_format(format)),
            };
        }

        // The exact value is `digits × 10^exp10`, all digits kept as a decimal string so that
        // arbitrarily long inputs round exactly.
        let mut digits: Vec<u8> = scanned
            .int
            .iter()
            .chain(scanned.frac)
            .map(|d| d - b'0')
            .collect();
        let mut exp10 = -(scanned.frac.len() as i64);
        match multiplier {
            Multiplier::Ten(exp) => exp10 += exp,
            Multiplier::Two(exp) => {
                for _ in 0..exp / 10 {
                    multiply_digits(&mut digits, 1024);
                }
            }
        }
        let first = digits.iter().position(|&d| d != 0).unwrap_or(digits.len());
        digits.drain(..first);
        if digits.is_empty() {
            // Upstream keeps the format of a zero, even a binary one ("0Ki").
            return Ok(Quantity::ZERO.with_format(format));
        }

        if exp10 < NANO_SCALE {
            let drop = NANO_SCALE - exp10;
            let keep = (digits.len() as i64 - drop).max(0) as usize;
            // Leading zeros are gone, so any dropped digit run is non-zero unless it is
            // entirely trailing zeros.
            let inexact = digits[keep..].iter().any(|&d| d != 0);
            digits.truncate(keep);
            if inexact {
                increment_digits(&mut digits);
            }
            exp10 = NANO_SCALE;
        }
        while digits.last() == Some(&0) {
            digits.pop();
            exp10 += 1;
        }

        let mut quantity = if digits.len() > MAX_DIGITS as usize {
            if format != Format::BinarySI {
                return Err(QuantityError::TooPrecise);
            }
            // At least 10^37 × 10^-9, far above the binary cap below.
            Quantity::from_parts(BINARY_MAX, 0, format)
        } else {
            let mantissa = digits
                .iter()
                .fold(0_i128, |acc, &d| acc * 10 + i128::from(d));
            Quantity::from_parts(mantissa, exp10, format)
        };

        if format == Format::BinarySI {
            let cap = Quantity::from_parts(BINARY_MAX, 0, format);
            if quantity.cmp_magnitude(&cap) == Ordering::Greater {
                quantity = cap;
            }
            if quantity.scale < 0 && quantity.cmp_magnitude(&Quantity::new(1, format)).is_lt() {
                // A binary fraction below one would print as "0.5Ki"-like nonsense.
                quantity.format = Format::DecimalSI;
            }
        }
        Ok(if scanned.negative {
            -quantity
        } else {
            quantity
        })
    }
}

/// The pieces of a quantity string, before any interpretation.
struct Scanned<'a> {
    negative: bool,
    int: &'a [u8],
    frac: &'a [u8],
    suffix: &'a str,
}

/// Splits `s` into sign, integer digits, fraction digits and suffix, accepting exactly the
/// strings upstream's scanner accepts: `[+-]?[0-9]*(\.[0-9]*)?[eEinumkKMGTP]*[+-]?[0-9]*`.
fn scan(s: &str) -> Result<Scanned<'_>, QuantityError> {
    let bytes = s.as_bytes();
    if bytes.is_empty() {
        return Err(QuantityError::FormatWrong);
    }
    let digits_from = |mut pos: usize| {
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        pos
    };

    let negative = bytes[0] == b'-';
    let mut pos = usize::from(matches!(bytes[0], b'-' | b'+'));
    let int_end = digits_from(pos);
    let int = &bytes[pos..int_end];
    pos = int_end;
    let mut frac: &[u8] = &[];
    if bytes.get(pos) == Some(&b'.') {
        let frac_end = digits_from(pos + 1);
        frac = &bytes[pos + 1..frac_end];
        pos = frac_end;
    }

    let suffix_start = pos;
    while pos < bytes.len() && b"eEinumkKMGTP".contains(&bytes[pos]) {
        pos += 1;
    }
    if matches!(bytes.get(pos), Some(b'+' | b'-')) {
        pos += 1;
    }
    pos = digits_from(pos);
    if pos != bytes.len() {
        return Err(QuantityError::FormatWrong);
    }
    Ok(Scanned {
        negative,
        int,
        frac,
        // Every byte from suffix_start on is ASCII, so this is a char boundary.
        suffix: &s[suffix_start..],
    })
}

/// What a suffix multiplies the number by.
enum Multiplier {
    /// `× 10^n` (decimal SI and exponents).
    Ten(i64),
    /// `× 2^n` (binary SI).
    Two(u32),
}

/// Maps a suffix to its multiplier and format, as upstream's suffixer: the fixed SI tables
/// first, then `e`/`E` followed by a signed 64-bit integer.
fn interpret_suffix(suffix: &str) -> Result<(Multiplier, Format), QuantityError> {
    if let Some(&(_, exp)) = DECIMAL_SUFFIXES.iter().find(|(s, _)| *s == suffix) {
        return Ok((Multiplier::Ten(exp), Format::DecimalSI));
    }
    if let Some(&(_, exp)) = BINARY_SUFFIXES.iter().find(|(s, _)| *s == suffix) {
        return Ok((Multiplier::Two(exp), Format::BinarySI));
    }
    if suffix.len() > 1 && suffix.starts_with(['e', 'E']) {
        let exp: i64 = suffix[1..].parse().map_err(|_| QuantityError::Suffix)?;
        // Upstream narrows the parsed exponent to int32 by truncation, so "1e4294967296"
        // is 1 there; mirrored so both servers accept and read the same strings.
        return Ok((
            Multiplier::Ten(i64::from(exp as i32)),
            Format::DecimalExponent,
        ));
    }
    Err(QuantityError::Suffix)
}

/// `digits *= factor` on a big-endian base-10 digit string.
fn multiply_digits(digits: &mut Vec<u8>, factor: u32) {
    let mut carry = 0_u32;
    for d in digits.iter_mut().rev() {
        let v = u32::from(*d) * factor + carry;
        *d = (v % 10) as u8;
        carry = v / 10;
    }
    while carry > 0 {
        digits.insert(0, (carry % 10) as u8);
        carry /= 10;
    }
}

/// `digits += 1` on a big-endian base-10 digit string (possibly empty, meaning zero).
fn increment_digits(digits: &mut Vec<u8>) {
    for d in digits.iter_mut().rev() {
        if *d == 9 {
            *d = 0;
        } else {
            *d += 1;
            return;
        }
    }
    digits.insert(0, 1);
}

impl fmt::Display for Quantity {
    /// Upstream's canonical form (`CanonicalizeBytes`): no fraction digits, the largest
    /// suffix of the quantity's format family that keeps the number whole, no `+` sign.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mantissa == 0 {
            return f.write_str("0");
        }
        if self.format == Format::BinarySI
            && let Some(mut value) = self.binary_integer()
        {
            let mut power = 0;
            while power < BINARY_SUFFIXES.len() && value % 1024 == 0 {
                value /= 1024;
                power += 1;
            }
            let suffix = power.checked_sub(1).map_or("", |i| BINARY_SUFFIXES[i].0);
            return write!(f, "{value}{suffix}");
        }
        let (digits, exp) = self.canonical_decimal();
        let si = DECIMAL_SUFFIXES.iter().find(|(_, e)| *e == exp);
        match (self.format, si) {
            // Upstream falls back to exponent notation beyond "E" (10^18) and below "n".
            (Format::DecimalSI | Format::BinarySI, Some((suffix, _))) => {
                write!(f, "{digits}{suffix}")
            }
            _ if exp == 0 => f.write_str(&digits),
            _ => write!(f, "{digits}e{exp}"),
        }
    }
}

impl Serialize for Quantity {
    /// Always the canonical string, as upstream marshals it.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    /// Accepts a string (surrounding whitespace trimmed, as upstream's `UnmarshalJSON`
    /// does), a JSON number, or `null` (zero).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(QuantityVisitor)
    }
}

/// Serde visitor behind [`Quantity`]'s `Deserialize`.
struct QuantityVisitor;

impl Visitor<'_> for QuantityVisitor {
    type Value = Quantity;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a quantity string such as \"100m\" or \"1Gi\", or a number")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
        v.trim().parse().map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
        Ok(Quantity::new(v, Format::DecimalSI))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
        self.visit_str(&v.to_string())
    }

    /// Upstream parses the number's JSON text. serde has already turned it into an `f64`, so
    /// the shortest text that round-trips to the same `f64` is parsed instead: identical for
    /// the short decimals people write (`0.5`, `1.25`), but `1e3` arrives as `1000` and is
    /// printed `1k` rather than `1e3`.
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
        if !v.is_finite() {
            return Err(E::custom("a quantity cannot be infinite or NaN"));
        }
        self.visit_str(&v.to_string())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Quantity, E> {
        Ok(Quantity::ZERO)
    }

    fn visit_none<E: de::Error>(self) -> Result<Quantity, E> {
        Ok(Quantity::ZERO)
    }
}
