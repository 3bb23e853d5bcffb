//! Lambda entry point of `elaborate`.

fn main() {}
