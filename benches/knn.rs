//! Feature k-NN bench (filled in by the graph-builders work).
fn main() {}
