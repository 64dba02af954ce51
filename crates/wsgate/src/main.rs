//! wsgate.
fn main() {}
