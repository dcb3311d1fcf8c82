"""The evaluation VOIs of a virtual patient: one definition for the phantoms and the evaluation.

Both the phantom's masks (:func:`DblurDoseLib.simulation.phantom.voi_masks`) and the paper's evaluation
(:mod:`DblurDoseLib.evaluation.evaluate`, from a data set's ``labels.nrrd`` and ``labels.json``) take
their VOIs from :func:`evaluation_vois`, so that "liver" means the same organ everywhere: the whole
liver, its lesions included (the paper's "liver"), beside "healthy_liver", the liver without them.
The VOIs are found by label *name*, so that every family of virtual patients (anatomical, shapes)
and every labelmap with these names gets the same VOIs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

#: the lumbar vertebrae of the paper's bone-marrow VOI ``lumbar_L2_L5``, by label name
LUMBAR_L2_L5_NAMES = ("vertebra_L2", "vertebra_L3", "vertebra_L4", "vertebra_L5")
#: the evaluation leaves out lesions of fewer voxels (too few for a mean, an NRMSE or a DRVH)
MIN_LESION_VOXELS = 8
#: the prefix of a lesion's VOI name: ``lesion:lesion_3``
LESION_PREFIX = "lesion:"


def lesion_voi(name: str) -> str:
    """The VOI name of the lesion labelled ``name``: ``lesion:NAME``."""
    return f"{LESION_PREFIX}{name}"


def evaluation_vois(
    labels: np.ndarray,
    label_names: Mapping[int, str],
    lesions: Sequence[Mapping] = (),
    min_lesion_voxels: int = MIN_LESION_VOXELS,
) -> dict[str, np.ndarray]:
    """The evaluation VOIs (the paper's Fig. 7) of a labelmap, as boolean masks.

    Parameters
    ----------
    labels : ndarray of int, [z, y, x]
        The labelmap.
    label_names : mapping of int to str
        Label value -> name (a phantom's ``label_names``; ``labels.json``'s with integer keys).
    lesions : sequence of mapping
        The phantom's ``info["lesions"]``: each with its ``label`` (value), ``name`` and ``organ``.
    min_lesion_voxels : int
        Lesions of fewer voxels are left out.

    Returns
    -------
    dict of str to ndarray of bool
        In this order, each where present (a VOI with no voxel is left out): ``lesion:NAME`` per
        lesion; ``kidney_left``, ``kidney_right``; ``healthy_liver`` (the liver label: liver tissue
        without lesions); ``liver`` (the whole organ: healthy liver and the lesions whose organ is the
        liver); ``spleen``; ``lumbar_L2_L5`` (vertebrae L2 to L5).
    """
    by_name = {name: int(value) for value, name in label_names.items()}
    out: dict[str, np.ndarray] = {}
    for lesion in lesions:
        mask = labels == int(lesion["label"])
        if mask.sum() >= min_lesion_voxels:
            out[lesion_voi(lesion["name"])] = mask
    for side in ("left", "right"):
        if f"kidney_{side}" in by_name:
            out[f"kidney_{side}"] = labels == by_name[f"kidney_{side}"]
    if "liver" in by_name:
        healthy = labels == by_name["liver"]
        in_liver = [int(lesion["label"]) for lesion in lesions if lesion.get("organ") == "liver"]
        out["healthy_liver"] = healthy
        out["liver"] = healthy | np.isin(labels, in_liver)
    if "spleen" in by_name:
        out["spleen"] = labels == by_name["spleen"]
    lumbar = [by_name[name] for name in LUMBAR_L2_L5_NAMES if name in by_name]
    if lumbar:
        out["lumbar_L2_L5"] = np.isin(labels, lumbar)
    return {name: mask for name, mask in out.items() if mask.any()}
