//! Native SPA packets: the precheck and the open path never panic on arbitrary bytes, and
//! nothing authenticates without the client's key.
#![no_main]
use kagi_crypto::hpke::HpkeKeyPair;
use kagi_spa::native::{open, precheck};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = precheck(data);
    let gateway = HpkeKeyPair::from_private(&[3u8; 32]).expect("fixed key");
    let client = HpkeKeyPair::from_private(&[5u8; 32]).expect("fixed key");
    let public = client.public();
    if let Ok((_, knock)) = open(&gateway, data, |_| Some(public)) {
        let _ = knock.check("127.0.0.1".parse().expect("addr"), knock.timestamp, 0);
    }
});
