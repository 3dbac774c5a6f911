//! Subject alternative names of X.509 certificates, and the `raftwire://` node-id URIs.
//!
//! A member's certificate names its node with a URI SAN `raftwire://<cluster_id>/<node_id>`.
//! [`subject_alt_names`] is a small DER walker that reads just enough of a certificate to
//! find the subjectAltName extension. It uses no dependencies, no recursion (a fixed nesting
//! depth) and no allocation beyond the returned name lists, checks every length against the
//! remaining input before slicing, and never panics.
//!
//! DER rules enforced: single-byte (low-number) tags only; definite lengths only, in short
//! form or long form with 1 to 4 length bytes; non-minimal lengths (long form for a value
//! below 128, or a leading zero length byte) are rejected; every element must be followed by
//! nothing but its siblings, and the outer Certificate must consume the whole input.
//! Elements the walker does not need (names, validity, key, other extensions, other
//! GeneralName kinds) are skipped without looking inside.

use std::str;

/// The subject alternative names of a certificate that raftwire looks at.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SanNames<'a> {
    /// dNSName entries ([2] IA5String), in certificate order.
    pub dns: Vec<&'a str>,
    /// uniformResourceIdentifier entries ([6] IA5String), in certificate order.
    pub uris: Vec<&'a str>,
}

/// Why a certificate's names could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CertNameError {
    /// The DER structure is not a certificate (bad tag, length past the end, trailing bytes, ...).
    Malformed,
    /// A dNSName or URI entry is not ASCII (IA5String).
    NotAscii,
}

const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
const VERSION: u8 = 0xA0; // [0] EXPLICIT
const ISSUER_UID: u8 = 0x81; // [1] IMPLICIT BIT STRING
const SUBJECT_UID: u8 = 0x82; // [2] IMPLICIT BIT STRING
const EXTENSIONS: u8 = 0xA3; // [3] EXPLICIT
const DNS_NAME: u8 = 0x82; // GeneralName [2] IA5String
const URI: u8 = 0x86; // GeneralName [6] IA5String
/// 2.5.29.17, id-ce-subjectAltName.
const SAN_OID: &[u8] = &[0x55, 0x1D, 0x11];

/// A cursor over a run of sibling DER elements.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// Reads one element: its tag and its contents.
    fn any(&mut self) -> Result<(u8, &'a [u8]), CertNameError> {
        use CertNameError::Malformed;
        let (&tag, rest) = self.0.split_first().ok_or(Malformed)?;
        if tag & 0x1F == 0x1F {
            return Err(Malformed); // high-tag-number form
        }
        let (&first, mut rest) = rest.split_first().ok_or(Malformed)?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7F);
            // 0x80 is the (BER-only) indefinite length; more than 4 bytes is unsupported.
            if n == 0 || n > 4 {
                return Err(Malformed);
            }
            let (bytes, after) = rest.split_at_checked(n).ok_or(Malformed)?;
            rest = after;
            if bytes.first() == Some(&0) {
                return Err(Malformed); // non-minimal: leading zero byte
            }
            let len = bytes.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
            if len < 0x80 {
                return Err(Malformed); // non-minimal: should have been short form
            }
            usize::try_from(len).map_err(|_| Malformed)?
        };
        let (contents, after) = rest.split_at_checked(len).ok_or(Malformed)?;
        self.0 = after;
        Ok((tag, contents))
    }

    /// Reads one element that must have tag `tag`.
    fn expect(&mut self, tag: u8) -> Result<&'a [u8], CertNameError> {
        match self.any()? {
            (t, contents) if t == tag => Ok(contents),
            _ => Err(CertNameError::Malformed),
        }
    }

    /// Reads one element if the next one has tag `tag`.
    fn optional(&mut self, tag: u8) -> Result<Option<&'a [u8]>, CertNameError> {
        match self.0.first() {
            Some(&t) if t == tag => self.expect(tag).map(Some),
            _ => Ok(None),
        }
    }

    /// Fails unless every element has been read.
    fn finish(&self) -> Result<(), CertNameError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(CertNameError::Malformed)
        }
    }

    /// Reads one element with tag `tag` that must be the only one left.
    fn only(mut self, tag: u8) -> Result<&'a [u8], CertNameError> {
        let contents = self.expect(tag)?;
        self.finish()?;
        Ok(contents)
    }
}

/// Reads the subjectAltName extension (OID 2.5.29.17) of a DER-encoded certificate.
/// A certificate without extensions or without the SAN extension gives empty lists.
///
/// The certificate is not verified in any way; only its structure down to the SAN entries
/// is checked (see the module documentation for the DER rules applied). A second SAN
/// extension is [`CertNameError::Malformed`].
pub(crate) fn subject_alt_names(der: &[u8]) -> Result<SanNames<'_>, CertNameError> {
    let mut cert = Der(Der(der).only(SEQUENCE)?);
    let mut tbs = Der(cert.expect(SEQUENCE)?);
    cert.expect(SEQUENCE)?; // signatureAlgorithm
    cert.expect(BIT_STRING)?; // signatureValue
    cert.finish()?;

    tbs.optional(VERSION)?;
    tbs.expect(INTEGER)?; // serialNumber
    for _ in 0..5 {
        // signature, issuer, validity, subject, subjectPublicKeyInfo
        tbs.expect(SEQUENCE)?;
    }
    tbs.optional(ISSUER_UID)?;
    tbs.optional(SUBJECT_UID)?;
    let extensions = tbs.optional(EXTENSIONS)?;
    tbs.finish()?;

    let mut names = SanNames::default();
    let Some(extensions) = extensions else {
        return Ok(names);
    };
    let mut extensions = Der(Der(extensions).only(SEQUENCE)?);
    let mut seen_san = false;
    while !extensions.0.is_empty() {
        let mut extension = Der(extensions.expect(SEQUENCE)?);
        let oid = extension.expect(OID)?;
        extension.optional(BOOLEAN)?; // critical
        let value = extension.expect(OCTET_STRING)?;
        extension.finish()?;
        if oid != SAN_OID {
            continue;
        }
        if seen_san {
            return Err(CertNameError::Malformed);
        }
        seen_san = true;
        let mut general_names = Der(Der(value).only(SEQUENCE)?);
        while !general_names.0.is_empty() {
            let (tag, contents) = general_names.any()?;
            let list = match tag {
                DNS_NAME => &mut names.dns,
                URI => &mut names.uris,
                _ => continue,
            };
            if !contents.is_ascii() {
                return Err(CertNameError::NotAscii);
            }
            list.push(str::from_utf8(contents).map_err(|_| CertNameError::NotAscii)?);
        }
    }
    Ok(names)
}

/// The URI scheme and authority prefix of node URIs.
const SCHEME: &str = "raftwire://";

/// The URI naming node `node_id` of cluster `cluster_id`: `raftwire://<cluster_id>/<node_id>`, both decimal.
pub(crate) fn node_uri(cluster_id: u64, node_id: u64) -> String {
    format!("{SCHEME}{cluster_id}/{node_id}")
}

/// The node id named by a `raftwire://<cluster_id>/<node_id>` URI if its cluster id is `cluster_id`.
/// Only canonical decimal is accepted (no sign, no leading zeros unless the number is "0", no
/// whitespace, no trailing slash, no query/fragment, fits in u64); the scheme is matched
/// case-insensitively ("RAFTWIRE://" is fine), nothing else.
pub(crate) fn node_id_from_uri(uri: &str, cluster_id: u64) -> Option<u64> {
    let scheme = uri.get(..SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let (cluster, node) = uri.get(SCHEME.len()..)?.split_once('/')?;
    if canonical_u64(cluster)? != cluster_id {
        return None;
    }
    canonical_u64(node)
}

/// Parses canonical decimal: ASCII digits only, no leading zero unless exactly "0".
fn canonical_u64(s: &str) -> Option<u64> {
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::string::Ia5String;
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer};
    use rcgen::{KeyPair, SanType};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn uri(s: &str) -> Result<SanType, rcgen::Error> {
        Ok(SanType::URI(Ia5String::try_from(s)?))
    }

    /// A self-signed certificate with DNS names, URIs and an IP address.
    fn mixed_cert() -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        let mut params = CertificateParams::new(vec!["a.example".to_string()])?;
        let b = SanType::DnsName(Ia5String::try_from("b.example")?);
        let ip = SanType::IpAddress([10, 0, 0, 3].into());
        let more = [
            uri("raftwire://7/3")?,
            ip,
            b,
            uri("spiffe://x/y")?,
            uri("raftwire://7/4")?,
        ];
        params.subject_alt_names.extend(more);
        let key = KeyPair::generate()?;
        Ok(params.self_signed(&key)?.der().to_vec())
    }

    #[test]
    fn mixed_names_keep_order_and_ignore_ip() -> TestResult {
        let der = mixed_cert()?;
        let names = subject_alt_names(&der).unwrap();
        assert_eq!(names.dns, ["a.example", "b.example"]);
        assert_eq!(
            names.uris,
            ["raftwire://7/3", "spiffe://x/y", "raftwire://7/4"]
        );
        Ok(())
    }

    #[test]
    fn no_san_gives_empty_lists() -> TestResult {
        let params = CertificateParams::new(Vec::<String>::new())?;
        let cert = params.self_signed(&KeyPair::generate()?)?;
        assert_eq!(subject_alt_names(cert.der()), Ok(SanNames::default()));
        Ok(())
    }

    #[test]
    fn ca_signed_leaf_with_extended_key_usages() -> TestResult {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;
        assert_eq!(subject_alt_names(ca.der()), Ok(SanNames::default()));
        let issuer = Issuer::new(ca_params, ca_key);
        let mut params = CertificateParams::new(vec!["node9.example".to_string()])?;
        params.subject_alt_names.push(uri(&node_uri(42, 9))?);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let leaf = params.signed_by(&KeyPair::generate()?, &issuer)?;
        let names = subject_alt_names(leaf.der()).unwrap();
        assert_eq!(names.dns, ["node9.example"]);
        assert_eq!(names.uris, ["raftwire://42/9"]);
        assert_eq!(node_id_from_uri(names.uris[0], 42), Some(9));
        Ok(())
    }

    #[test]
    fn truncations_trailing_bytes_and_flips() -> TestResult {
        let der = mixed_cert()?;
        for len in 0..der.len() {
            let result = subject_alt_names(&der[..len]);
            assert_eq!(result, Err(CertNameError::Malformed), "{len}");
        }
        let mut longer = der.clone();
        longer.push(0);
        assert_eq!(subject_alt_names(&longer), Err(CertNameError::Malformed));
        for i in 0..der.len() {
            for mask in [0x01, 0x80, 0xFF] {
                let mut flipped = der.clone();
                flipped[i] ^= mask;
                let _ = subject_alt_names(&flipped);
            }
        }
        Ok(())
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..4000 {
            let len = (next() % 300) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 && len >= 2 {
                // A plausible outer header, so the walk gets past the first element.
                bytes[0] = SEQUENCE;
                bytes[1] = (len - 2).min(0x7F) as u8;
            }
            let _ = subject_alt_names(&bytes);
        }
    }

    /// One DER element, with a minimal length encoding.
    fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
        let len = contents.len();
        let mut out = vec![tag];
        match len {
            0..=0x7F => out.push(len as u8),
            0x80..=0xFF => out.extend([0x81, len as u8]),
            _ => out.extend([0x82, (len >> 8) as u8, len as u8]),
        }
        out.extend_from_slice(contents);
        out
    }

    /// A stray element, appended where a structure must already have ended.
    const STRAY: [u8; 2] = [0x05, 0x00];

    /// A structurally valid (unsigned, empty-named) certificate with these extensions, or
    /// with a stray element after the extension list (`stray` 1), the tbsCertificate
    /// fields (2) or the signature (3).
    fn cert_with(extensions: Option<&[Vec<u8>]>, stray: u8) -> Vec<u8> {
        let stray_at = |at: u8| if stray == at { &STRAY[..] } else { &[] };
        let mut tbs = [tlv(VERSION, &tlv(INTEGER, &[2])), tlv(INTEGER, &[1])].concat();
        for _ in 0..5 {
            tbs.extend(tlv(SEQUENCE, &[]));
        }
        if let Some(extensions) = extensions {
            let list = [&tlv(SEQUENCE, &extensions.concat())[..], stray_at(1)].concat();
            tbs.extend(tlv(EXTENSIONS, &list));
        }
        tbs.extend_from_slice(stray_at(2));
        let signature = [tlv(SEQUENCE, &[]), tlv(BIT_STRING, &[0])].concat();
        tlv(
            SEQUENCE,
            &[&tlv(SEQUENCE, &tbs), &signature[..], stray_at(3)].concat(),
        )
    }

    fn cert(extensions: Option<&[Vec<u8>]>) -> Vec<u8> {
        cert_with(extensions, 0)
    }

    /// A SAN extension, with a stray element after the GeneralNames (`stray` 1) or after
    /// the extnValue (2).
    fn san_with(names: &[Vec<u8>], stray: u8) -> Vec<u8> {
        let stray_at = |at: u8| if stray == at { &STRAY[..] } else { &[] };
        let value = [&tlv(SEQUENCE, &names.concat())[..], stray_at(1)].concat();
        let fields = [
            tlv(OID, SAN_OID),
            tlv(BOOLEAN, &[0xFF]),
            tlv(OCTET_STRING, &value),
        ];
        tlv(SEQUENCE, &[&fields.concat()[..], stray_at(2)].concat())
    }

    fn san(names: &[Vec<u8>]) -> Vec<u8> {
        san_with(names, 0)
    }

    #[test]
    fn hand_built_certificates() {
        let long_uri = format!("raftwire://1/{}", "9".repeat(300));
        let names = [
            tlv(0xA0, &tlv(OID, &[1, 2])), // otherName, skipped
            tlv(URI, b"raftwire://1/2"),
            tlv(0xA4, &tlv(SEQUENCE, &[])), // directoryName, skipped
            tlv(DNS_NAME, b"x.example"),
            tlv(URI, long_uri.as_bytes()), // long-form length 0x82
        ];
        let other = tlv(
            SEQUENCE,
            &[tlv(OID, &[0x55, 0x1D, 0x0F]), tlv(OCTET_STRING, &[])].concat(),
        );
        let good = cert(Some(&[other.clone(), san(&names)]));
        let good = subject_alt_names(&good).unwrap();
        assert_eq!(good.dns, ["x.example"]);
        assert_eq!(good.uris, ["raftwire://1/2", long_uri.as_str()]);
        assert_eq!(subject_alt_names(&cert(None)), Ok(SanNames::default()));
        assert_eq!(
            subject_alt_names(&cert(Some(&[other]))),
            Ok(SanNames::default())
        );

        let malformed =
            |der: &[u8]| assert_eq!(subject_alt_names(der), Err(CertNameError::Malformed));
        // The outer header of a small valid certificate, re-encoded: each would parse if the
        // length rule were looser.
        let small = cert(None);
        assert!(small[1] < 0x80);
        let (len, body) = (small[1], &small[2..]);
        let reheader = |header: &[u8], trailer: &[u8]| [header, body, trailer].concat();
        assert_eq!(
            subject_alt_names(&reheader(&[SEQUENCE, len], &[])),
            Ok(SanNames::default())
        );
        malformed(&reheader(&[SEQUENCE, 0x80], &[0, 0])); // indefinite
        malformed(&reheader(&[SEQUENCE, 0x85, 0, 0, 0, 0, len], &[])); // 5 length bytes
        malformed(&reheader(&[SEQUENCE, 0x81, len], &[])); // non-minimal
        malformed(&reheader(&[SEQUENCE, 0x82, 0, len], &[])); // non-minimal
        // A leading zero length byte on a large certificate (two length bytes needed).
        let large = cert(Some(&[san(&names)]));
        assert_eq!(large[1], 0x82);
        malformed(&[&[SEQUENCE, 0x83, 0][..], &large[2..]].concat());
        // A length claiming more than the input, outside and inside the SAN.
        malformed(&reheader(&[SEQUENCE, len + 1], &[]));
        malformed(&[SEQUENCE, 0x84, 0x7F, 0xFF, 0xFF, 0xFF, 0]);
        malformed(&cert(Some(&[san(&[vec![URI, 0x10, b'a']])])));
        // Stray elements after the end of a structure, at every level.
        for stray in 1..=3 {
            malformed(&cert_with(Some(&[san(&names)]), stray));
        }
        for stray in 1..=2 {
            malformed(&cert(Some(&[san_with(&names, stray)])));
        }
        // A high-tag-number GeneralName (number 2 in the long form, not valid DER).
        malformed(&cert(Some(&[san(&[vec![0x9F, 0x02, 0x01, b'a']])])));
        // A second SAN extension.
        malformed(&cert(Some(&[san(&names[1..2]), san(&names[3..4])])));
        // Non-ASCII in a URI or a DNS name.
        let bad = cert(Some(&[san(&[tlv(URI, "raftwire://1/\u{e9}".as_bytes())])]));
        assert_eq!(subject_alt_names(&bad), Err(CertNameError::NotAscii));
        let bad = cert(Some(&[san(&[tlv(DNS_NAME, &[b'a', 0x80])])]));
        assert_eq!(subject_alt_names(&bad), Err(CertNameError::NotAscii));
    }

    #[test]
    fn node_uri_round_trips_and_rejections() {
        for id in [0, 1, 3, u64::MAX] {
            assert_eq!(node_id_from_uri(&node_uri(7, id), 7), Some(id));
            assert_eq!(
                node_id_from_uri(&node_uri(u64::MAX, id), u64::MAX),
                Some(id)
            );
        }
        assert_eq!(node_uri(7, 3), "raftwire://7/3");
        assert_eq!(node_id_from_uri("RAFTWIRE://7/3", 7), Some(3));
        assert_eq!(node_id_from_uri("RaftWire://0/0", 0), Some(0));
        let bad = "raftwire://8/3 raftwire://07/3 raftwire://7/03 raftwire://7/+3 raftwire://7/-3 \
            raftwire://7/3/ raftwire://7/3?x raftwire://7/3#x raftwire://7/ raftwire:///3 \
            raftwire://7 raftwire:/7/3 https://7/3 raftwire://7/18446744073709551616 \
            raftwire://7/\u{661} raftwire:/\u{e9}7/3";
        let spaced = [" raftwire://7/3", "raftwire://7/3 ", "raftwire://7/ 3", ""];
        for bad in bad.split_whitespace().chain(spaced) {
            assert_eq!(node_id_from_uri(bad, 7), None, "{bad:?}");
        }
    }
}
