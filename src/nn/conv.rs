//! The convolution layer. It owns its weight, bias and geometry, and it alone chooses the
//! kernel that runs it: no model calls a convolution op directly.

use candle_core::{Module, Tensor};
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::{BatchNorm, Init, VarBuilder};

use crate::ops;
use crate::{Error, Result};

/// The geometry and initialisation of a [`Conv`]: PyTorch's `Conv2d` / `ConvTranspose2d`
/// arguments, the same on every spatial axis.
///
/// ```
/// use unetpp::nn::ConvConfig;
/// let stem = ConvConfig::new(7).stride(2).padding(3).bias(false);
/// assert_eq!(stem.kernel(), 7);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ConvConfig {
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    groups: usize,
    output_padding: usize,
    transposed: bool,
    bias: bool,
    weight_init: Init,
    bias_init: Init,
}

impl ConvConfig {
    /// A `kernel × kernel` convolution: stride 1, no padding, dilation 1, one group, with a
    /// bias. New weights (drawn when the `VarBuilder` creates them) follow He et al.: normal
    /// with standard deviation `sqrt(2 / fan_in)`; the bias starts at zero.
    pub fn new(kernel: usize) -> Self {
        Self {
            kernel,
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
            output_padding: 0,
            transposed: false,
            bias: true,
            weight_init: Init::Kaiming {
                dist: NormalOrUniform::Normal,
                fan: FanInOut::FanIn,
                non_linearity: NonLinearity::ReLU,
            },
            bias_init: Init::Const(0.0),
        }
    }

    /// A `kernel × kernel` convolution that keeps the size: padding `kernel / 2` (odd kernels).
    pub fn same(kernel: usize) -> Self {
        Self::new(kernel).padding(kernel / 2)
    }

    /// A transposed convolution (PyTorch's `ConvTranspose2d`; weight `(C_in, C_out / groups,
    /// k, k)`) of `kernel` and `stride`.
    pub fn transposed(kernel: usize, stride: usize) -> Self {
        Self {
            transposed: true,
            ..Self::new(kernel).stride(stride)
        }
    }

    /// The stride.
    pub fn stride(mut self, stride: usize) -> Self {
        self.stride = stride;
        self
    }

    /// Zero padding on both sides of every axis.
    pub fn padding(mut self, padding: usize) -> Self {
        self.padding = padding;
        self
    }

    /// The dilation.
    pub fn dilation(mut self, dilation: usize) -> Self {
        self.dilation = dilation;
        self
    }

    /// The number of groups (it must divide both channel counts).
    pub fn groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    /// Extra rows and columns at the end of a transposed convolution's output.
    pub fn output_padding(mut self, output_padding: usize) -> Self {
        self.output_padding = output_padding;
        self
    }

    /// Whether the layer has a bias.
    pub fn bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// How a new weight is drawn.
    pub fn weight_init(mut self, init: Init) -> Self {
        self.weight_init = init;
        self
    }

    /// How a new bias is drawn.
    pub fn bias_init(mut self, init: Init) -> Self {
        self.bias_init = init;
        self
    }

    /// The kernel size.
    pub fn kernel(&self) -> usize {
        self.kernel
    }

    /// Whether it is a transposed convolution.
    pub fn is_transposed(&self) -> bool {
        self.transposed
    }

    fn validate(&self, c_in: usize, c_out: usize) -> Result<()> {
        let positive = [
            ("kernel", self.kernel),
            ("stride", self.stride),
            ("dilation", self.dilation),
            ("groups", self.groups),
            ("in_channels", c_in),
            ("out_channels", c_out),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(Error::config(field, "must be at least 1"));
            }
        }
        if !c_in.is_multiple_of(self.groups) || !c_out.is_multiple_of(self.groups) {
            return Err(Error::config(
                "groups",
                format!(
                    "{} groups do not divide {c_in} input and {c_out} output channels",
                    self.groups
                ),
            ));
        }
        if self.transposed {
            if self.groups != 1 {
                return Err(Error::config(
                    "groups",
                    "transposed convolutions have one group",
                ));
            }
            if self.output_padding >= self.stride.max(self.dilation) {
                return Err(Error::config(
                    "output_padding",
                    format!(
                        "{} must be smaller than the stride or the dilation",
                        self.output_padding
                    ),
                ));
            }
        } else if self.output_padding != 0 {
            return Err(Error::config(
                "output_padding",
                "only a transposed convolution has an output padding",
            ));
        }
        Ok(())
    }
}

/// A convolution over `D` spatial dimensions, `(N, C_in, *spatial)` to `(N, C_out,
/// *spatial')`, with weights named `weight` and `bias` under its `VarBuilder` prefix (PyTorch's
/// layout: `(C_out, C_in / groups, k, …)`, transposed `(C_in, C_out / groups, k, …)`).
///
/// The layer chooses the kernel, the only place in the crate that does: on the CPU with `f32`
/// tensors, 3×3 stride-1 convolutions run the crate's Winograd or GEMM kernels (with a fused
/// ReLU and, at inference, reading concatenated inputs where they lie), 1×1 ones a matrix
/// product, other ones without dilation or groups the crate's general kernel, 2×2 stride-2
/// transposed ones a matrix product; every other case, and other devices, candle's kernels.
/// The spatial rank `D` is a parameter of the type: construction, weights and batch-norm
/// folding are the same for every rank; running is implemented for `D = 2`.
///
/// ```
/// use candle_core::{DType, Device, Module, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use unetpp::nn::{Conv, ConvConfig};
///
/// let varmap = VarMap::new();
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
/// let conv = Conv::new(3, 8, ConvConfig::same(3).stride(2), vb.pp("conv"))?;
/// let x = Tensor::zeros((1, 3, 16, 16), DType::F32, &Device::Cpu)?;
/// assert_eq!(Module::forward(&conv, &x)?.dims(), &[1, 8, 8, 8]);
/// assert_eq!(conv.weight().dims(), &[8, 3, 3, 3]);
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Conv<const D: usize = 2> {
    weight: Tensor,
    bias: Option<Tensor>,
    cfg: ConvConfig,
}

/// A 2-D convolution.
pub type Conv2d = Conv<2>;

impl<const D: usize> Conv<D> {
    /// The layer from `c_in` to `c_out` channels, its `weight` (and `bias`) read from `vb`.
    pub fn new(c_in: usize, c_out: usize, cfg: ConvConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate(c_in, c_out)?;
        let (first, second) = if cfg.transposed {
            (c_in, c_out / cfg.groups)
        } else {
            (c_out, c_in / cfg.groups)
        };
        let mut shape = vec![first, second];
        shape.extend([cfg.kernel; D]);
        let weight = vb.get_with_hints(shape, "weight", cfg.weight_init)?;
        let bias = if cfg.bias {
            Some(vb.get_with_hints(c_out, "bias", cfg.bias_init)?)
        } else {
            None
        };
        Ok(Self { weight, bias, cfg })
    }

    /// The layer of `cfg` with the given tensors (their shapes are checked).
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>, cfg: ConvConfig) -> Result<Self> {
        if weight.rank() != D + 2 || weight.dims()[2..].iter().any(|&k| k != cfg.kernel) {
            return Err(Error::Shape(format!(
                "a {D}-D convolution of kernel {} needs a weight of rank {} with that kernel, got {:?}",
                cfg.kernel,
                D + 2,
                weight.dims()
            )));
        }
        let c_out = if cfg.transposed {
            weight.dims()[1] * cfg.groups
        } else {
            weight.dims()[0]
        };
        if let Some(b) = &bias {
            if b.dims() != [c_out] {
                return Err(Error::Shape(format!(
                    "bias {:?} does not fit {c_out} output channels",
                    b.dims()
                )));
            }
        }
        let cfg = cfg.bias(bias.is_some());
        Ok(Self { weight, bias, cfg })
    }

    /// The weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &ConvConfig {
        &self.cfg
    }

    /// The output channels.
    pub fn out_channels(&self) -> usize {
        let d = self.weight.dims();
        if self.cfg.transposed {
            d[1] * self.cfg.groups
        } else {
            d[0]
        }
    }

    /// This convolution followed by `bn` with its running statistics, as one convolution:
    /// the kernel scaled per output channel by `γ / √(σ² + ε)` and the bias
    /// `β + (b − μ)·γ / √(σ² + ε)`. Computed from the current values, so weights loaded or
    /// trained since take effect; gradients reach the kernel, the bias, `γ` and `β`, never the
    /// running statistics. Saves the passes over the output that normalising it takes.
    pub fn fold_batch_norm(&self, bn: &BatchNorm) -> Result<Self> {
        if self.cfg.transposed {
            return Err(Error::config(
                "batch_norm",
                "folding a batch-norm into a transposed convolution is not supported",
            ));
        }
        let (mean, var) = (bn.running_mean().detach(), bn.running_var().detach());
        let inv_std = (var + bn.eps())?.sqrt()?.recip()?;
        let (scale, shift) = match bn.weight_and_bias() {
            Some((gamma, beta)) => (gamma.mul(&inv_std)?, beta.clone()),
            None => (inv_std.clone(), inv_std.zeros_like()?),
        };
        let centred = match &self.bias {
            Some(b) => (b - mean)?,
            None => mean.neg()?,
        };
        let bias = (shift + centred.mul(&scale)?)?;
        let mut dims = vec![1; self.weight.rank()];
        dims[0] = scale.elem_count();
        let weight = self.weight.broadcast_mul(&scale.reshape(dims)?)?;
        Ok(Self {
            weight,
            bias: Some(bias),
            cfg: self.cfg.bias(true),
        })
    }

    /// A copy whose tensors are detached from any variable.
    pub fn detach(&self) -> Self {
        Self {
            weight: self.weight.detach(),
            bias: self.bias.as_ref().map(Tensor::detach),
            cfg: self.cfg,
        }
    }
}

impl Conv<2> {
    /// The convolution of `x` `(N, C_in, H, W)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_concat(std::slice::from_ref(x), false)
    }

    /// The convolution of `x` followed by a ReLU when `relu` is set; on the crate's 3×3
    /// kernels the ReLU is applied while the output is still in cache.
    pub fn forward_fused(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        self.forward_concat(std::slice::from_ref(x), relu)
    }

    /// [`Self::forward_fused`] of the channel-wise concatenation of `parts`. At inference on
    /// the crate's 3×3 kernels the parts are read where they lie and the concatenation is
    /// never built (the dense skips of a UNet++ node).
    pub fn forward_concat(&self, parts: &[Tensor], relu: bool) -> Result<Tensor> {
        let first = parts
            .first()
            .ok_or_else(|| Error::Shape("a convolution of no input".into()))?;
        let c = &self.cfg;
        let w = &self.weight;
        let b = self.bias.as_ref();
        let plain = c.dilation == 1 && c.groups == 1;
        if !c.transposed && plain && c.kernel == 3 && c.stride == 1 && c.padding == 1 {
            return ops::conv3x3_concat(parts, w, b, relu);
        }
        let joined;
        let x = if parts.len() == 1 {
            first
        } else {
            joined = Tensor::cat(parts, 1)?;
            &joined
        };
        let y = if c.transposed {
            if c.kernel == 2 && c.stride == 2 && c.padding == 0 && plain && c.output_padding == 0 {
                ops::conv_transpose2x2(x, w, b)?
            } else {
                let y = x.conv_transpose2d(w, c.padding, c.output_padding, c.stride, c.dilation)?;
                add_bias(y, b)?
            }
        } else if plain && c.kernel == 1 && c.stride == 1 && c.padding == 0 {
            ops::conv1x1(x, w, b)?
        } else if plain {
            ops::conv2d(x, w, b, c.stride, c.padding)?
        } else {
            let y = x.conv2d(w, c.padding, c.stride, c.dilation, c.groups)?;
            add_bias(y, b)?
        };
        Ok(if relu { crate::ops::relu(&y)? } else { y })
    }
}

fn add_bias(y: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        Some(b) => ops::bias_add(&y, b),
        None => Ok(y),
    }
}

impl Module for Conv<2> {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(Conv::forward(self, x)?)
    }
}
