//! DOT export (Graphviz).
//!
//! See [`Graph::to_dot`] and [`Graph::to_dot_labelled`].

use super::Graph;
use std::fmt::Write;

impl Graph {
    /// The graph in Graphviz DOT, nodes `0..N` unlabelled.
    ///
    /// `digraph { ... }` with one line per node (so isolated nodes show), then one `j -> i;` line
    /// per edge in edge-id order, and the topology tag as a comment.
    ///
    /// ```
    /// use patchgraph::Graph;
    /// let g = Graph::from_edge_index(2, &[1], &[0]).unwrap();
    /// assert_eq!(g.to_dot(), "digraph {\n  // Custom\n  0;\n  1;\n  1 -> 0;\n}\n");
    /// let labelled = g.to_dot_labelled(|i| if i == 0 { "cls".into() } else { format!("patch {i}") });
    /// assert!(labelled.contains("  0 [label=\"cls\"];\n"));
    /// ```
    pub fn to_dot(&self) -> String {
        self.dot(None::<fn(usize) -> String>)
    }

    /// The graph in DOT with node `i` labelled `label(i)` (quotes and backslashes escaped).
    pub fn to_dot_labelled(&self, label: impl FnMut(usize) -> String) -> String {
        self.dot(Some(label))
    }

    fn dot(&self, mut label: Option<impl FnMut(usize) -> String>) -> String {
        let mut out = String::from("digraph {\n");
        // Writing into a String cannot fail.
        let _ = writeln!(out, "  // {:?}", self.topology);
        for i in 0..self.num_nodes {
            match label.as_mut() {
                Some(label) => {
                    let text = label(i).replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                    let _ = writeln!(out, "  {i} [label=\"{text}\"];");
                }
                None => {
                    let _ = writeln!(out, "  {i};");
                }
            }
        }
        for i in 0..self.num_nodes {
            for j in self.incoming(i) {
                let _ = writeln!(out, "  {j} -> {i};");
            }
        }
        out.push_str("}\n");
        out
    }
}
