//! `tagger` 1.0.0: stamps messages with its version (see README.md).

include!("tagger.rs");
