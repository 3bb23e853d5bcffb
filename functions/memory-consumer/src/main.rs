//! Lambda entry point of `memory-consumer`.

fn main() {}
