//! fwknop access.conf files: parse or refuse with file and line; never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let mut include = |_: &str| -> Result<String, String> { Ok("SOURCE ANY\nKEY k\n".into()) };
        let _ = kagi_spa::access_conf::parse(text, "fuzz.conf", &mut include);
    }
});
