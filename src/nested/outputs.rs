//! What a forward pass returns: the logits of every head, and the paper's two inference modes.

use candle_core::Tensor;

use crate::{Error, Result};

/// Logits of the heads `X^{0,j}` of one forward pass, ascending in `j`.
///
/// - [`Outputs::accurate`]: the paper's accurate mode, the mean of all heads' probabilities.
/// - [`Outputs::fast`]: fast mode, the probabilities of one chosen head.
#[derive(Debug, Clone)]
pub struct Outputs {
    cols: Vec<usize>,
    logits: Vec<Tensor>,
    num_classes: usize,
}

impl Outputs {
    pub(crate) fn new(cols: Vec<usize>, logits: Vec<Tensor>, num_classes: usize) -> Self {
        Self {
            cols,
            logits,
            num_classes,
        }
    }

    /// Columns `j` of the heads, ascending.
    pub fn cols(&self) -> &[usize] {
        &self.cols
    }

    /// Logits of every head, `(N, classes, H, W)` each, in the order of [`Self::cols`].
    pub fn logits(&self) -> &[Tensor] {
        &self.logits
    }

    /// Logits of the head on `X^{0,col}`.
    pub fn head(&self, col: usize) -> Result<&Tensor> {
        self.cols
            .iter()
            .position(|&c| c == col)
            .map(|p| &self.logits[p])
            .ok_or_else(|| {
                Error::config(
                    "head",
                    format!(
                        "no head on X^{{0,{col}}}; this network has heads on columns {:?}",
                        self.cols
                    ),
                )
            })
    }

    /// Logits of the deepest head (`X^{0,L}`, or `X^{0,k}` for a network pruned to `L_k`).
    pub fn last(&self) -> &Tensor {
        // An Outputs always holds at least one head: configs without heads are rejected.
        &self.logits[self.logits.len() - 1]
    }

    /// Turns logits into probabilities: sigmoid for one class, softmax over classes otherwise.
    pub fn probabilities(&self, logits: &Tensor) -> Result<Tensor> {
        Ok(if self.num_classes == 1 {
            candle_nn::ops::sigmoid(logits)?
        } else {
            candle_nn::ops::softmax(logits, 1)?
        })
    }

    /// Accurate mode: the mean of the probabilities of all heads.
    pub fn accurate(&self) -> Result<Tensor> {
        let mut sum = self.probabilities(&self.logits[0])?;
        for l in &self.logits[1..] {
            sum = (sum + self.probabilities(l)?)?;
        }
        Ok((sum / self.logits.len() as f64)?)
    }

    /// Fast mode: the probabilities of the head on `X^{0,col}`.
    pub fn fast(&self, col: usize) -> Result<Tensor> {
        self.probabilities(self.head(col)?)
    }

    /// Consumes the outputs, returning the logits of every head.
    pub fn into_logits(self) -> Vec<Tensor> {
        self.logits
    }
}
