use super::*;

fn header(seg: u32) -> Header {
    Header {
        segment: seg,
        wrapped_dek: vec![1; 81],
        context: vec![0, 0],
        salt: [3; 32],
        prefix: [7; 7],
    }
}

fn seal(data: &[u8], seg: u32) -> Vec<u8> {
    let mut out = Vec::new();
    seal_stream(&[9; 32], &header(seg), &mut &data[..], &mut out).unwrap();
    out
}

fn open(file: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let mut r = file;
    let (h, hb) = Header::read(&mut r)?;
    let mut out = Vec::new();
    open_stream(&[9; 32], &h, &hb, &mut r, &mut out)?;
    Ok(out)
}

#[test]
fn round_trips_at_every_boundary() {
    for len in [0usize, 1, 15, 16, 17, 32, 33, 100] {
        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        assert_eq!(open(&seal(&data, 16)).unwrap(), data, "len {len}");
    }
}

#[test]
fn every_kind_of_damage_is_refused() {
    let data: Vec<u8> = (0..100u8).collect();
    let f = seal(&data, 16);
    let hl = header(16).to_bytes().len();
    let seg = 32;
    // Every single bit flip.
    for i in 0..f.len() {
        let mut g = f.clone();
        g[i] ^= 0x40;
        assert!(open(&g).is_err(), "flip at {i}");
    }
    // Truncation at a segment boundary and inside a segment.
    assert!(matches!(
        open(&f[..hl + 2 * seg]),
        Err(EnvelopeError::Truncated)
    ));
    assert!(open(&f[..hl + 2 * seg + 5]).is_err());
    // Appended bytes.
    let mut g = f.clone();
    g.extend_from_slice(&[0; 20]);
    assert!(open(&g).is_err());
    // Swapped and duplicated segments.
    let mut g = f.clone();
    let (a, b) = (hl, hl + seg);
    let s0 = f[a..a + seg].to_vec();
    let s1 = f[b..b + seg].to_vec();
    g[a..a + seg].copy_from_slice(&s1);
    g[b..b + seg].copy_from_slice(&s0);
    assert!(matches!(open(&g), Err(EnvelopeError::Segment(0))));
    let mut g = f.clone();
    g[b..b + seg].copy_from_slice(&s0);
    assert!(open(&g).is_err());
    // A segment spliced in from another file with the same key.
    let mut h2 = header(16);
    h2.prefix = [8; 7];
    let mut other = Vec::new();
    seal_stream(&[9; 32], &h2, &mut &data[..], &mut other).unwrap();
    let mut g = f.clone();
    g[b..b + seg].copy_from_slice(&other[b..b + seg]);
    assert!(matches!(open(&g), Err(EnvelopeError::Segment(1))));
    assert!(matches!(open(b"garbage"), Err(EnvelopeError::Header(_))));
}

/// The format written the obvious way, one segment at a time, to check the pipeline against.
fn reference(data: &[u8], seg: usize) -> Vec<u8> {
    let h = header(seg as u32);
    let hb = h.to_bytes();
    let aad = kagi_crypto::sha256(&hb);
    let key = kagi_crypto::AeadKey::new(&kagi_crypto::hkdf_sha256_32(
        &[9; 32],
        &h.salt,
        b"kagienc1 segment key",
    ));
    let mut out = hb.clone();
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(seg).collect()
    };
    for (i, c) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let mut buf = c.to_vec();
        key.seal_in_place(
            &format::nonce(&h.prefix, i as u64, last).unwrap(),
            &aad,
            &mut buf,
        );
        out.extend_from_slice(&buf);
    }
    out
}

#[test]
fn parallel_pipeline_matches_the_reference_at_batch_boundaries() {
    // 16-byte segments, 16 per batch: 256 bytes per batch.
    for len in [255usize, 256, 257, 511, 512, 513, 4096, 4097, 10_000] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let sealed = seal(&data, 16);
        assert!(sealed == reference(&data, 16), "len {len}");
        assert!(open(&sealed).unwrap() == data, "len {len}");
    }
}

#[test]
fn damage_deep_in_a_long_file_names_its_segment() {
    let data = vec![3u8; 16 * 100 + 5];
    let f = seal(&data, 16);
    let hl = header(16).to_bytes().len();
    for seg in [0usize, 17, 40, 99, 100] {
        let mut g = f.clone();
        g[hl + seg * 32 + 3] ^= 1;
        match open(&g) {
            Err(EnvelopeError::Segment(i)) => assert_eq!(i, seg as u64),
            other => panic!("segment {seg}: {other:?}"),
        }
    }
    // Cut at every batch boundary and a few segment boundaries.
    for cut in [16usize, 32, 50, 64] {
        assert!(matches!(
            open(&f[..hl + cut * 32]),
            Err(EnvelopeError::Truncated)
        ));
    }
    let mut g = f.clone();
    g.extend_from_slice(&f[hl..hl + 32]);
    assert!(open(&g).is_err());
}

#[test]
fn the_salt_gives_every_file_its_own_segment_key() {
    // Same DEK, same nonce prefix (as if the random prefix collided under a cached DEK): the
    // salt alone must make the keystreams differ.
    let data = [0u8; 64];
    let mut h2 = header(16);
    h2.salt = [4; 32];
    let (mut a, mut b) = (Vec::new(), Vec::new());
    seal_stream(&[9; 32], &header(16), &mut &data[..], &mut a).unwrap();
    seal_stream(&[9; 32], &h2, &mut &data[..], &mut b).unwrap();
    let hl = header(16).to_bytes().len();
    assert_ne!(a[hl..hl + 16], b[hl..hl + 16]);
    assert!(matches!(
        Header::read(&mut &a[..hl - 1]),
        Err(EnvelopeError::Header(_))
    ));
}
