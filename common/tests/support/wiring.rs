//! The in-memory wiring the scenario suites share (`replication_rules.rs`,
//! `split_sequences.rs`): a device's connect upload goes through the same
//! [`ConnectIntake`] the server's driver uses, credential check included, so the suites
//! exercise the connect path as a datacenter runs it.

use lifeboat_common::datacenter::{ConnectIntake, Connected, IntakeStep};
use lifeboat_common::edge::EdgeCore;
use lifeboat_common::keyring::Keyring;
use lifeboat_common::Trip;

/// Upload frames a connect may take, as the server's default.
const MAX_UPLOAD_FRAMES: usize = 16;

/// The connect upload `edge` sends (its `Hello` and `Upload` frames), reassembled.
pub fn connect_upload(keyring: &Keyring, edge: &EdgeCore<Trip>, available: bool) -> Connected {
    let token = keyring.device_token(edge.device());
    let mut intake = ConnectIntake::new(MAX_UPLOAD_FRAMES);
    for frame in edge.hello(token, available) {
        match intake.handle_frame(frame, keyring) {
            Ok(IntakeStep::More) => {}
            Ok(IntakeStep::Done(connected)) => return connected,
            Err(e) => panic!("test wiring: {} refused at connect: {e}", edge.device()),
        }
    }
    panic!(
        "test wiring: {}'s hello ended before its connect upload was complete",
        edge.device()
    );
}
