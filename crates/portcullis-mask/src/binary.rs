//! Binary-format values, failing closed: a value the detectors can read is decoded to the
//! text the database would print (numbers, addresses) and scanned; text inside arrays and
//! records is masked in place and the value re-encoded; a number or address with a finding
//! cannot hold a masked value and becomes NULL; a value that cannot be read becomes NULL.

use std::collections::BTreeMap;

use portcullis_core::ValueKind;

use crate::detect::{Finding, Kind};
use crate::mask::{Masked, Masker, Strategy};

/// Arrays of records of arrays…: deeper than this is not read (NULL).
const MAX_DEPTH: usize = 8;

/// The masker and its scratch space, for one value.
pub(crate) struct Scan<'a> {
    pub(crate) masker: &'a Masker,
    pub(crate) scratch: &'a mut Vec<Finding>,
    pub(crate) counts: &'a mut BTreeMap<Kind, u64>,
    /// A detector found something (a NULL without a finding is a value not read).
    pub(crate) found: bool,
}

impl Scan<'_> {
    /// Mask `v`, read as `kind` (not under a column rule).
    pub(crate) fn value(&mut self, kind: ValueKind, v: &[u8]) -> Masked {
        self.at(kind, v, 0)
    }

    fn at(&mut self, kind: ValueKind, v: &[u8], depth: usize) -> Masked {
        match kind {
            ValueKind::Text => self.text(v),
            ValueKind::PrefixedText => {
                let (head, rest) = v.split_at(v.len().min(1));
                match self.text(rest) {
                    Masked::Rewritten(out) => Masked::Rewritten([head, &out].concat()),
                    other => other,
                }
            }
            ValueKind::Integer => match v.len() {
                2 => self.numbers(&[i64::from(i16::from_be_bytes([v[0], v[1]])).to_string()]),
                4 => {
                    // Signed (int4) or unsigned (oid, xid): both spellings of a negative
                    // int4 are scanned.
                    let n = i32::from_be_bytes([v[0], v[1], v[2], v[3]]);
                    self.signed(i64::from(n), u64::from(n as u32))
                }
                8 => self.numbers(&[i64::from_be_bytes(eight(v)).to_string()]),
                _ => Masked::Null,
            },
            ValueKind::LeInteger => {
                let (signed, unsigned) = match v.len() {
                    1 => (i64::from(v[0] as i8), u64::from(v[0])),
                    2 => {
                        let b = [v[0], v[1]];
                        (
                            i64::from(i16::from_le_bytes(b)),
                            u64::from(u16::from_le_bytes(b)),
                        )
                    }
                    4 => {
                        let b = [v[0], v[1], v[2], v[3]];
                        (
                            i64::from(i32::from_le_bytes(b)),
                            u64::from(u32::from_le_bytes(b)),
                        )
                    }
                    8 => (i64::from_le_bytes(eight(v)), u64::from_le_bytes(eight(v))),
                    _ => return Masked::Null,
                };
                self.signed(signed, unsigned)
            }
            ValueKind::Float => match v.len() {
                4 => self.numbers(&[f32::from_be_bytes([v[0], v[1], v[2], v[3]]).to_string()]),
                8 => self.numbers(&[f64::from_be_bytes(eight(v)).to_string()]),
                _ => Masked::Null,
            },
            ValueKind::LeFloat => match v.len() {
                4 => self.numbers(&[f32::from_le_bytes([v[0], v[1], v[2], v[3]]).to_string()]),
                8 => self.numbers(&[f64::from_le_bytes(eight(v)).to_string()]),
                _ => Masked::Null,
            },
            ValueKind::Numeric => match numeric_text(v) {
                Some(text) => self.numbers(&[text]),
                None => Masked::Null,
            },
            ValueKind::Inet => match inet_text(v) {
                Some(text) => self.numbers(&[text]),
                None => Masked::Null,
            },
            ValueKind::Inert => {
                if self.masker.detectors().has_custom() {
                    Masked::Null
                } else {
                    Masked::Clean
                }
            }
            ValueKind::PgArray if depth < MAX_DEPTH => self.array(v, depth),
            ValueKind::PgRecord if depth < MAX_DEPTH => self.record(v, depth, &[]),
            _ => Masked::Null,
        }
    }

    fn text(&mut self, v: &[u8]) -> Masked {
        let masked = self.masker.mask(v, self.scratch, self.counts);
        self.found |= masked != Masked::Clean;
        masked
    }

    /// An integer read both as signed and as unsigned (the same spelling unless negative).
    fn signed(&mut self, signed: i64, unsigned: u64) -> Masked {
        if signed >= 0 {
            self.numbers(&[signed.to_string()])
        } else {
            self.numbers(&[signed.to_string(), unsigned.to_string()])
        }
    }

    /// A number's text as written: NULL when it has a finding.
    pub(crate) fn numbers_in(&mut self, written: &[u8]) -> Masked {
        match self.text(written) {
            Masked::Clean => Masked::Clean,
            _ => Masked::Null,
        }
    }

    /// A value that cannot hold a masked form: NULL when any spelling has a finding.
    pub(crate) fn numbers(&mut self, spellings: &[String]) -> Masked {
        for s in spellings {
            if self.text(s.as_bytes()) != Masked::Clean {
                return Masked::Null;
            }
        }
        Masked::Clean
    }

    /// A binary array: `ndim`, flags, element type, (size, lower bound) per dimension, then
    /// each element as length (-1 NULL) and bytes.
    fn array(&mut self, v: &[u8], depth: usize) -> Masked {
        let mut r = Reader(v);
        let (Some(ndim), Some(_flags), Some(elem)) = (r.i32(), r.i32(), r.u32()) else {
            return Masked::Null;
        };
        let Ok(ndim) = usize::try_from(ndim) else {
            return Masked::Null;
        };
        if ndim > 6 {
            return Masked::Null;
        }
        let mut count: usize = usize::from(ndim > 0);
        for _ in 0..ndim {
            let (Some(size), Some(_lbound)) = (r.i32(), r.i32()) else {
                return Masked::Null;
            };
            let Some(n) = usize::try_from(size)
                .ok()
                .and_then(|s| count.checked_mul(s))
            else {
                return Masked::Null;
            };
            count = n;
        }
        let header = v.len() - r.0.len();
        let kind = ValueKind::postgres_binary(elem);
        let mut elements = Vec::new();
        for _ in 0..count {
            let Some(item) = r.item() else {
                return Masked::Null;
            };
            elements.push((kind, item));
        }
        if !r.0.is_empty() {
            return Masked::Null;
        }
        match self.items(elements, depth, &[]) {
            Items::Clean => Masked::Clean,
            Items::Null => Masked::Null,
            Items::Changed(items) => {
                let mut out = Vec::with_capacity(v.len());
                out.extend_from_slice(&v[..header]);
                if items.iter().any(Option::is_none) {
                    out[4..8].copy_from_slice(&1i32.to_be_bytes()); // has NULLs
                }
                put_items(&mut out, &items);
                Masked::Rewritten(out)
            }
        }
    }

    /// A record of a table's row type whose fields' column rules are `rules` (one per
    /// field): a ruled field is masked whole, the others as any value.
    pub(crate) fn ruled_record(&mut self, v: &[u8], rules: &[Option<Strategy>]) -> Masked {
        self.record(v, 0, rules)
    }

    /// A binary record: the field count, then each field as type OID, length (-1 NULL) and
    /// bytes. `rules` (empty, or one per field) mask fields whole.
    fn record(&mut self, v: &[u8], depth: usize, rules: &[Option<Strategy>]) -> Masked {
        let mut r = Reader(v);
        let Some(n) = r.i32().and_then(|n| usize::try_from(n).ok()) else {
            return Masked::Null;
        };
        let mut fields = Vec::new();
        let mut oids = Vec::new();
        for _ in 0..n {
            let (Some(oid), Some(item)) = (r.u32(), r.item()) else {
                return Masked::Null;
            };
            oids.push(oid);
            fields.push((ValueKind::postgres_binary(oid), item));
        }
        if !r.0.is_empty() || !(rules.is_empty() || rules.len() == n) {
            return Masked::Null;
        }
        match self.items(fields, depth, rules) {
            Items::Clean => Masked::Clean,
            Items::Null => Masked::Null,
            Items::Changed(items) => {
                let mut out = Vec::with_capacity(v.len());
                out.extend_from_slice(&v[..4]);
                for (oid, item) in oids.iter().zip(&items) {
                    out.extend_from_slice(&oid.to_be_bytes());
                    put_items(&mut out, std::slice::from_ref(item));
                }
                Masked::Rewritten(out)
            }
        }
    }

    fn items(
        &mut self,
        items: Vec<(ValueKind, Option<&[u8]>)>,
        depth: usize,
        rules: &[Option<Strategy>],
    ) -> Items {
        let mut out: Vec<Option<Vec<u8>>> = Vec::with_capacity(items.len());
        let mut changed = false;
        for (i, (kind, item)) in items.iter().enumerate() {
            let Some(bytes) = item else {
                out.push(None);
                continue;
            };
            let masked = match rules.get(i).copied().flatten() {
                // Under a column rule: text masked whole by its strategy; a value of another
                // type cannot keep its type masked (NULL).
                Some(strategy) => {
                    self.found = true;
                    match kind {
                        ValueKind::Text => self.masker.mask_whole(bytes, strategy),
                        _ => Masked::Null,
                    }
                }
                None => self.at(*kind, bytes, depth + 1),
            };
            match masked {
                Masked::Clean => out.push(Some(bytes.to_vec())),
                Masked::Rewritten(new) => {
                    changed = true;
                    out.push(Some(new));
                }
                Masked::Null => {
                    // An element that cannot be read at all: the whole value is not read.
                    if matches!(kind, ValueKind::Opaque)
                        && rules.get(i).copied().flatten().is_none()
                    {
                        return Items::Null;
                    }
                    changed = true;
                    out.push(None);
                }
            }
        }
        if changed {
            Items::Changed(out)
        } else {
            Items::Clean
        }
    }
}

enum Items {
    Clean,
    Null,
    Changed(Vec<Option<Vec<u8>>>),
}

fn put_items(out: &mut Vec<u8>, items: &[Option<Vec<u8>>]) {
    for item in items {
        match item {
            Some(bytes) => {
                let len = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(bytes);
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
}

fn eight(v: &[u8]) -> [u8; 8] {
    let mut b = [0u8; 8];
    b.copy_from_slice(&v[..8]);
    b
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// A length-prefixed item: `Some(None)` for NULL.
    fn item(&mut self) -> Option<Option<&'a [u8]>> {
        let len = self.i32()?;
        if len == -1 {
            return Some(None);
        }
        self.take(usize::try_from(len).ok()?).map(Some)
    }
}

/// A binary `numeric` as PostgreSQL prints it: `ndigits`, `weight`, `sign`, `dscale`, then
/// base-10000 digits.
pub(crate) fn numeric_text(v: &[u8]) -> Option<String> {
    let mut r = Reader(v);
    let ndigits = usize::from(r.u16()?);
    let weight = i32::from(r.u16()? as i16);
    let sign = r.u16()?;
    let dscale = usize::from(r.u16()?);
    let mut digits = Vec::with_capacity(ndigits);
    for _ in 0..ndigits {
        let d = r.u16()?;
        if d >= 10_000 {
            return None;
        }
        digits.push(d);
    }
    if !r.0.is_empty() || dscale > 16_383 || weight.unsigned_abs() > 16_383 {
        return None;
    }
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        _ => return None,
    }
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    // The integer part: digit groups 0..=weight.
    if weight < 0 {
        out.push('0');
    } else {
        for i in 0..=weight as usize {
            let d = digits.get(i).copied().unwrap_or(0);
            if i == 0 {
                out.push_str(&d.to_string());
            } else {
                out.push_str(&format!("{d:04}"));
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut frac = String::new();
        let mut i = weight + 1;
        while frac.len() < dscale {
            let d = usize::try_from(i)
                .ok()
                .and_then(|i| digits.get(i))
                .copied()
                .unwrap_or(0);
            frac.push_str(&format!("{d:04}"));
            i += 1;
        }
        frac.truncate(dscale);
        out.push_str(&frac);
    }
    Some(out)
}

/// A binary `inet`/`cidr` as PostgreSQL prints it (the address, then `/bits` unless a whole
/// host address).
pub(crate) fn inet_text(v: &[u8]) -> Option<String> {
    let [family, bits, _is_cidr, nb, addr @ ..] = v else {
        return None;
    };
    if usize::from(*nb) != addr.len() {
        return None;
    }
    let (text, max) = match (family, addr.len()) {
        (2, 4) => (
            std::net::Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).to_string(),
            32,
        ),
        (3, 16) => {
            let mut b = [0u8; 16];
            b.copy_from_slice(addr);
            (std::net::Ipv6Addr::from(b).to_string(), 128)
        }
        _ => return None,
    };
    Some(if *bits == max {
        text
    } else {
        format!("{text}/{bits}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::Strategy;
    use crate::scan::Detectors;

    fn masker() -> Masker {
        Masker::new(Detectors::all(), Strategy::Partial)
    }

    fn run(kind: ValueKind, v: &[u8]) -> Masked {
        let m = masker();
        let (mut scratch, mut counts) = (Vec::new(), BTreeMap::new());
        Scan {
            masker: &m,
            scratch: &mut scratch,
            counts: &mut counts,
            found: false,
        }
        .value(kind, v)
    }

    fn numeric(ndigits: &[u16], weight: i16, sign: u16, dscale: u16) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(ndigits.len() as u16).to_be_bytes());
        v.extend_from_slice(&weight.to_be_bytes());
        v.extend_from_slice(&sign.to_be_bytes());
        v.extend_from_slice(&dscale.to_be_bytes());
        for d in ndigits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numerics_print_as_postgresql_prints_them() {
        assert_eq!(numeric_text(&numeric(&[], 0, 0, 0)).unwrap(), "0");
        assert_eq!(
            numeric_text(&numeric(&[4111, 1111, 1111, 1111], 3, 0, 0)).unwrap(),
            "4111111111111111"
        );
        assert_eq!(
            numeric_text(&numeric(&[12, 3400], 0, 0x4000, 2)).unwrap(),
            "-12.34"
        );
        assert_eq!(numeric_text(&numeric(&[5], -1, 0, 4)).unwrap(), "0.0005");
        assert_eq!(numeric_text(&numeric(&[1], 2, 0, 0)).unwrap(), "100000000");
        assert_eq!(numeric_text(&numeric(&[], 0, 0xC000, 0)).unwrap(), "NaN");
        assert!(numeric_text(&numeric(&[10_000], 0, 0, 0)).is_none());
        assert!(numeric_text(&[0, 1]).is_none());
    }

    #[test]
    fn a_card_number_in_any_numeric_type_is_masked_and_a_plain_number_passes() {
        let card = 4_111_111_111_111_111i64;
        assert_eq!(run(ValueKind::Integer, &card.to_be_bytes()), Masked::Null);
        assert_eq!(run(ValueKind::Integer, &42i64.to_be_bytes()), Masked::Clean);
        assert_eq!(run(ValueKind::LeInteger, &card.to_le_bytes()), Masked::Null);
        assert_eq!(
            run(ValueKind::Float, &(card as f64).to_be_bytes()),
            Masked::Null
        );
        assert_eq!(
            run(ValueKind::LeFloat, &(card as f64).to_le_bytes()),
            Masked::Null
        );
        assert_eq!(run(ValueKind::Float, &1.5f64.to_be_bytes()), Masked::Clean);
        assert_eq!(
            run(
                ValueKind::Numeric,
                &numeric(&[4111, 1111, 1111, 1111], 3, 0, 0)
            ),
            Masked::Null
        );
        assert_eq!(
            run(ValueKind::Numeric, &numeric(&[42], 0, 0, 0)),
            Masked::Clean
        );
        // A value cut short is not read: NULL.
        assert_eq!(run(ValueKind::Integer, &[0, 0, 1]), Masked::Null);
    }

    #[test]
    fn addresses_are_read_and_unreadable_types_are_null() {
        assert_eq!(inet_text(&[2, 32, 0, 4, 10, 1, 2, 3]).unwrap(), "10.1.2.3");
        assert_eq!(
            inet_text(&[2, 24, 1, 4, 10, 1, 2, 0]).unwrap(),
            "10.1.2.0/24"
        );
        assert_eq!(
            run(ValueKind::Inet, &[2, 32, 0, 4, 10, 1, 2, 3]),
            Masked::Null
        );
        assert_eq!(run(ValueKind::Opaque, b"anything"), Masked::Null);
        assert_eq!(run(ValueKind::Inert, &[0; 8]), Masked::Clean);
    }

    fn array(elem: u32, items: &[Option<&[u8]>]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&1i32.to_be_bytes());
        v.extend_from_slice(&0i32.to_be_bytes());
        v.extend_from_slice(&elem.to_be_bytes());
        v.extend_from_slice(&(items.len() as i32).to_be_bytes());
        v.extend_from_slice(&1i32.to_be_bytes());
        for item in items {
            match item {
                Some(b) => {
                    v.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    v.extend_from_slice(b);
                }
                None => v.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        v
    }

    #[test]
    fn text_in_an_array_is_masked_in_place_and_the_array_stays_valid() {
        let v = array(25, &[Some(b"plain"), Some(b"mail alice@example.com"), None]);
        let Masked::Rewritten(out) = run(ValueKind::PgArray, &v) else {
            panic!("not masked");
        };
        assert!(!out.windows(7).any(|w| w == b"alice@e"));
        let mut r = Reader(&out);
        assert_eq!(r.i32(), Some(1));
        r.i32();
        assert_eq!(r.u32(), Some(25));
        assert_eq!((r.i32(), r.i32()), (Some(3), Some(1)));
        assert_eq!(r.item(), Some(Some(&b"plain"[..])));
        let masked = r.item().unwrap().unwrap();
        assert!(masked.starts_with(b"mail "), "{masked:?}");
        assert_eq!(r.item(), Some(None));
        assert!(r.0.is_empty());
        // Clean arrays are untouched; numbers with findings become NULL elements.
        assert_eq!(
            run(ValueKind::PgArray, &array(25, &[Some(b"x")])),
            Masked::Clean
        );
        let card = 4_111_111_111_111_111i64.to_be_bytes();
        let Masked::Rewritten(out) = run(ValueKind::PgArray, &array(20, &[Some(&card)])) else {
            panic!("not masked");
        };
        assert_eq!(&out[4..8], &1i32.to_be_bytes(), "has-NULLs flag");
        // An array of a type the gateway does not know is NULL whole; so is a malformed one.
        assert_eq!(
            run(ValueKind::PgArray, &array(600, &[Some(b"x")])),
            Masked::Null
        );
        assert_eq!(run(ValueKind::PgArray, &v[..v.len() - 1]), Masked::Null);
    }

    #[test]
    fn record_fields_are_masked_by_their_own_types() {
        let mut v = 2i32.to_be_bytes().to_vec();
        for (oid, bytes) in [
            (25u32, &b"bob@example.com"[..]),
            (20, &4_111_111_111_111_111i64.to_be_bytes()[..]),
        ] {
            v.extend_from_slice(&oid.to_be_bytes());
            v.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
            v.extend_from_slice(bytes);
        }
        let Masked::Rewritten(out) = run(ValueKind::PgRecord, &v) else {
            panic!("not masked");
        };
        let mut r = Reader(&out);
        assert_eq!(r.i32(), Some(2));
        assert_eq!(r.u32(), Some(25));
        let email = r.item().unwrap().unwrap();
        assert!(!email.starts_with(b"bob@"), "{email:?}");
        assert_eq!(r.u32(), Some(20));
        assert_eq!(r.item(), Some(None));
        assert!(r.0.is_empty());
    }

    mod decodable {
        //! Masked binary values stay values a client library decodes: random arrays and
        //! scalars of the supported types, planted with personal data, are encoded with
        //! tokio-postgres's encoders, masked, and decoded with its decoders.
        use super::*;
        use proptest::prelude::*;
        use proptest::strategy::Strategy;
        use tokio_postgres::types::{FromSql, ToSql, Type};

        const EMAIL: &str = "jane.doe@example.com";
        const CARD: i64 = 4_111_111_111_111_111;

        fn encode(v: &(dyn ToSql + Sync), ty: &Type) -> Vec<u8> {
            let mut buf = bytes::BytesMut::new();
            v.to_sql_checked(ty, &mut buf).unwrap();
            buf.to_vec()
        }

        /// The value masked as the layer would (the bytes themselves when clean; `None` for
        /// NULL).
        fn masked(ty: &Type, v: &[u8]) -> Option<Vec<u8>> {
            match run(ValueKind::postgres_binary(ty.oid()), v) {
                Masked::Clean => Some(v.to_vec()),
                Masked::Rewritten(out) => Some(out),
                Masked::Null => None,
            }
        }

        fn text() -> impl Strategy<Value = Option<String>> {
            prop_oneof![
                Just(None),
                "[a-z ]{0,12}".prop_map(Some),
                "[a-z]{1,8}".prop_map(|s| Some(format!("{s} {EMAIL} {s}"))),
            ]
        }

        fn number() -> impl Strategy<Value = Option<i64>> {
            prop_oneof![Just(None), any::<i64>().prop_map(Some), Just(Some(CARD))]
        }

        proptest! {
            #[test]
            fn text_arrays_decode_and_lose_what_was_planted(items in proptest::collection::vec(text(), 0..8)) {
                let bytes = encode(&items, &Type::TEXT_ARRAY);
                let out = masked(&Type::TEXT_ARRAY, &bytes).expect("a text[] is masked in place");
                let decoded = Vec::<Option<String>>::from_sql(&Type::TEXT_ARRAY, &out).unwrap();
                prop_assert_eq!(decoded.len(), items.len());
                for (was, now) in items.iter().zip(&decoded) {
                    prop_assert_eq!(was.is_none(), now.is_none());
                    if let (Some(was), Some(now)) = (was, now) {
                        prop_assert!(!now.contains(EMAIL));
                        if !was.contains(EMAIL) {
                            prop_assert_eq!(was, now);
                        }
                    }
                }
            }

            #[test]
            fn number_arrays_decode_with_the_card_numbers_gone(items in proptest::collection::vec(number(), 0..8)) {
                let bytes = encode(&items, &Type::INT8_ARRAY);
                if let Some(out) = masked(&Type::INT8_ARRAY, &bytes) {
                    let decoded = Vec::<Option<i64>>::from_sql(&Type::INT8_ARRAY, &out).unwrap();
                    prop_assert_eq!(decoded.len(), items.len());
                    prop_assert!(!decoded.contains(&Some(CARD)));
                }
                let floats: Vec<Option<f64>> = items.iter().map(|n| n.map(|n| n as f64)).collect();
                let bytes = encode(&floats, &Type::FLOAT8_ARRAY);
                if let Some(out) = masked(&Type::FLOAT8_ARRAY, &bytes) {
                    let decoded = Vec::<Option<f64>>::from_sql(&Type::FLOAT8_ARRAY, &out).unwrap();
                    prop_assert_eq!(decoded.len(), floats.len());
                    prop_assert!(!decoded.contains(&Some(CARD as f64)));
                }
            }

            #[test]
            fn scalars_decode_or_become_null(t in text(), n in number()) {
                if let Some(t) = &t {
                    let bytes = encode(t, &Type::TEXT);
                    let out = masked(&Type::TEXT, &bytes).expect("text is masked in place");
                    let now = String::from_sql(&Type::TEXT, &out).unwrap();
                    prop_assert!(!now.contains(EMAIL));
                    let bytes = encode(&t.as_bytes(), &Type::BYTEA);
                    let out = masked(&Type::BYTEA, &bytes).expect("bytea is masked in place");
                    let now = Vec::<u8>::from_sql(&Type::BYTEA, &out).unwrap();
                    prop_assert!(!now.windows(EMAIL.len()).any(|w| w == EMAIL.as_bytes()));
                }
                if let Some(n) = n {
                    let bytes = encode(&n, &Type::INT8);
                    match masked(&Type::INT8, &bytes) {
                        Some(out) => prop_assert_eq!(i64::from_sql(&Type::INT8, &out).unwrap(), n),
                        // NULL only for a number the detectors read as a card (a random one
                        // can be: Luhn-valid, in a card range).
                        None => {
                            let m = masker();
                            let (mut scratch, mut counts) = (Vec::new(), BTreeMap::new());
                            prop_assert!(m.mask(n.to_string().as_bytes(), &mut scratch, &mut counts) != Masked::Clean);
                        }
                    }
                }
            }
        }
    }
}
