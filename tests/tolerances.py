"""Float comparisons in the tests: a tolerance follows the values' own scale and float32 rounding.

float32 results differ in their last bits from one CPU to another, and between PyTorch's kernels
on one CPU (``ATEN_CPU_CAPABILITY=default``, ``avx2``, ``avx512``): a sum is reduced in another
order, a fused multiply-add rounds once instead of twice, a library vectorizes differently. One
unit in the last place (ulp) of a float32 is ~1.2e-7 of the value, and a few optimizer steps
amplify such differences. So the rule for every float comparison in the tests is:

* exact maths on exactly representable values, and deliberate bit-identical checks (the same
  seed run twice, a resumed checkpoint): compare exactly, ``np.array_equal`` / ``torch.equal``;
* everything else: ``assert_close(actual, expected, rel=...)``, which allows a worst absolute
  difference of ``rel * scale``, where ``scale`` is the largest ``|expected|`` (the values' own
  size; give ``scale=`` where the values cross zero around a known magnitude, such as positions
  on a sphere of known radius). ``rel`` is one of the named tolerances below, never an absolute
  epsilon picked below the float32 rounding of the values (``atol=1e-6`` on values ~1 is ~8 ulps:
  it fails on the next CPU).
* "it changed" checks: ``relative_difference(a, b) > CHANGED``, a change far beyond rounding.

The tolerances were measured: the worst relative difference of every comparison under the three
kernel settings, with ``PARTSTYLE_TOLERANCE_LOG=file`` set (each ``assert_close`` appends its
measured difference there). Each constant is >= 10x the worst difference seen and far below the
difference a real bug makes.
"""

from __future__ import annotations

import os
import sys

import numpy as np

FLOAT32_EPS = float(np.finfo(np.float32).eps)  # 1.19e-7: one ulp of a float32 in [1, 2)

# The same float32 values through an equivalent path: a copy through Blender, a file round trip
# with float32 storage, a reshaped or batched computation, a few ops in another order, a float32
# computation against its closed form in float64, the same optimization run twice on identical
# inputs. 64 ulps of the scale (7.6e-6); the worst measured is 1.35e-7 (~1 ulp).
SAME_MATH = 64 * FLOAT32_EPS

# A float32 result that is the exact value rounded once or twice by numpy (elementwise float32 and
# float64 maths is correctly rounded on every CPU), e.g. float32 positions v + d n or unit-frame
# coordinates: 8 ulps of the scale (9.5e-7), ~10x the worst such rounding (<= ~1 ulp); measured
# 3.9e-8. Tighter than SAME_MATH where the quantity tested is far smaller than the values' scale.
ROUNDED = 8 * FLOAT32_EPS

# A deep model's outputs and input gradient when one of its layers does the same sums in another
# order (engine/model_kernels.py's deformable attention in Grounding DINO): that layer's ~1 ulp grows
# through the layers after it, most in the decoder, whose box refinement moves where the next layer
# samples. Worst measured (tiny Grounding DINO, default / avx2 kernels): decoder scores 5.3e-6, image
# gradient 1.8e-6; a sampling position off by 1/100 of a pixel makes 6.8e-3 of the proposal logits.
MODEL_REORDERED = 1e-4

# "It changed": a difference of 0.1 % of the values' scale is a real change, never rounding. Colors
# (in [0, 1]) of a few optimizer steps differ by <= 6.3e-7 when their inputs differ by float32
# rounding; the smallest change these tests expect (a 3-step run, another prompt and seed) is 1.8e-2.
CHANGED = 1e-3

# Not a constant here: a tolerance for optimizer results whose *inputs* differ by float32 rounding.
# The displacement of 6 steps on test_train.py's blob moved by up to 1.5 % of its scale when only
# the unit frame's rounding changed (the mesh scaled and moved; for 10x and +5: 2.1e-3, 6.7e-4,
# 4.6e-4 with the avx512, default and avx2 kernels), while the colors moved by <= 6.3e-7. Such a
# tolerance could not see a wrong factor; make the inputs identical instead (test_train.py puts
# the mesh on a 2^-10 grid, where scaling by 10 and moving are exact).

_LOG = "PARTSTYLE_TOLERANCE_LOG"  # a file: each comparison below appends its measured difference


def _log(relative: float, allowed: str, what: str = "") -> None:
    """Append the caller's caller (a test line), ``what``, the measured and the allowed difference."""
    if os.environ.get(_LOG):
        caller = sys._getframe(2)
        where = f"{os.path.basename(caller.f_code.co_filename)}:{caller.f_lineno}"
        with open(os.environ[_LOG], "a", encoding="utf-8") as fh:
            fh.write(f"{where}\t{what}\t{relative:.3e}\t{allowed}\n")


def _as_float64(values) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, on any device and of any float dtype
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def _pair(actual, expected, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Both as float64 arrays of one shape (a scalar ``expected`` stands for every element)."""
    a, e = _as_float64(actual), _as_float64(expected)
    if e.ndim == 0:
        e = np.broadcast_to(e, a.shape)
    assert a.shape == e.shape, f"shapes differ{label}: {a.shape} vs {e.shape}"
    return a, e


def relative_difference(actual, expected, *, scale: float | None = None) -> float:
    """max|actual - expected| / scale (scale: the largest |expected| unless given)."""
    a, e = _pair(actual, expected, "")
    scale = float(np.abs(e).max(initial=0.0)) if scale is None else float(scale)
    worst = float(np.abs(a - e).max(initial=0.0))
    relative = worst / scale if scale > 0 else (0.0 if worst == 0 else float("inf"))
    _log(relative, "changed?")
    return relative


def assert_close(actual, expected, *, rel: float, scale: float | None = None, what: str = "") -> None:
    """Assert ``max|actual - expected| <= rel * scale``.

    ``actual`` and ``expected`` are numpy arrays, torch tensors or scalars of the same shape
    (a scalar ``expected`` stands for every element). ``scale`` is the largest ``|expected|``
    unless given. Non-finite values (NaN, +-inf) must sit at the same places in both, equal.
    """
    label = f" ({what})" if what else ""
    a, e = _pair(actual, expected, label)
    finite = np.isfinite(e)
    assert np.array_equal(np.isfinite(a), finite) and np.array_equal(a[~finite], e[~finite], equal_nan=True), (
        f"non-finite values differ{label}"
    )
    a, e = np.where(finite, a, 0.0), np.where(finite, e, 0.0)
    scale = float(np.abs(e).max(initial=0.0)) if scale is None else float(scale)
    difference = np.abs(a - e)
    worst = float(difference.max(initial=0.0))
    relative = worst / scale if scale > 0 else (0.0 if worst == 0 else float("inf"))
    _log(relative, f"{rel:.1e}", what)
    allowed = rel * scale
    if worst > allowed:
        index = np.unravel_index(int(difference.argmax()), difference.shape) if difference.ndim else ()
        raise AssertionError(
            f"not close{label}: worst difference {worst:.3e} at index {tuple(int(i) for i in index)} "
            f"(actual {a[index]:.9g}, expected {e[index]:.9g}) > allowed {allowed:.3e} "
            f"= rel {rel:.3e} x scale {scale:.3e}; relative difference {relative:.3e}"
        )
