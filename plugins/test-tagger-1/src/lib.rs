//! Test guest: appends `+v1.0.0` to text messages.

include!("tagger.rs");
