"""Small HTML reports with PNG figures (matplotlib, no display needed)."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Panel:
    """One image in a row of pictures: a 2D slice with its colour map and unit label."""

    title: str
    image: np.ndarray
    cmap: str = "inferno"
    unit: str = ""
    vmin: float | None = None
    vmax: float | None = None
    aspect: float = 1.0  # pixel height / width (e.g. z spacing / x spacing for coronal views)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_panels(panels: Sequence[Panel], path: str | os.PathLike, title: str = "") -> str | os.PathLike:
    """A row of slices with colour bars, saved as PNG.

    Parameters
    ----------
    panels : sequence of Panel
        The slices, left to right, each with its colour map, range and unit label.
    path : str or os.PathLike
        The PNG file (replaced if it exists).
    title : str
        Title over the row.

    Returns
    -------
    str or os.PathLike
        ``path``.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.8), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        im = ax.imshow(panel.image, cmap=panel.cmap, vmin=panel.vmin, vmax=panel.vmax, aspect=panel.aspect,
                       origin="upper", interpolation="nearest")
        ax.set_title(panel.title, fontsize=10)
        ax.axis("off")
        cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        cbar.set_label(panel.unit, fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def save_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike, xlabel: str, ylabel: str,
                title: str = "", styles: dict[str, str] | None = None) -> str | os.PathLike:
    """Line plot of named (x, y) curves, saved as PNG.

    Parameters
    ----------
    curves : dict of str to tuple of np.ndarray
        Legend name -> (x, y), in the units of the axis labels (e.g. h, mGy/h).
    path : str or os.PathLike
        The PNG file (replaced if it exists).
    xlabel, ylabel : str
        Axis labels, with units.
    title : str
        Plot title.
    styles : dict of str to str, optional
        Matplotlib format string per curve name (default ``"-"``).

    Returns
    -------
    str or os.PathLike
        ``path``.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for name, (x, y) in curves.items():
        ax.plot(x, y, (styles or {}).get(name, "-"), label=name, linewidth=1.4)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def html_table(rows: Sequence[dict], float_format: str = "{:.4g}") -> str:
    """An HTML table from dict rows (columns from the first row).

    Parameters
    ----------
    rows : sequence of dict
        The rows; cells are HTML-escaped.
    float_format : str
        Format of float cells.

    Returns
    -------
    str
        A ``<table>``, or a "(no rows)" paragraph.
    """
    if not rows:
        return "<p>(no rows)</p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(
            f"<td>{float_format.format(v) if isinstance(v, float) else html.escape(str(v))}</td>" for v in row.values()
        ) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


#: Terms the dose-rate reports use, with their definitions (:func:`glossary_html`).
GLOSSARY: dict[str, str] = {
    "DVK": "dose-voxel kernel: the dose around one decay in soft tissue, convolved with the activity and scaled by "
           "1.04 g/cm3 / density (the fast first estimate)",
    "CNN": "DblurDoseNet, the residual convolutional network that corrects the DVK map for SPECT blur and tissue "
           "(trained on virtual patients)",
    "truth (MC)": "Monte Carlo dose rate of the true (noise-free, unblurred) activity: the reference; it carries its "
                  "own statistical noise from the finite number of simulated decays",
    "DRx": "the lowest dose rate received by the hottest x% of the VOI (DR10: of the hottest 10%; the dose-rate "
           "analogue of D2/D50/D98)",
    "mean error": "|mean estimate - mean reference| / mean reference over the VOI, in percent",
    "NRMSE": "normalised root-mean-square error over the VOI's voxels: sqrt(mean((estimate - reference)^2)) / "
             "sqrt(mean(reference^2)), in percent; it counts the reference's voxel noise as error too",
    "reference mean +-%": "1-sigma statistical uncertainty of the reference's VOI mean, from the Monte Carlo's "
                          "per-voxel batch uncertainties (voxels taken as independent, so a lower bound)",
    "reference noise NRMSE %": "the NRMSE that an exact, noise-free estimate would show against this noisy reference, "
                               "sqrt(sum (u t)^2 / sum t^2) over the VOI (t reference, u its relative 1-sigma "
                               "uncertainty): the floor of every method's NRMSE",
    "DRVH": "dose-rate-volume histogram: the fraction of the VOI receiving at least each dose rate",
}


def glossary_html(terms: dict[str, str] | None = None) -> str:
    """A definition list (HTML) of ``terms`` (default :data:`GLOSSARY`).

    Parameters
    ----------
    terms : dict of str to str, optional
        Term -> definition.

    Returns
    -------
    str
        A ``<dl>``, escaped.
    """
    items = "".join(f"<dt><b>{html.escape(k)}</b></dt><dd>{html.escape(v)}</dd>"
                    for k, v in (terms or GLOSSARY).items())
    return f"<dl>{items}</dl>"


def write_html(path: Path, title: str, sections: Sequence[tuple[str, str]]) -> Path:
    """A self-contained HTML page: (heading, html body) sections; images referenced by relative path.

    Parameters
    ----------
    path : Path
        The HTML file (replaced if it exists).
    title : str
        Page title (escaped).
    sections : sequence of tuple of str
        (heading, HTML body) pairs; headings are escaped, bodies written as they are.

    Returns
    -------
    Path
        ``path``.
    """
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;font-size:0.85em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#eee}img{max-width:100%}"
    )
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
    parts.append("</body></html>")
    path.write_text("".join(parts))
    return path
