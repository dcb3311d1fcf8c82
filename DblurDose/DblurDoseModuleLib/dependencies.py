"""The Python packages the DblurDose module needs, installed into Slicer's Python on first use.

``Resources/requirements.txt`` through ``slicer.packaging.pip_ensure`` (Slicer 5.11+) or
``slicer.util.pip_install`` (older); PyTorch through the PyTorch extension when installed (it
picks the build that fits the GPU), else with pip after asking. Never at start-up: the module
loads without any of them.
"""

import importlib.metadata
import importlib.util
import re

import slicer

#: torch version the library needs.
TORCH_REQUIREMENT = ">=2.1"


def _(text: str) -> str:
    """Slicer's translation of ``text`` (as is before Slicer 5.4)."""
    try:
        from slicer.i18n import tr
    except ImportError:
        return text
    return tr(text)


def ensureDependencies(requirementsPath: str, requester: str = "DblurDose") -> bool:
    """Install what ``requirementsPath`` lists and PyTorch, asking first.

    Returns
    -------
    bool
        False when the user declined; True when everything is installed.

    Raises
    ------
    Exception
        Whatever pip raised (offline, no permission...): the caller reports it.
    """
    try:
        import slicer.packaging as packaging
    except ImportError:
        packaging = None
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        try:
            packaging.pip_ensure(packaging.load_requirements(requirementsPath), requester=requester)
        except RuntimeError:  # the user declined
            return False
    else:
        missing = [r for r in readRequirements(requirementsPath) if not distributionInstalled(r)]
        if missing:
            if not slicer.util.confirmOkCancelDisplay(
                _("DblurDose needs these Python packages: {packages}. Install them now?").format(
                    packages=", ".join(missing)), windowTitle=requester):
                return False
            slicer.util.pip_install(missing)
    return ensureTorch(requester)


def readRequirements(path: str) -> list[str]:
    """The requirement lines of a requirements file (comments and blank lines left out)."""
    with open(path, encoding="utf-8") as f:
        lines = [line.split("#", 1)[0].strip() for line in f]
    return [line for line in lines if line]


def distributionInstalled(requirement: str) -> bool:
    """Whether the distribution a requirement names is installed (its version is not checked)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
    try:
        importlib.metadata.version(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def ensureTorch(requester: str = "DblurDose") -> bool:
    """PyTorch, through the PyTorch extension (it picks the build that fits the GPU) when present."""
    if importlib.util.find_spec("torch") is not None:
        return True
    try:
        import PyTorchUtils
    except ImportError:
        PyTorchUtils = None
    if PyTorchUtils is not None:
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True,
                                                              torchVersionRequirement=TORCH_REQUIREMENT)
        return torch is not None
    if not slicer.util.confirmOkCancelDisplay(
        _("DblurDose needs PyTorch. Recommended: install the 'PyTorch' extension from the Extensions Manager, "
          "restart Slicer and click Apply again; it picks the PyTorch build that fits your GPU.\n\n"
          "Click OK to install PyTorch's default build with pip instead (a large download)."),
        windowTitle=requester):
        return False
    slicer.util.pip_install(f"torch{TORCH_REQUIREMENT}")
    return importlib.util.find_spec("torch") is not None
