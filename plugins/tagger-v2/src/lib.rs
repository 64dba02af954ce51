//! `tagger` 2.0.0: stamps messages with its version (see ../tagger-v1/README.md).

include!("../../tagger-v1/src/tagger.rs");
