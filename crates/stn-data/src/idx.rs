//! The IDX format of the MNIST files: a big-endian header (`0x00 0x00 type ndim`, then `ndim` u32
//! dimensions) followed by the data. MNIST only uses unsigned bytes (type `0x08`).

use crate::DataError;

/// Type code of unsigned-byte data in an IDX header.
const IDX_U8: u8 = 0x08;

/// The most dimensions an IDX header may declare here (MNIST-format sets use 1 or 3).
pub(crate) const MAX_DIMS: usize = 4;

/// A parsed IDX file of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions of the header, outermost first.
    pub dims: Vec<usize>,
    /// The bytes, in C order.
    pub data: Vec<u8>,
}

/// Parses IDX bytes (already decompressed). `name` is only used in error messages.
///
/// Never panics: every length is checked before it is used, and the product of the dimensions is
/// computed with overflow checks, so random or truncated bytes give an error.
pub struct IdxReader;

impl IdxReader {
    /// Parses the bytes of an IDX file named `name` (for errors).
    pub fn parse(name: &str, bytes: &[u8]) -> Result<IdxArray, DataError> {
        let (dims, header) = Self::header(name, bytes)?;
        Ok(IdxArray {
            dims,
            data: bytes[header..].to_vec(),
        })
    }

    /// [`IdxReader::parse`] keeping `bytes`' buffer for the data (the header moved out in place):
    /// no second copy of a file to allocate and fault in.
    pub fn parse_owned(name: &str, mut bytes: Vec<u8>) -> Result<IdxArray, DataError> {
        let (dims, header) = Self::header(name, &bytes)?;
        bytes.drain(..header);
        Ok(IdxArray { dims, data: bytes })
    }

    /// Checks that `bytes` are a whole IDX file of unsigned bytes, as [`IdxReader::parse`] does.
    pub fn check(name: &str, bytes: &[u8]) -> Result<(), DataError> {
        Self::header(name, bytes).map(|_| ())
    }

    /// The dimensions and the header's length of a checked IDX file.
    fn header(name: &str, bytes: &[u8]) -> Result<(Vec<usize>, usize), DataError> {
        let bad = |what: String| DataError::Format {
            file: name.to_string(),
            what,
        };
        if bytes.len() < 4 {
            return Err(bad(format!(
                "{} bytes is too short for an IDX header",
                bytes.len()
            )));
        }
        if bytes[0] != 0 || bytes[1] != 0 {
            return Err(bad(format!(
                "wrong magic number {:02x}{:02x}{:02x}{:02x} (an IDX file starts with 0000)",
                bytes[0], bytes[1], bytes[2], bytes[3]
            )));
        }
        if bytes[2] != IDX_U8 {
            return Err(bad(format!(
                "element type 0x{:02x}, expected 0x08 (unsigned bytes)",
                bytes[2]
            )));
        }
        let ndim = bytes[3] as usize;
        if ndim == 0 {
            return Err(bad("zero dimensions in the header".into()));
        }
        if ndim > MAX_DIMS {
            return Err(bad(format!(
                "{ndim} dimensions in the header (at most {MAX_DIMS})"
            )));
        }
        let header = 4 + 4 * ndim;
        if bytes.len() < header {
            return Err(bad(format!(
                "truncated header: {ndim} dimensions need {header} bytes, file has {}",
                bytes.len()
            )));
        }
        let dims: Vec<usize> = bytes[4..header]
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
            .collect();
        let count = dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
        let body = bytes.len() - header;
        if body != count {
            let what = if body < count {
                format!("truncated: dimensions {dims:?} need {count} data bytes, found {body}")
            } else {
                format!(
                    "{} trailing bytes after the {count} data bytes of dimensions {dims:?}",
                    body - count
                )
            };
            return Err(bad(what));
        }
        Ok((dims, header))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(dims: &[u32]) -> Vec<u8> {
        let mut v = vec![0, 0, IDX_U8, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn parses_a_small_array() {
        let mut b = header(&[2, 3]);
        b.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        let a = IdxReader::parse("x", &b).unwrap();
        assert_eq!(a.dims, vec![2, 3]);
        assert_eq!(a.data, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(IdxReader::parse_owned("x", b.clone()).unwrap(), a);
        IdxReader::check("x", &b).unwrap();
        b.pop();
        assert!(IdxReader::check("x", &b).is_err());
        assert!(IdxReader::parse_owned("x", b).is_err());
    }

    #[test]
    fn rejects_bad_magic_truncation_and_trailing_bytes() {
        let mut b = header(&[2, 3]);
        b.extend_from_slice(&[1, 2, 3, 4, 5]);
        let e = IdxReader::parse("t10k-images", &b).unwrap_err().to_string();
        assert!(e.contains("t10k-images") && e.contains("truncated"), "{e}");
        b.extend_from_slice(&[6, 7]);
        let e = IdxReader::parse("x", &b).unwrap_err().to_string();
        assert!(e.contains("trailing"), "{e}");
        b[0] = 0x1f;
        let e = IdxReader::parse("x", &b).unwrap_err().to_string();
        assert!(e.contains("magic"), "{e}");
        let e = IdxReader::parse("x", &header(&[u32::MAX, u32::MAX, u32::MAX]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("overflow") || e.contains("truncated"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = IdxReader::parse("random", &bytes);
        }

        #[test]
        fn truncated_valid_files_are_errors(cut in 0usize..(16 + 4 * 5 * 5)) {
            let mut b = header(&[4, 5, 5]);
            b.extend(std::iter::repeat_n(7u8, 100));
            let r = IdxReader::parse("cut", &b[..cut]);
            proptest::prop_assert!(r.is_err());
        }
    }
}
