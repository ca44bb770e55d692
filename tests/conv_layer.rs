//! `nn::Conv` on every kernel it can choose, grouped, dilated and general transposed ones
//! (candle's kernels) included: the forward pass against a direct f64 evaluation of the
//! definition, and the gradients of input, weight and bias against central differences.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::{seeded_uniform, values};
use rand::rngs::StdRng;
use rand::SeedableRng;
use unetpp::nn::{Conv2d, ConvConfig};

/// The layer's geometry, as the reference reads it.
struct Geometry {
    k: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    groups: usize,
    output_padding: usize,
    transposed: bool,
}

/// The definition of PyTorch's `conv2d` / `conv_transpose2d`, one output at a time.
fn reference(
    x: &[f64],
    xd: [usize; 4],
    w: &[f64],
    b: &[f64],
    c_out: usize,
    g: &Geometry,
) -> Vec<f64> {
    let [n, c_in, h, wd] = xd;
    let k = g.k;
    let span = g.dilation * (k - 1) + 1;
    let (oh, ow) = if g.transposed {
        (
            (h - 1) * g.stride + span + g.output_padding - 2 * g.padding,
            (wd - 1) * g.stride + span + g.output_padding - 2 * g.padding,
        )
    } else {
        (
            (h + 2 * g.padding - span) / g.stride + 1,
            (wd + 2 * g.padding - span) / g.stride + 1,
        )
    };
    let (ci_g, co_g) = (c_in / g.groups, c_out / g.groups);
    let mut y = vec![0.0; n * c_out * oh * ow];
    for b_ in 0..n {
        for co in 0..c_out {
            let grp = co / co_g;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = b[co];
                    for cg in 0..ci_g {
                        let ci = grp * ci_g + cg;
                        for ky in 0..k {
                            for kx in 0..k {
                                // Input position read (conv) or written from (transposed).
                                let pos = |o: usize, kk: usize, size: usize| -> Option<usize> {
                                    if g.transposed {
                                        let t =
                                            (o + g.padding) as isize - (kk * g.dilation) as isize;
                                        if t < 0 || !(t as usize).is_multiple_of(g.stride) {
                                            return None;
                                        }
                                        let i = t as usize / g.stride;
                                        (i < size).then_some(i)
                                    } else {
                                        let i = (o * g.stride + kk * g.dilation) as isize
                                            - g.padding as isize;
                                        (i >= 0 && (i as usize) < size).then_some(i as usize)
                                    }
                                };
                                let (Some(iy), Some(ix)) = (pos(oy, ky, h), pos(ox, kx, wd)) else {
                                    continue;
                                };
                                let wv = if g.transposed {
                                    w[((ci * co_g + co % co_g) * k + ky) * k + kx]
                                } else {
                                    w[((co * ci_g + cg) * k + ky) * k + kx]
                                };
                                acc += wv * x[((b_ * c_in + ci) * h + iy) * wd + ix];
                            }
                        }
                    }
                    y[((b_ * c_out + co) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    y
}

impl Geometry {
    const fn conv(k: usize, stride: usize, padding: usize) -> Self {
        Geometry {
            k,
            stride,
            padding,
            dilation: 1,
            groups: 1,
            output_padding: 0,
            transposed: false,
        }
    }

    fn config(&self) -> ConvConfig {
        let cfg = if self.transposed {
            ConvConfig::transposed(self.k, self.stride)
        } else {
            ConvConfig::new(self.k).stride(self.stride)
        };
        cfg.padding(self.padding)
            .dilation(self.dilation)
            .groups(self.groups)
            .output_padding(self.output_padding)
    }
}

#[test]
fn every_kernel_choice_matches_the_definition_and_central_differences() {
    let cases = [
        ("3x3 stride 1 (the crate's kernel)", Geometry::conv(3, 1, 1)),
        ("1x1 (a matrix product)", Geometry::conv(1, 1, 0)),
        ("5x5 stride 2 (the general kernel)", Geometry::conv(5, 2, 2)),
        (
            "grouped (candle)",
            Geometry {
                groups: 2,
                ..Geometry::conv(3, 1, 1)
            },
        ),
        (
            "dilated (candle)",
            Geometry {
                dilation: 2,
                ..Geometry::conv(3, 1, 2)
            },
        ),
        (
            "2x2 stride 2 transposed (a matrix product)",
            Geometry {
                transposed: true,
                ..Geometry::conv(2, 2, 0)
            },
        ),
        (
            "3x3 stride 2 transposed (candle)",
            Geometry {
                transposed: true,
                output_padding: 1,
                ..Geometry::conv(3, 2, 1)
            },
        ),
    ];
    let (c_in, c_out) = (4, 6);
    let mut rng = StdRng::seed_from_u64(17);
    for (what, geometry) in cases {
        let cfg = geometry.config();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
        let conv = Conv2d::new(c_in, c_out, cfg, vb.pp("conv")).unwrap();
        let (weight, bias) = {
            let data = varmap.data().lock().unwrap();
            (data["conv.weight"].clone(), data["conv.bias"].clone())
        };
        weight
            .set(&seeded_uniform(weight.dims(), &mut rng, 0.5))
            .unwrap();
        bias.set(&seeded_uniform(bias.dims(), &mut rng, 0.5))
            .unwrap();
        let xd = [2, c_in, 7, 6];
        let x = Var::from_tensor(&seeded_uniform(&xd, &mut rng, 1.0)).unwrap();

        let y = conv.forward(x.as_tensor()).unwrap();
        let want = reference(
            &values(x.as_tensor()),
            xd,
            &values(weight.as_tensor()),
            &values(bias.as_tensor()),
            c_out,
            &geometry,
        );
        let got = values(&y);
        assert_eq!(got.len(), want.len(), "{what}: output {:?}", y.dims());
        let err = got
            .iter()
            .zip(&want)
            .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(err < 1e-12, "{what}: forward off by {err:.2e}");

        // Loss: a fixed random weighting of the output.
        let r = seeded_uniform(y.dims(), &mut rng, 1.0);
        let loss = |c: &Conv2d| -> f64 {
            (c.forward(x.as_tensor()).unwrap() * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let grads = (conv.forward(x.as_tensor()).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, var) in [("input", &x), ("weight", &weight), ("bias", &bias)] {
            let analytic = values(
                grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{what}: no gradient for the {name}")),
            );
            let base = var.as_tensor().copy().unwrap();
            let flat = values(&base);
            let eps = 1e-6;
            let mut worst = 0f64;
            let mut scale = 0f64;
            for i in 0..flat.len() {
                let at = |d: f64| {
                    let mut v = flat.clone();
                    v[i] += d;
                    var.set(&Tensor::from_vec(v, base.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                    loss(&conv)
                };
                let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
                scale = scale.max(numeric.abs());
                worst = worst.max((numeric - analytic[i]).abs());
            }
            var.set(&base).unwrap();
            assert!(
                worst <= 1e-6 * scale.max(1.0),
                "{what}: gradient of the {name} off by {worst:.2e} (largest {scale:.2e})"
            );
        }
    }
}
