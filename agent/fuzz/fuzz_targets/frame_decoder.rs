//! The receiver reads frames from whoever holds the sender's key: no input may panic it, make it
//! allocate past the frame limit, or decode to something that does not re-encode to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pi2pi_agent::proto::{read_msg, Msg};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Msg::decode(data) {
        assert_eq!(&m.encode()[4..], data, "decode/encode is not a bijection");
    }
    let mut r = data;
    while let Ok(Some(m)) = read_msg(&mut r) {
        let _ = m;
    }
});
