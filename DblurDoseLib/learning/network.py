"""DblurDoseNet: a 3D depth-feature extractor feeding a 2D U-Net, plus the DVK map (global residual).

Tensor layout (all code here): ``[batch, channel, z, y, x]``, slices along dim 2, the same
order as the library's numpy ``[z, y, x]`` arrays. A *pack* is 11 consecutive slices;
the network maps a pack to the dose rate of its centre slice.

* Input ``x``: ``[B, 2, 11, Y, X]``, channel 0 the scaled SPECT, channel 1 the density (g/cm3).
* ``dvk``: ``[B, 1, Y, X]``, the scaled DVK dose rate of the centre slice. The U-Net's output
  corrects it (global residual; :meth:`DblurDoseNet.correct`: a factor in (1/20, 20), or added as
  in v0.2) and it is never fed into the network.
* Output: ``[B, 1, Y, X]``, the scaled dose rate of the centre slice (no clamping; the
  test-time clamp at 0 and the air mask live in :func:`postprocess`).

Architecture (paper, Fig. 3; the public reference code pins the details):

* Depth extractor: Conv3d 2->8, kernel (z,y,x) = (5,7,7), padding (1,3,3), no bias, BN,
  LeakyReLU(0.1); MaxPool over z only (2, ceil mode); Conv3d 8->16 (3,7,7), padding (0,3,3),
  no bias, BN, LeakyReLU(0.1); Conv3d 16->16 (3,7,7), padding (0,3,3), with bias, linear.
  z goes 11 -> 9 -> 5 -> 3 -> 1.
* 2D U-Net: 4 max-pool(2) downsamplings; each level a double 3x3 conv (no bias) + BN;
  LeakyReLU(0.1) in the encoder, ReLU in the decoder (the paper; ``ModelConfig.decoder_activation``
  "leaky", the default since v0.3, has no dead zone); encoder widths 16, 32, 64, 128 and a
  128-channel bottleneck; nearest x2 upsampling, skip concatenated before the upsampled map;
  decoder widths 64, 32, 16, 16 (first conv of each decoder level halves its input width);
  1x1 linear output. 1,143,233 parameters in all (the reference: about 1.14 M). The output
  layer starts small and random (both signs), not at zero: see :class:`UNet2D`.
* In-plane sizes that are not multiples of 16 are zero-padded (split evenly between the two
  sides) in front of the U-Net and cropped back after it.

Variants (same training): ``"dblurdose"`` (the paper's network), ``"no_residual"`` (the DVK is
not added), ``"2d"`` (no depth extractor: the 11 SPECT and 11 density slices are 22 channels,
SPECT first, into the same 2D U-Net; residual kept).

Resolution input (``ModelConfig.fwhm_input``): the SPECT's Gaussian-equivalent FWHM (mm; the chain's
blur, :mod:`DblurDoseLib.evaluation.resolution`) scales and shifts each of the U-Net's input channels,
``f (1 + a(w)) + b(w)`` with ``a, b`` linear in ``w = (FWHM - FWHM_CENTRE_MM) / FWHM_SPREAD_MM`` and zero
at the start, so that a network fine-tuned from one without it starts as that network. A network trained on
one chain applies that chain's deblurring to every input (pilot Zs, model card, session 13); this lets one
network deblur each chain by its own blur. Such a model needs the FWHM wherever it runs.

Scaling (:class:`ModelConfig`): with ``A`` the total activity of the input volume (Bq),
scaled SPECT = concentration (Bq/mL) x ``spect_scale_ml`` / A, scaled dose rate =
dose rate (mGy/h) x ``dose_scale`` / A; density stays in g/cm3. Both factors are per volume,
so the network never sees the count level, and the scaled values do not depend on the grid
(A is a physical total, not a voxel sum). With the defaults (1e4 mL, 1e8 Bq h/mGy) soft tissue
of a patient is of order 1 in all three inputs, like the density (the paper's "similar range").

Whole-volume and slab evaluation: :meth:`DblurDoseNet.forward_slab` returns, for ``S + 10``
consecutive slices, the ``S`` outputs of the ``S`` packs they contain, computing the depth
extractor's work once per slice position instead of once per pack (see
:meth:`DepthExtractor.forward_slab`); it equals the per-pack forward to float rounding.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DblurDoseError
from ..io.outputs import atomic_file
from ..physics.deconvolution import MEASURE_FWHM, check_fwhm
from ..physics.density import AIR_DENSITY_THRESHOLD

PACK = 11  # slices per input pack
HALF = PACK // 2  # slices either side of the centre
VARIANTS = ("dblurdose", "no_residual", "2d")
DECODER_ACTIVATIONS = ("leaky", "relu")
CORRECTIONS = ("ratio", "additive", "floored")
#: the "ratio" correction multiplies the DVK by a factor in (1 / RATIO_LIMIT, RATIO_LIMIT); 1/20 is
#: inference.TISSUE_FLOOR, so that the network itself never goes below the floor in tissue
RATIO_LIMIT = 20.0
#: the "floored" correction's transition to its floor (1 / RATIO_LIMIT of the DVK) is this fraction of the DVK wide
FLOOR_WIDTH = 0.02
#: scaled dose rate that keeps the "floored" transition's width positive where the DVK is 0
FLOOR_EPS = 1e-6
#: ModelConfig keys that model files of v0.2 and before lack, with the behaviour those files were trained with
LEGACY_CONFIG = {"decoder_activation": "relu", "correction": "additive"}
FORMAT = "dblurdosenet"
FORMAT_VERSION = 1
LEAK = 0.1
WIDTHS = (16, 32, 64, 128)  # U-Net encoder widths; the bottleneck keeps the last
OUTPUT_INIT_STD = 0.01  # initial weights of the 1x1 output layer (scaled units; see UNet2D)
#: the resolution input's centre and spread (mm): the training mix's chains lie at 8-16 mm (model card)
FWHM_CENTRE_MM, FWHM_SPREAD_MM = 12.0, 4.0
#: the second extractor conv's three outputs per pack as sums of (tap j, M-map shift) terms; "first" is
#: w0 p0[k] (+ bias), "last" w2 R[k] (see DepthExtractor._conv2_shared)
TAP_SUMS = (("first", (1, 0), (2, 2)), ((0, 0), (1, 2), (2, 4)), ((0, 2), (1, 4), "last"))
#: training: the tap sums as one autograd node (_TapSum); False: plain autograd of slices (the reference)
TAP_SUM_NODE = True


@dataclass
class ModelConfig:
    """Everything needed to use a set of weights, stored with them."""

    variant: str = "dblurdose"
    #: voxel size (x, y, z) in mm of the grid the model was trained on: its working grid
    spacing: tuple[float, float, float] = (0.98, 0.98, 3.0)
    #: scaled SPECT = Bq/mL x spect_scale_ml / total activity (Bq)
    spect_scale_ml: float = 1.0e4
    #: scaled dose rate = mGy/h x dose_scale / total activity (Bq)
    dose_scale: float = 1.0e8
    density_units: str = "g/cm3"
    pack: int = PACK
    #: activation of the U-Net's decoder: "leaky" (LeakyReLU(0.1), no dead zone) or "relu" (v0.2)
    decoder_activation: str = "leaky"
    #: how the U-Net's output ``c`` corrects the DVK (residual variants): "floored" (new models),
    #: DVK + c smoothly kept above DVK / RATIO_LIMIT; "additive", dose = DVK + c (v0.2); or "ratio",
    #: dose = DVK x exp(L tanh(c / L)) with L = ln(RATIO_LIMIT); see DblurDoseNet.correct
    correction: str = "floored"
    #: Richardson-Lucy iterations applied to the SPECT before the network (0: none, v0.2). With N > 0 the
    #: network's SPECT input and its residual base are the deconvolved SPECT (a Gaussian of the SPECT's
    #: Gaussian-equivalent FWHM, :mod:`DblurDoseLib.physics.deconvolution`) and its DVK: the FWHM is then
    #: needed at inference
    deconvolution_iterations: int = 0
    #: the SPECT's Gaussian-equivalent FWHM conditions the U-Net's input (module docstring); the FWHM is
    #: then needed at inference
    fwhm_input: bool = False
    version: int = FORMAT_VERSION
    #: free-form provenance (data set, epochs, losses, ...), JSON-serialisable
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise DblurDoseError(f"unknown DblurDoseNet variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        self.spacing = tuple(float(s) for s in self.spacing)
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise DblurDoseError(f"the model's working voxel size must be 3 positive numbers (mm), got {self.spacing}")
        for key, allowed in (("decoder_activation", DECODER_ACTIVATIONS), ("correction", CORRECTIONS)):
            if getattr(self, key) not in allowed:
                raise DblurDoseError(f"unknown {key} {getattr(self, key)!r} in the model config; choose one of "
                                     f"{', '.join(allowed)}")
        n = self.deconvolution_iterations
        if isinstance(n, bool) or not isinstance(n, (int, float)) or int(n) != n or n < 0:
            raise DblurDoseError(f"the model config's deconvolution iterations must be a whole number >= 0, got {n!r}")
        self.deconvolution_iterations = int(n)
        if not isinstance(self.fwhm_input, bool):
            raise DblurDoseError(f"the model config's fwhm_input must be true or false, got {self.fwhm_input!r}")
        if self.pack != PACK:
            raise DblurDoseError(f"this version handles packs of {PACK} slices, the model file says {self.pack}")

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """The config stored in a model file; keys it lacks (files of v0.2 and before) take the
        behaviour it was trained with (:data:`LEGACY_CONFIG`), not today's defaults."""
        known = {f.name for f in fields(cls)}
        return cls(**{**LEGACY_CONFIG, **{k: v for k, v in data.items() if k in known}})


# --- building blocks ------------------------------------------------------------------------


def _leaky(x: torch.Tensor) -> torch.Tensor:
    """LeakyReLU(0.1), in place when no gradient is being recorded (inference)."""
    return F.leaky_relu(x, LEAK, inplace=not torch.is_grad_enabled())


class DoubleConv(nn.Sequential):
    """(3x3 conv, no bias -> BN -> activation) twice; ``mid`` channels in between."""

    def __init__(self, cin: int, cout: int, act: str, mid: int | None = None) -> None:
        mid = mid or cout

        def activation() -> nn.Module:
            return nn.LeakyReLU(LEAK) if act == "leaky" else nn.ReLU()

        super().__init__(
            nn.Conv2d(cin, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), activation(),
            nn.Conv2d(mid, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), activation(),
        )


class UNet2D(nn.Module):
    """The 2D U-Net: ``[N, cin, Y, X] -> [N, 1, Y, X]``; any Y, X (padded to multiples of 16 inside).

    ``decoder``: the decoder's activation, "leaky" or "relu" (the paper's; its last features are
    then >= 0, and where all 16 are zero the output is the bias whatever the input).
    """

    def __init__(self, cin: int, decoder: str = "leaky") -> None:
        super().__init__()
        w = WIDTHS
        self.enc = nn.ModuleList(
            [DoubleConv(cin, w[0], "leaky")] + [DoubleConv(w[i], w[i + 1], "leaky") for i in range(3)]
        )
        self.bottom = DoubleConv(w[3], w[3], "leaky")
        # decoder level i takes cat(skip w[i], upsampled) and halves towards w[i - 1] (16 at the top)
        ups = []
        below = w[3]
        for i in (3, 2, 1, 0):
            cin_up = w[i] + below
            cout = w[max(i - 1, 0)]
            ups.append(DoubleConv(cin_up, cout, decoder, mid=cin_up // 2))
            below = cout
        self.dec = nn.ModuleList(ups)
        self.out = nn.Conv2d(w[0], 1, 1)
        # Start near "no correction" (the residual network begins close to the DVK), but NOT at zero:
        # the decoder's last features are ReLU outputs (>= 0), so with a zero-initialised output layer
        # every weight receives a gradient of one sign at the first steps and Adam moves them all alike.
        # Trained that way the shipped model of v0.1 ended with 16 negative weights, a correction
        # bounded above by its bias (+1.04 mGy/h in the demo) and no way to raise a lesion.
        # Small weights of both signs keep both directions open.
        nn.init.normal_(self.out.weight, std=OUTPUT_INIT_STD)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ny, nx = x.shape[-2:]
        py, px = (-ny) % 16, (-nx) % 16
        if py or px:
            x = F.pad(x, (px // 2, px - px // 2, py // 2, py - py // 2))
        skips = []
        for i, block in enumerate(self.enc):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = self.bottom(F.max_pool2d(x, 2))
        for block, skip in zip(self.dec, reversed(skips)):
            x = block(torch.cat([skip, F.interpolate(x, scale_factor=2.0, mode="nearest")], dim=1))
        x = self.out(x)
        if py or px:
            x = x[..., py // 2: py // 2 + ny, px // 2: px // 2 + nx]
        return x


class DepthExtractor(nn.Module):
    """``[B, 2, 11, Y, X] -> [B, 16, Y, X]``: three 3D convolutions collapse the 11 slices."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(2, 8, (5, 7, 7), padding=(1, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(8)
        self.conv2 = nn.Conv3d(8, 16, (3, 7, 7), padding=(0, 3, 3), bias=False)
        self.bn2 = nn.BatchNorm3d(16)
        self.conv3 = nn.Conv3d(16, 16, (3, 7, 7), padding=(0, 3, 3), bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] != PACK:
            raise ValueError(f"a pack has {PACK} slices, got {x.shape[2]}")
        x = _leaky(self.bn1(self.conv1(x)))  # z 11 -> 9
        x = F.max_pool3d(x, (2, 1, 1), ceil_mode=True)  # 9 -> 5
        x = _leaky(self.bn2(self.conv2(x)))  # 5 -> 3
        return self.conv3(x)[:, :, 0]  # 3 -> 1

    def forward_slab(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 2, S + 10, Y, X] -> [B, 16, S, Y, X]``: output k is ``forward(x[:, :, k:k + 11])``.

        Within a pack, the first conv's output j (of 9) sees pack slices j-1..j+3 with a zero
        slice in place of -1 and 11. Outputs 1..7 therefore depend only on the slab position
        g = k + j ("interior", F[g], one 5-tap conv over the slab); output 0 of pack k is the
        conv without its first tap (L[k]), output 8 the conv without its last tap (R[k]); each
        is computed once per pack. After BN and the activation, the ceil-mode z-pool of pack k
        is ``p0 = max(L[k], F[k+1]), p1..p3 = M[k+2], M[k+4], M[k+6], p4 = R[k]`` with
        ``M[g] = max(F[g], F[g+1])`` (once per position). The second conv's three outputs per
        pack read the triplets (p0 p1 p2), (p1 p2 p3), (p2 p3 p4); the taps that read M maps are
        computed once per M map (:meth:`_conv2_shared`), so the second conv costs 5 taps per
        pack instead of 9. The third conv reads the three results with z-stride 3; n0 and n2
        carry the pack's own edge maps L and R and n1 is read by that pack alone, so it costs
        what it costs per pack. Per output slice the first layer costs 13 + 30/S taps
        instead of 45 and the pooling a third.
        A conv bias (after BN folding, :func:`fuse_for_inference`) is honoured in every layer.

        In training mode the batch-norm statistics are those of the per-pack forward: BN1
        weights each interior position by the number of packs that contain it.
        """
        nb, _, nz = x.shape[:3]
        s = nz - (PACK - 1)
        if s < 1:
            raise ValueError(f"a slab needs at least {PACK} slices, got {nz}")
        w1, b1 = self.conv1.weight, self.conv1.bias
        inner = F.conv3d(x, w1, b1, padding=(0, 3, 3))  # F[g], g = 1 .. s + 6
        left = F.conv3d(x[:, :, : s + 3], w1[:, :, 1:], b1, padding=(0, 3, 3))  # L[k], k < s
        right = F.conv3d(x[:, :, 7:], w1[:, :, :4], b1, padding=(0, 3, 3))  # R[k] (at g = k + 8)
        inner, left, right = self._bn1_act(inner, left, right, s)
        p0 = torch.maximum(left, inner[:, :, :s])  # p0[k] = max(L[k], F[k + 1])
        mid = torch.maximum(inner[:, :, 1: s + 5], inner[:, :, 2: s + 6])  # M[g], g = 2 .. s + 5
        del inner, left
        q = self._conv2_shared(p0, mid, right, s)  # [B, 16, 3s, Y, X]: n0, n1, n2 of each pack, interleaved
        del p0, mid, right
        q = _leaky(self.bn2(q))
        return F.conv3d(q, self.conv3.weight, self.conv3.bias, stride=(3, 1, 1), padding=(0, 3, 3))

    def _conv2_shared(self, p0: torch.Tensor, mid: torch.Tensor, right: torch.Tensor, s: int) -> torch.Tensor:
        """The second conv's three outputs of every pack, sharing the taps that read the shared M maps.

        With ``w0, w1, w2`` its z-taps, pack k needs ``n0 = w0 p0[k] + w1 M[k+2] + w2 M[k+4]``,
        ``n1 = w0 M[k+2] + w1 M[k+4] + w2 M[k+6]`` and ``n2 = w0 M[k+4] + w1 M[k+6] + w2 R[k]``.
        Every tap of every M map is computed once (``T_j[g] = w_j M[g]``, one conv with the three
        taps as 48 output channels) and summed; only ``w0 p0`` and ``w2 R`` are per pack: 5 taps
        per pack instead of 9. The bias enters once per output (with ``T_0`` and ``w0 p0``).
        The sums are one autograd node (:class:`_TapSum`).
        """
        w, b = self.conv2.weight, self.conv2.bias  # [16, 8, 3, 7, 7]
        co = w.shape[0]
        taps = w.permute(2, 0, 1, 3, 4).reshape(3 * co, w.shape[1], 1, *w.shape[3:])
        tap_bias = None if b is None else torch.cat([b, b.new_zeros(2 * co)])
        t = F.conv3d(mid, taps, tap_bias, padding=(0, 3, 3))  # [B, 48, s + 4, ..]: T_j[i] for M[i + 2]
        first = F.conv3d(p0, w[:, :, :1], b, padding=(0, 3, 3))  # w0 p0[k] (+ bias)
        last = F.conv3d(right, w[:, :, 2:], None, padding=(0, 3, 3))  # w2 R[k]
        if TAP_SUM_NODE or not torch.is_grad_enabled():
            return _TapSum.apply(t, first, last)
        return torch.stack([a + b_ + c for a, b_, c in _tap_terms(t, first, last, s)], dim=3).flatten(2, 3)

    def _bn1_act(self, f1, left, right, s):
        """BN1 + activation on the three kinds of first-layer maps, with per-pack batch statistics."""
        bn = self.bn1
        if not isinstance(bn, nn.BatchNorm3d):  # folded into conv1 (fuse_for_inference)
            return tuple(_leaky(bn(t)) for t in (f1, left, right))
        if bn.training:
            # each pack holds F[k+1..k+7], L[k], R[k]: F[g] appears in min(g, 7, s + 7 - g, s) packs
            f32 = [t if t.dtype == torch.float64 else t.float() for t in (f1, left, right)]  # float32 under autocast
            g = torch.arange(1, s + 7, device=f1.device)
            mult = torch.minimum(torch.minimum(g, s + 7 - g), torch.full_like(g, min(7, s))).to(f32[0].dtype)
            mult = mult.view(1, 1, -1, 1, 1)
            count = 9.0 * s * f1.shape[0] * f1.shape[3] * f1.shape[4]
            dims = (0, 2, 3, 4)
            mean = ((f32[0] * mult).sum(dims) + f32[1].sum(dims) + f32[2].sum(dims)) / count
            cm = mean.view(1, -1, 1, 1, 1)
            var = (((f32[0] - cm) ** 2 * mult).sum(dims) + ((f32[1] - cm) ** 2).sum(dims)
                   + ((f32[2] - cm) ** 2).sum(dims)) / count
            if bn.track_running_stats:
                with torch.no_grad():
                    bn.num_batches_tracked += 1
                    mom = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
                    bn.running_mean.mul_(1 - mom).add_(mom * mean.detach())
                    bn.running_var.mul_(1 - mom).add_(mom * var.detach() * count / max(count - 1, 1))
        else:
            mean, var = bn.running_mean, bn.running_var
        scale = bn.weight / torch.sqrt(var + bn.eps)
        shift = bn.bias - mean * scale
        scale, shift = scale.view(1, -1, 1, 1, 1), shift.view(1, -1, 1, 1, 1)
        return tuple(_leaky(t * scale + shift) for t in (f1, left, right))


def _tap_terms(t: torch.Tensor, first: torch.Tensor | None, last: torch.Tensor | None, s: int):
    """For each output n of :data:`TAP_SUMS`, its three ``[B, C, s, Y, X]`` terms (see :class:`_TapSum`);
    the terms of ``t`` are views of it."""
    co = t.shape[1] // 3
    maps = {"first": first, "last": last}
    for terms in TAP_SUMS:
        yield tuple(maps[m] if isinstance(m, str) else t[:, m[0] * co: (m[0] + 1) * co, m[1]: m[1] + s] for m in terms)


class _TapSum(torch.autograd.Function):
    """The second conv's outputs from its tap maps: ``(t, first, last) -> q`` (:meth:`DepthExtractor._conv2_shared`).

    ``t``: ``[B, 3C, s + 4, Y, X]``, tap j of M map ``i + 2`` in channels ``jC .. (j+1)C``;
    ``first``, ``last``: ``[B, C, s, Y, X]``; ``q``: ``[B, C, 3s, Y, X]``, channels-last, outputs
    n0 n1 n2 of each pack interleaved. Pack k's output n sums the maps of :data:`TAP_SUMS` [n]:
    ``(j, shift)`` is ``T_j[k + shift]``. One node, so that the backward pass adds each output's
    gradient into one gradient of ``t``: autograd of the seven slices of ``t`` would allocate, fill
    and add seven zero tensors of ``t``'s size (about 15% of a training step on the CPU).
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor, first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        nb, c3, _, ny, nx = t.shape
        ctx.t_shape = t.shape
        q = t.new_empty(nb, 3 * first.shape[2], ny, nx, c3 // 3).permute(0, 4, 1, 2, 3)
        for n, (a, b, c) in enumerate(_tap_terms(t, first, last, first.shape[2])):
            out = q[:, :, n::3]
            torch.add(a, b, out=out)
            out += c
        return q

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_t = grad.new_zeros(ctx.t_shape)
        for n, terms in enumerate(_tap_terms(grad_t, None, None, grad.shape[2] // 3)):
            for view in terms:
                if view is not None:
                    view += grad[:, :, n::3]
        return grad_t, grad[:, :, 0::3], grad[:, :, 2::3]


class DblurDoseNet(nn.Module):
    """The whole network; see the module docstring for layouts and variants.

    ``config`` (a :class:`ModelConfig`, or just a variant name) travels with the weights.
    """

    def __init__(self, config: ModelConfig | str = "dblurdose") -> None:
        super().__init__()
        self.config = ModelConfig(variant=config) if isinstance(config, str) else config
        self.variant = self.config.variant
        self.extractor = None if self.variant == "2d" else DepthExtractor()
        channels = 2 * PACK if self.variant == "2d" else 16
        self.unet = UNet2D(channels, self.config.decoder_activation)
        #: the resolution input (config.fwhm_input): per-channel scale and shift of the U-Net's input, zero at start
        self.blur = nn.Linear(1, 2 * channels) if self.config.fwhm_input else None
        if self.blur is not None:
            nn.init.zeros_(self.blur.weight)
            nn.init.zeros_(self.blur.bias)
        #: training only (the "floored" correction): the gradient that still reaches the output below the
        #: floor, as a share of the additive correction's (see :meth:`correct`); 0: the plain floored gradient
        self.floor_leak = 0.0

    @property
    def residual(self) -> bool:
        return self.variant != "no_residual"

    def forward(self, x: torch.Tensor, dvk: torch.Tensor | None = None,
                fwhm: torch.Tensor | float | None = None) -> torch.Tensor:
        """One output slice per pack: ``x [B, 2, 11, Y, X]``, ``dvk [B, 1, Y, X]`` -> ``[B, 1, Y, X]``;
        ``fwhm``: the SPECT's FWHM (mm), one for all or ``[B]``, for a model with the resolution input."""
        if self.extractor is None:
            if x.shape[2] != PACK:
                raise ValueError(f"a pack has {PACK} slices, got {x.shape[2]}")
            features = x.reshape(x.shape[0], 2 * PACK, *x.shape[3:])  # SPECT slices, then density
        else:
            features = self.extractor(x)
        return self.correct(self.unet(self.condition(features, fwhm)), dvk)

    def forward_slab(self, x: torch.Tensor, dvk: torch.Tensor | None = None,
                     fwhm: torch.Tensor | float | None = None) -> torch.Tensor:
        """All packs of a slab: ``x [B, 2, S + 10, Y, X]``, ``dvk [B, 1, S, Y, X]`` -> ``[B, 1, S, Y, X]``;
        ``fwhm`` (mm) one for all or ``[B]``, as in :meth:`forward`.

        Output k equals ``forward(x[:, :, k:k + 11], dvk[:, :, k], fwhm)``; the U-Net runs on all
        ``B * S`` slices as one batch.
        """
        nb, _, nz, ny, nx = x.shape
        s = nz - (PACK - 1)
        features = self.slab_features(x).transpose(1, 2).reshape(nb * s, -1, ny, nx)
        if self.blur is not None and fwhm is not None:  # one FWHM per slab -> one per slice of the batch
            fwhm = torch.as_tensor(fwhm, dtype=torch.float32, device=x.device).reshape(-1).expand(nb)
            fwhm = fwhm.repeat_interleave(s)
        features = self.condition(features, fwhm)
        return self.correct(self.unet(features).view(nb, s, 1, ny, nx).transpose(1, 2), dvk)

    def require_fwhm(self, fwhm: object) -> None:
        """Where the model takes the SPECT's resolution as an input: refuse a missing FWHM (None or NaN) and
        a number the library does not accept (:func:`~DblurDoseLib.physics.deconvolution.check_fwhm`); a
        tensor (training's FWHM per slab) passes."""
        if self.blur is None or isinstance(fwhm, torch.Tensor):
            return
        if fwhm is None or (isinstance(fwhm, (int, float)) and not math.isfinite(fwhm)):
            raise DblurDoseError("this CNN model takes the SPECT's resolution as an input: give the SPECT's "
                                 f"Gaussian-equivalent FWHM (mm); {MEASURE_FWHM}", settings=("spect_fwhm",))
        check_fwhm(fwhm, settings=("spect_fwhm",))

    def condition(self, features: torch.Tensor, fwhm: torch.Tensor | float | None) -> torch.Tensor:
        """The U-Net's input ``[N, C, Y, X]`` conditioned on the SPECT's FWHM (mm; one for all, or ``[N]``):
        ``features (1 + a) + b`` (module docstring); unchanged for a model without the resolution input."""
        if self.blur is None:
            return features
        self.require_fwhm(fwhm)
        w = torch.as_tensor(fwhm, dtype=torch.float32, device=features.device).reshape(-1, 1)
        film = self.blur((w - FWHM_CENTRE_MM) / FWHM_SPREAD_MM).to(features.dtype)
        scale, shift = film.expand(features.shape[0], -1)[..., None, None].chunk(2, dim=1)
        return features * (1 + scale) + shift

    def correct(self, out: torch.Tensor, dvk: torch.Tensor | None) -> torch.Tensor:
        """The dose rate (scaled) from the U-Net's output ``out`` and the DVK (same shape).

        "floored" (new models): ``dvk + out + lift``, where ``lift = s [softplus(-u(out) / s) -
        softplus(-u(0) / s)]``, ``u(c) = (1 - f) dvk + c``, ``f = 1 / RATIO_LIMIT``, ``s = FLOOR_WIDTH
        dvk + FLOOR_EPS``: the additive correction (exactly the DVK at out = 0; within 1e-3 of the DVK
        of additive wherever the dose is above 0.15 of the DVK, 1e-5 above 0.25) that bends smoothly
        onto the floor ``f dvk`` instead of overshooting it (gradient ``sigmoid(u / s)``: 1 above the
        floor, falling to 0 an overshoot of about 0.4 of the DVK below it). Where the DVK is 0 it is
        ``max(out, 0)``, smoothed over FLOOR_EPS. It learns as the additive correction does (pilots
        on data set v03: the model card), and keeps tissue off the floor only together with the
        loss's relative term (``training.training_loss``); without it the network still pushes
        low-dose tissue (lung first) down onto the floor.
        While the network trains with ``floor_leak`` g > 0, the gradient below the floor is
        ``sigmoid(u / s) + g sigmoid(-u / s)``, at least g, with the same values: a voxel the start
        weights put deep below the floor (where ``sigmoid(u / s)`` is 0 to float precision) can still
        be pulled up by the loss. Without it, two thirds of the floor voxels of v0.2's fine-tunes on
        the shipped-model test's water cylinder get a gradient under 0.01.
        "additive" (v0.2): ``dvk + out``. Nothing keeps a negative correction from overshooting:
        v0.2 drove tissue to zero, and inference's 5% floor was the only guard.
        "ratio": ``dvk * exp(L tanh(out / L))``, ``L = ln(RATIO_LIMIT)``: the DVK times a factor in
        (1/20, 20), 1 + out near out = 0, smooth, free in both directions, never below 1/20 of the DVK
        and zero wherever the DVK is. Measured on v03 it hardly learns (validation MSE 0.21 after 17
        epochs against 0.17 for the additive correction and the DVK's 0.23); kept for the files made with it.
        No-residual variant: ``out`` itself.
        """
        if not self.residual:
            return out
        if dvk is None:
            raise ValueError(f"the {self.variant!r} network corrects the DVK map: pass dvk")
        if self.config.correction == "additive":
            return out + dvk
        if self.config.correction == "floored":
            c = out.float() if out.dtype in (torch.float16, torch.bfloat16) else out
            width = FLOOR_WIDTH * dvk.clamp_min(0) + FLOOR_EPS
            above = (1.0 - 1.0 / RATIO_LIMIT) * dvk  # the DVK's height above the floor
            below = -(above + c) / width  # -u / s
            lift = width * (F.softplus(below) - F.softplus(-above / width))
            if self.training and self.floor_leak:  # a gradient that leaks through the floor, values unchanged
                lift = lift + (self.floor_leak * torch.sigmoid(below)).detach() * (c - c.detach())
            return dvk + c + lift
        limit = math.log(RATIO_LIMIT)
        c = out.float() if out.dtype in (torch.float16, torch.bfloat16) else out
        return dvk * torch.exp(limit * torch.tanh(c / limit))

    def slab_features(self, x: torch.Tensor) -> torch.Tensor:
        """The U-Net's input for every pack of a slab: ``[B, 2, S + 10, Y, X] -> [B, C, S, Y, X]``."""
        if self.extractor is not None:
            return self.extractor.forward_slab(x)
        nb, _, nz, ny, nx = x.shape
        s = nz - (PACK - 1)
        if s < 1:
            raise ValueError(f"a slab needs at least {PACK} slices, got {nz}")
        windows = x.unfold(2, PACK, 1)  # [B, 2, S, Y, X, 11]
        return windows.permute(0, 1, 5, 2, 3, 4).reshape(nb, 2 * PACK, s, ny, nx)


class SlabForward(nn.Module):
    """``forward(x, dvk)`` = ``net.forward_slab(x, dvk)``: the slab forward as a module's ``forward``, where
    DistributedDataParallel hooks in (training). Holds ``net``'s parameters, not copies."""

    def __init__(self, net: DblurDoseNet) -> None:
        super().__init__()
        self.inner = net

    def forward(self, x: torch.Tensor, dvk: torch.Tensor | None, fwhm: torch.Tensor | None = None) -> torch.Tensor:
        return self.inner.forward_slab(x, dvk, fwhm)


def fuse_for_inference(model: DblurDoseNet) -> DblurDoseNet:
    """An eval-only copy with every batch norm folded into the convolution before it.

    Equal to ``model.eval()`` to float rounding, with fewer passes over memory; activations
    run in place under ``torch.no_grad``/``inference_mode``. Not for training.
    """
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if isinstance(module, DoubleConv):
            for i in (0, 3):
                module[i] = nn.utils.fuse_conv_bn_eval(module[i], module[i + 1])
                module[i + 1] = nn.Identity()
        elif isinstance(module, DepthExtractor):
            module.conv1 = nn.utils.fuse_conv_bn_eval(module.conv1, module.bn1)
            module.conv2 = nn.utils.fuse_conv_bn_eval(module.conv2, module.bn2)
            module.bn1, module.bn2 = nn.Identity(), nn.Identity()
        elif isinstance(module, (nn.ReLU, nn.LeakyReLU)):
            module.inplace = True
    for p in fused.parameters():
        p.requires_grad_(False)
    return fused


def zero_correction(model: DblurDoseNet) -> DblurDoseNet:
    """Set the output layer to zero in place: a residual network then returns exactly the DVK
    (either correction: a zero additive term, a factor exp(0) = 1)."""
    with torch.no_grad():
        model.unet.out.weight.zero_()
        model.unet.out.bias.zero_()
    return model


def correction_bound(model: DblurDoseNet) -> tuple[float, float]:
    """Bounds (scaled units) that the output layer puts on the U-Net's output. With a ReLU decoder its
    inputs are >= 0: (-inf or bias, bias or +inf); a finite bound means the network can only correct
    in one direction: all output weights of one sign (the defect of the v0.1 weights). A LeakyReLU
    decoder's features take both signs: no bound."""
    if model.config.decoder_activation != "relu":
        return float("-inf"), float("inf")
    w = model.unet.out.weight.detach().flatten()
    b = float(model.unet.out.bias.detach())
    upper = b if bool((w <= 0).all()) else float("inf")
    lower = b if bool((w >= 0).all()) else float("-inf")
    return lower, upper


def count_parameters(model: nn.Module) -> int:
    """The number of parameters (weights and biases) of ``model``."""
    return sum(p.numel() for p in model.parameters())


def postprocess(dose: torch.Tensor, density: torch.Tensor, threshold: float = AIR_DENSITY_THRESHOLD) -> torch.Tensor:
    """The paper's test-time step: clamp at 0, zero in air.

    Parameters
    ----------
    dose : Tensor
        Dose rate (any units, scaled or mGy/h).
    density : Tensor
        The (centre-slice) density, g/cm3, the same shape as ``dose``.
    threshold : float
        Density (g/cm3) under which a voxel is air (default: ``physics.density.AIR_DENSITY_THRESHOLD``).

    Returns
    -------
    Tensor
        ``dose`` clamped at 0, and 0 where ``density < threshold``.
    """
    return torch.where(density < threshold, torch.zeros_like(dose), dose.clamp_min(0))


# --- saving and loading ---------------------------------------------------------------------


def _digest(config: dict, state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=list).encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_model(model: DblurDoseNet, path: str | os.PathLike) -> Path:
    """Write ``model`` as one file: ``torch.save`` of {format, config, state_dict, sha256}, atomically.

    Parameters
    ----------
    model : DblurDoseNet
        The network; its ``config`` (with the working voxel spacing, mm, and scaling) travels with it.
    path : str or path
        The model file (folders are made).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = asdict(model.config)
    cfg["spacing"] = list(cfg["spacing"])
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "config": cfg, "state_dict": state, "sha256": _digest(cfg, state)}
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_model_file(path: str | os.PathLike, device: str | torch.device = "cpu") -> DblurDoseNet:
    """Read a model file written by :func:`save_model` and verify its checksum.

    Parameters
    ----------
    path : str or path
        The model file.
    device : str or torch.device
        Where the network goes ("cpu", "cuda", "mps" or a device).

    Returns
    -------
    DblurDoseNet
        In eval mode, its ``sha256`` set (provenance).

    Raises
    ------
    DblurDoseError
        When the file is missing, unreadable, corrupted (checksum), newer, non-finite or of another architecture.
    """
    path = Path(path)
    fix = "reinstall dblurdose to restore the shipped weights, or train new ones with `dblurdose train`"
    if not path.is_file():
        raise DblurDoseError(f"DblurDoseNet weights not found at {path}; {fix}", settings=("model",))
    try:
        payload = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or damaged zip, or not a torch file at all
        raise DblurDoseError(f"the DblurDoseNet weights file {path} is unreadable or corrupted "
                             f"({type(exc).__name__}); {fix}", settings=("model",)) from None
    if isinstance(payload, dict) and {"model", "optimizer", "settings"} <= payload.keys():
        raise DblurDoseError(f"{path} is a training checkpoint, not a model file; use the model files `dblurdose "
                             "train` writes beside it: NAME.pt (best validation loss) or NAME.last.pt (last epoch)",
                             settings=("model",))
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DblurDoseError(f"{path} is not a DblurDoseNet model file (as written by `dblurdose train`); {fix}",
                             settings=("model",))
    cfg, state = payload.get("config", {}), payload.get("state_dict", {})
    if payload.get("sha256") != _digest(cfg, state):
        raise DblurDoseError(f"the DblurDoseNet weights file {path} is corrupted (SHA-256 checksum mismatch); {fix}",
                             settings=("model",))
    if int(cfg.get("version", 0)) > FORMAT_VERSION:
        raise DblurDoseError(f"{path} was written by a newer dblurdose (model format {cfg.get('version')}); "
                             "upgrade dblurdose")
    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise DblurDoseError(f"the DblurDoseNet weights in {path} hold NaN or infinite values ({', '.join(bad[:3])}); "
                             f"the training diverged or the file is damaged: {fix}", settings=("model",))
    model = DblurDoseNet(ModelConfig.from_dict(cfg))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise DblurDoseError(f"the weights in {path} do not fit the {model.variant!r} network ({exc}); {fix}",
                             settings=("model",)) from None
    model.sha256 = payload["sha256"]  # provenance: written into every map the model makes
    return model.to(device).eval()
