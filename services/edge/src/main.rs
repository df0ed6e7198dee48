//! The `as2-edge` binary.

fn main() {}
