//! The UNet++ grid: which nodes `X^{i,j}` exist and what each one reads.
//!
//! This is a pure description, computed without tensors; the model walks it. A network of
//! depth `L` has the nodes with `i + j ≤ L`. Node `X^{i,0}` reads the pooled `X^{i-1,0}` (or
//! the image); node `X^{i,j}` with `j > 0` reads the dense skips `X^{i,0..j-1}` and the
//! up-sampled `X^{i+1,j-1}` (Eq. 1 of the paper).
//!
//! Nodes are listed anti-diagonal by anti-diagonal (`i + j = 0, 1, …`), and within one
//! anti-diagonal from the deepest node up. Every node then comes after its inputs, and the
//! nodes of a network pruned to level `k` are exactly the first ones of the list.

/// A node `X^{i,j}`: `level` is `i` (down-sampling level, 0 = full resolution), `col` is `j`
/// (position along the skip pathway).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node {
    /// `i`: the down-sampling level.
    pub level: usize,
    /// `j`: the column along the skip pathway.
    pub col: usize,
}

impl Node {
    /// `X^{level,col}`.
    pub const fn new(level: usize, col: usize) -> Self {
        Self { level, col }
    }

    /// The stable weight-name prefix of the node's block, `x_{i}_{j}`.
    pub fn name(&self) -> String {
        format!("x_{}_{}", self.level, self.col)
    }
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "X^{{{},{}}}", self.level, self.col)
    }
}

/// Order in which a node concatenates its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ConcatOrder {
    /// `[U(X^{i+1,j-1}), X^{i,0}, …, X^{i,j-1}]`: the official code of the paper.
    #[default]
    UpsampledFirst,
    /// `[X^{i,0}, …, X^{i,j-1}, U(X^{i+1,j-1})]`: MONAI and NestedUNet.
    SkipsFirst,
}

/// One input of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The image itself (only `X^{0,0}`).
    Image,
    /// The 2×2 max-pooled output of a node (the paper's `D`).
    Pooled(Node),
    /// A node's output at its own resolution (a dense skip).
    Skip(Node),
    /// A node's output up-sampled ×2 (the paper's `U`).
    Upsampled(Node),
}

/// How the encoder reaches the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Skips {
    /// UNet++: every node `X^{i,j}` with `i + j ≤ L`, each reading all of `X^{i,0..j-1}`.
    #[default]
    Nested,
    /// U-Net: the encoder `X^{i,0}` and one decoder node per level, `X^{i,L-i}`, which reads
    /// only `X^{i,0}` (the plain skip connection) beside the up-sampled node below it.
    Plain,
}

/// The nodes of a UNet++ (or of the plain U-Net on the same grid) of some depth, in
/// evaluation order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grid {
    depth: usize,
    skips: Skips,
    nodes: Vec<Node>,
}

impl Grid {
    /// All nodes `X^{i,j}` with `i + j ≤ depth`.
    ///
    /// ```
    /// use unetpp::nested::{Grid, Node};
    /// let g = Grid::new(2);
    /// assert_eq!(g.nodes().len(), 6);
    /// assert_eq!(g.nodes()[2], Node::new(0, 1)); // X^{1,0} comes before X^{0,1}
    /// ```
    pub fn new(depth: usize) -> Self {
        let mut nodes = Vec::new();
        for diagonal in 0..=depth {
            for col in 0..=diagonal {
                nodes.push(Node::new(diagonal - col, col));
            }
        }
        Self {
            depth,
            skips: Skips::Nested,
            nodes,
        }
    }

    /// The plain U-Net of `depth` on the same grid: the encoder `X^{0..L,0}`, then the decoder
    /// `X^{L-1,1}, X^{L-2,2}, …, X^{0,L}`. Its single head sits on `X^{0,L}`.
    ///
    /// ```
    /// use unetpp::nested::{Grid, Node};
    /// let g = Grid::plain(2);
    /// assert_eq!(g.nodes(), &[Node::new(0, 0), Node::new(1, 0), Node::new(2, 0),
    ///                         Node::new(1, 1), Node::new(0, 2)]);
    /// ```
    pub fn plain(depth: usize) -> Self {
        let encoder = (0..=depth).map(|i| Node::new(i, 0));
        let decoder = (0..depth).rev().map(|i| Node::new(i, depth - i));
        Self {
            depth,
            skips: Skips::Plain,
            nodes: encoder.chain(decoder).collect(),
        }
    }

    /// Nested (UNet++) or plain (U-Net) skips.
    pub fn skips(&self) -> Skips {
        self.skips
    }

    /// The sub-grid a network pruned to `L_k` needs: the nodes with `i + j ≤ k`. A plain
    /// grid has no sub-networks (its only head needs every node) and is returned whole.
    pub fn at_level(&self, k: usize) -> Grid {
        match self.skips {
            Skips::Nested => Grid::new(k.min(self.depth)),
            Skips::Plain => self.clone(),
        }
    }

    /// `L`, the largest `i + j`.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// The nodes in evaluation order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Position of `node` in [`Grid::nodes`], if it belongs to the grid.
    pub fn index(&self, node: Node) -> Option<usize> {
        if node.level + node.col > self.depth {
            return None;
        }
        if self.skips == Skips::Plain {
            return self.nodes.iter().position(|&n| n == node);
        }
        let d = node.level + node.col;
        Some(d * (d + 1) / 2 + node.col)
    }

    /// The nodes that can carry a head: `X^{0,1}, …, X^{0,L}` (only `X^{0,L}` in a plain grid).
    pub fn head_nodes(&self) -> Vec<Node> {
        match self.skips {
            Skips::Nested => (1..=self.depth).map(|j| Node::new(0, j)).collect(),
            Skips::Plain => vec![Node::new(0, self.depth)],
        }
    }

    /// What `node` concatenates, in `order`.
    pub fn inputs(&self, node: Node, order: ConcatOrder) -> Vec<Input> {
        let Node { level: i, col: j } = node;
        if j == 0 {
            return vec![if i == 0 {
                Input::Image
            } else {
                Input::Pooled(Node::new(i - 1, 0))
            }];
        }
        let first_col = match self.skips {
            Skips::Nested => 0..j,
            Skips::Plain => 0..1,
        };
        let skips = first_col.map(|c| Input::Skip(Node::new(i, c)));
        let up = Input::Upsampled(Node::new(i + 1, j - 1));
        match order {
            ConcatOrder::UpsampledFirst => std::iter::once(up).chain(skips).collect(),
            ConcatOrder::SkipsFirst => skips.chain(std::iter::once(up)).collect(),
        }
    }

    /// Channels that `node` reads, given the widths `f_i`, the image's channels, and whether
    /// up-sampling keeps the channels of the coarser level (interpolation) or maps them to
    /// `f_i` (transposed convolution). `None` when `widths` is too short for the node.
    pub fn in_channels(
        &self,
        node: Node,
        widths: &[usize],
        image_channels: usize,
        up_keeps_channels: bool,
    ) -> Option<usize> {
        let Node { level: i, col: j } = node;
        match (i, j) {
            (0, 0) => Some(image_channels),
            (_, 0) => widths.get(i - 1).copied(),
            _ => {
                let up = widths.get(if up_keeps_channels { i + 1 } else { i })?;
                let skips = match self.skips {
                    Skips::Nested => j,
                    Skips::Plain => 1,
                };
                Some(skips * widths.get(i)? + up)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_four_has_fifteen_nodes_each_after_its_inputs() {
        let g = Grid::new(4);
        assert_eq!(g.nodes().len(), 15);
        for (pos, &node) in g.nodes().iter().enumerate() {
            assert_eq!(g.index(node), Some(pos));
            for input in g.inputs(node, ConcatOrder::UpsampledFirst) {
                let src = match input {
                    Input::Image => continue,
                    Input::Pooled(n) | Input::Skip(n) | Input::Upsampled(n) => n,
                };
                assert!(g.index(src).unwrap() < pos, "{src} must come before {node}");
            }
        }
    }

    #[test]
    fn pruned_grid_is_a_prefix() {
        let g = Grid::new(4);
        for k in 1..=4 {
            let p = g.at_level(k);
            assert_eq!(p.nodes(), &g.nodes()[..p.nodes().len()]);
            assert!(p.nodes().iter().all(|n| n.level + n.col <= k));
        }
        assert_eq!(g.at_level(2).nodes().len(), 6);
    }

    #[test]
    fn plain_grid_is_a_u_net() {
        let g = Grid::plain(4);
        assert_eq!(g.nodes().len(), 9);
        for (pos, &node) in g.nodes().iter().enumerate() {
            assert_eq!(g.index(node), Some(pos));
            for input in g.inputs(node, ConcatOrder::UpsampledFirst) {
                if let Input::Pooled(n) | Input::Skip(n) | Input::Upsampled(n) = input {
                    assert!(g.index(n).unwrap() < pos, "{n} must come before {node}");
                }
            }
        }
        assert_eq!(
            g.inputs(Node::new(1, 3), ConcatOrder::SkipsFirst),
            vec![
                Input::Skip(Node::new(1, 0)),
                Input::Upsampled(Node::new(2, 2))
            ]
        );
        assert_eq!(g.index(Node::new(1, 1)), None);
        let f = [32, 64, 128, 256, 512];
        assert_eq!(g.in_channels(Node::new(0, 4), &f, 1, false), Some(64));
        assert_eq!(g.head_nodes(), vec![Node::new(0, 4)]);
    }

    #[test]
    fn concat_orders() {
        let g = Grid::new(3);
        let n = Node::new(0, 2);
        assert_eq!(
            g.inputs(n, ConcatOrder::UpsampledFirst),
            vec![
                Input::Upsampled(Node::new(1, 1)),
                Input::Skip(Node::new(0, 0)),
                Input::Skip(Node::new(0, 1))
            ]
        );
        assert_eq!(
            g.inputs(n, ConcatOrder::SkipsFirst),
            vec![
                Input::Skip(Node::new(0, 0)),
                Input::Skip(Node::new(0, 1)),
                Input::Upsampled(Node::new(1, 1))
            ]
        );
        assert_eq!(
            g.inputs(Node::new(2, 0), ConcatOrder::SkipsFirst),
            vec![Input::Pooled(Node::new(1, 0))]
        );
    }

    #[test]
    fn widths_follow_from_the_grid() {
        let g = Grid::new(4);
        let f = [32, 64, 128, 256, 512];
        assert_eq!(g.in_channels(Node::new(0, 0), &f, 1, false), Some(1));
        assert_eq!(g.in_channels(Node::new(3, 0), &f, 1, false), Some(128));
        assert_eq!(g.in_channels(Node::new(0, 4), &f, 1, false), Some(5 * 32));
        assert_eq!(
            g.in_channels(Node::new(0, 4), &f, 1, true),
            Some(4 * 32 + 64)
        );
        assert_eq!(g.in_channels(Node::new(3, 1), &f[..4], 1, true), None);
    }
}
