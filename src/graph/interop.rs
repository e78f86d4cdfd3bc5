//! petgraph interop.
