//! Test guest: appends `+v2.0.0` to text messages.

include!("../../test-tagger-1/src/tagger.rs");
