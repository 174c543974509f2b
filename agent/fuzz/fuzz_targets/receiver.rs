//! The receiver's state machine on any bytes a key holder sends after Hello: it never panics,
//! never writes outside receiving/, and never says `Stored` for bytes not on disk (the checks
//! are `tests/receiver/mod.rs`, shared with the stable `tests/receiver_states.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/receiver/mod.rs"]
mod receiver;

fuzz_target!(|data: &[u8]| {
    let t = tempfile::tempdir().unwrap();
    let r = receiver::Receiver::new(t.path());
    let replies = r.session(data);
    r.check(data, &replies);
});
