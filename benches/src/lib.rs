//! Empty library: the benches live in `benches/`.
