//! Checks of the RoI heads' inputs: feature maps, proposals and image sizes.

use candle_core::Tensor;

use super::RoiHeads;
use crate::{Error, Result};

impl RoiHeads {
    /// Checks the features, proposals and image sizes of [`Self::forward`].
    pub(super) fn check_inputs(
        &self,
        features: &[Tensor],
        proposals: &[Tensor],
        image_sizes: &[(usize, usize)],
    ) -> Result<()> {
        let want = self.cfg.num_feature_maps();
        if features.len() != want {
            return Err(Error::Shape(format!(
                "RoiHeads expects {want} feature maps (the FPN's '0'..'{}', finest first, \
                 without 'pool'), got {}",
                want - 1,
                features.len()
            )));
        }
        let mut batch = None;
        for (l, f) in features.iter().enumerate() {
            let (n, c, _, _) = f.dims4().map_err(|_| {
                Error::Shape(format!(
                    "RoiHeads: feature map {l} must be (N, C, H, W), got {:?}",
                    f.dims()
                ))
            })?;
            if c != self.cfg.in_channels() {
                return Err(Error::Shape(format!(
                    "RoiHeads: feature map {l} has {c} channels, expected {}",
                    self.cfg.in_channels()
                )));
            }
            if *batch.get_or_insert(n) != n {
                return Err(Error::Shape(format!(
                    "RoiHeads: feature maps hold different numbers of images: {:?}",
                    features.iter().map(|f| f.dims()[0]).collect::<Vec<_>>()
                )));
            }
        }
        let n = batch.unwrap_or(0);
        if proposals.len() != n || image_sizes.len() != n {
            return Err(Error::Shape(format!(
                "RoiHeads: the feature maps hold {n} images, but got {} proposal tensors and \
                 {} image sizes",
                proposals.len(),
                image_sizes.len()
            )));
        }
        if let Some((i, s)) = image_sizes
            .iter()
            .enumerate()
            .find(|(_, s)| s.0 == 0 || s.1 == 0)
        {
            return Err(Error::Input(format!(
                "RoiHeads: image {i} has an empty size {}x{}",
                s.0, s.1
            )));
        }
        proposal_counts(proposals)?;
        Ok(())
    }
}

/// The number of boxes of each `(K_i, 4)` float proposal tensor.
pub(super) fn proposal_counts(proposals: &[Tensor]) -> Result<Vec<usize>> {
    proposals
        .iter()
        .enumerate()
        .map(|(i, p)| match p.dims() {
            &[k, 4] if p.dtype().is_float() => Ok(k),
            dims => Err(Error::Shape(format!(
                "RoiHeads: the proposals of image {i} must be a (K, 4) float tensor, got \
                 {dims:?} {:?}",
                p.dtype()
            ))),
        })
        .collect()
}
