"""The accuracy targets a DblurDoseNet is held to, checked on an evaluation's summary.

The paper's gains over the DVK (mean dose-rate error 55% lower in lesions, 66% in the kidneys) and the bounds
this project adds for a map a medical physicist can use: lesion error 10% or less, kidneys and liver 3% or
less, better than SPECT + Monte Carlo, NRMSE 15% below the DVK's in lesions and kidneys, ensemble noise below
the DVK's, and a correction that nearly never meets the inference floor (under 0.1% of tissue on every
phantom). :func:`check_targets` reports each as a value in words and met or not, for one method of an
evaluation (:func:`~DblurDoseLib.evaluation.evaluate.evaluate`'s results): the CNN as it comes out of the
network ("cnn") or kept consistent with the SPECT ("consistent_cnn"). Errors are in percent; a target whose
figures the evaluation lacks (no SPECT + Monte Carlo, no noise spheres) is reported as not checked.
"""

from __future__ import annotations

import math

#: the paper's gains over the DVK: mean dose-rate error lower by at least this many percent
LESION_GAIN_PERCENT = 55.0
KIDNEY_GAIN_PERCENT = 66.0
#: bounds on the mean dose-rate error (%)
LESION_ERROR_PERCENT = 10.0
KIDNEY_ERROR_PERCENT = 3.0
LIVER_ERROR_PERCENT = 3.0
#: NRMSE lower than the DVK's by at least this many percent, in lesions and kidneys
NRMSE_GAIN_PERCENT = 15.0
#: the share of tissue voxels at the inference floor allowed on any phantom (%)
FLOOR_SHARE_PERCENT = 0.1

KIDNEYS = ("kidney_left", "kidney_right")


def check_targets(results: dict, method: str = "cnn") -> list[dict]:
    """Each target, its value for ``method`` and whether it is met.

    Parameters
    ----------
    results : dict
        An evaluation's results: ``summary`` (its ``table`` of per-VOI-group means with ``mean_error`` (%)
        and ``nrmse`` per method, and ``noise`` (%) per method) and ``phantoms`` (each with ``correction``
        diagnostics per residual model, ``floor_share`` a fraction).
    method : str
        The map checked: "cnn", "consistent_cnn", an ablation's "cnn_NAME" or "consistent_cnn_NAME". The
        floor is the residual network's ("cnn"'s, or the ablation's own), which the consistency step leaves
        in place.

    Returns
    -------
    list of dict
        One per target, in the order above: ``target`` (in words), ``value`` (the figures, in words) and
        ``met`` (True, False, or None where the evaluation lacks the figures).
    """
    table = results["summary"]["table"]

    def error(group: str, m: str, key: str = "mean_error") -> float:
        value = table.get(group, {}).get(m, {}).get(key)
        return math.nan if value is None else float(value)

    def gain(group: str, key: str = "mean_error") -> float:
        base = error(group, "dvk", key)
        return (base - error(group, method, key)) / base * 100.0 if base > 0 else math.nan

    rows = [_row(f"lesions' mean error {LESION_GAIN_PERCENT:g}% below the DVK's", [gain("lesion")],
                 lambda g: g >= LESION_GAIN_PERCENT, "{:.0f}% lower", f"{error('lesion', 'dvk'):.1f} -> "
                 f"{error('lesion', method):.1f}%"),
            _row(f"kidneys' mean error {KIDNEY_GAIN_PERCENT:g}% below the DVK's", [gain(k) for k in KIDNEYS],
                 lambda g: g >= KIDNEY_GAIN_PERCENT, "{:.0f}% lower"),
            _row(f"lesion mean error {LESION_ERROR_PERCENT:g}% or less", [error("lesion", method)],
                 lambda e: e <= LESION_ERROR_PERCENT, "{:.1f}%"),
            _row(f"kidneys' mean error {KIDNEY_ERROR_PERCENT:g}% or less", [error(k, method) for k in KIDNEYS],
                 lambda e: e <= KIDNEY_ERROR_PERCENT, "{:.1f}%"),
            _row(f"liver's mean error {LIVER_ERROR_PERCENT:g}% or less", [error("liver", method)],
                 lambda e: e <= LIVER_ERROR_PERCENT, "{:.1f}%"),
            _row("mean error below SPECT + Monte Carlo's (lesions, kidneys, liver: the difference)",
                 [error(g, method) - error(g, "mc") for g in ("lesion", *KIDNEYS, "liver")],
                 lambda d: d < 0, "{:+.1f} pt"),
            _row(f"NRMSE {NRMSE_GAIN_PERCENT:g}% below the DVK's (lesions, kidneys)",
                 [gain(g, "nrmse") for g in ("lesion", *KIDNEYS)], lambda g: g >= NRMSE_GAIN_PERCENT,
                 "{:.0f}% lower"),
            _noise_row(results["summary"].get("noise", {}), method),
            _floor_row(results["phantoms"], method.removeprefix("consistent_"))]
    return rows


def _row(target: str, values: list[float], passes, fmt: str, detail: str = "") -> dict:
    """A target over one or more figures: met when every figure passes; not checked when any is missing."""
    if not values or any(not math.isfinite(v) for v in values):
        return {"target": target, "value": "-", "met": None}
    value = ", ".join(fmt.format(v) for v in values) + (f" ({detail})" if detail else "")
    return {"target": target, "value": value, "met": all(passes(v) for v in values)}


def _noise_row(noise: dict, method: str) -> dict:
    """Ensemble noise in the background spheres against the DVK's (mean over phantoms and regions)."""
    base, own = noise.get("dvk"), noise.get(method)
    change = (own - base) / base * 100.0 if base and own is not None else math.nan
    return _row("ensemble noise below the DVK's", [change], lambda c: c < 0, "{:+.0f}% against the DVK's")


def _floor_row(phantoms: dict, model: str) -> dict:
    """The largest share of tissue at the inference floor over the phantoms (percent)."""
    shares = [100.0 * ph["correction"][model]["floor_share"] for ph in phantoms.values()
              if model in ph.get("correction", {})]
    return _row(f"tissue at the floor under {FLOOR_SHARE_PERCENT:g}% on every phantom",
                [max(shares)] if shares else [], lambda s: s < FLOOR_SHARE_PERCENT, "{:.3f}% at most",
                f"{len(shares)} phantoms")
