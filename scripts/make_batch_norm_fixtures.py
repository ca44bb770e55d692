"""Training-mode batch-norm fixtures from PyTorch for tests/batch_norm.rs.

Writes tests/fixtures/batch_norm.safetensors: an input `x` (2, 5, 7, 9) with per-channel
offsets and scales, scale `gamma`, shift `beta`, upstream gradient `r`, running statistics
before (`rm0`, `rv0`) and what torch.nn.functional.batch_norm(training=True, momentum=0.1,
eps=1e-5) gives: the output `y`, the gradients `dx`, `dgamma`, `dbeta` of sum(y * r), and the
running statistics after (`rm1`, `rv1`).

    ../venv/bin/python scripts/make_batch_norm_fixtures.py
"""

import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

torch.manual_seed(9)
c = 5
x = (torch.randn(2, c, 7, 9) * torch.linspace(0.5, 3.0, c).view(1, c, 1, 1)
     + torch.linspace(-2.0, 4.0, c).view(1, c, 1, 1)).requires_grad_(True)
gamma = (torch.rand(c) + 0.5).requires_grad_(True)
beta = torch.randn(c).requires_grad_(True)
rm0, rv0 = torch.randn(c) * 0.5, torch.rand(c) + 1.0
rm, rv = rm0.clone(), rv0.clone()
y = F.batch_norm(x, rm, rv, gamma, beta, training=True, momentum=0.1, eps=1e-5)
r = torch.randn_like(y)
(y * r).sum().backward()
out = {
    "x": x, "gamma": gamma, "beta": beta, "r": r, "rm0": rm0, "rv0": rv0, "y": y,
    "dx": x.grad, "dgamma": gamma.grad, "dbeta": beta.grad, "rm1": rm, "rv1": rv,
}
out = {k: v.detach().contiguous() for k, v in out.items()}
path = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/batch_norm.safetensors"
save_file(out, str(path))
print(f"wrote {path} ({path.stat().st_size} bytes)")
