//! Fuzzes the certificate name reader used to bind TLS peers to node ids:
//! `subject_alt_names` on arbitrary bytes (as DER) and `node_id_from_uri`
//! on arbitrary strings.
//!
//! Checks: no panic; every name returned is a subslice of the input and
//! ASCII; a URI accepted for a cluster is exactly `raftwire://<c>/<n>` in
//! canonical decimal (it re-formats to itself, scheme aside), and is
//! refused for any other cluster id.

#![no_main]

use libfuzzer_sys::fuzz_target;
use raftwire::tls::fuzzing::{node_id_from_uri, subject_alt_names};

fuzz_target!(|data: &[u8]| {
    if let Ok((dns, uris)) = subject_alt_names(data) {
        let range = data.as_ptr_range();
        for name in dns.iter().chain(uris.iter()) {
            assert!(name.is_ascii());
            let r = name.as_bytes().as_ptr_range();
            assert!(range.start <= r.start && r.end <= range.end, "name outside the input");
        }
    }
    // The input as a URI, against the cluster id in its first 8 bytes.
    let (cluster, rest) = match data.split_first_chunk::<8>() {
        Some((c, rest)) => (u64::from_le_bytes(*c), rest),
        None => (7, data),
    };
    let Ok(uri) = std::str::from_utf8(rest) else {
        return;
    };
    if let Some(node) = node_id_from_uri(uri, cluster) {
        let canonical = format!("raftwire://{cluster}/{node}");
        assert!(uri.eq_ignore_ascii_case(&canonical), "{uri} vs {canonical}");
        assert_eq!(node_id_from_uri(uri, cluster.wrapping_add(1)), None);
    }
});
