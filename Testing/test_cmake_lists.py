"""The Slicer extension's CMake files: metadata, and every DblurDoseLib file in the install list.

A built extension only holds the files ``DblurDose/CMakeLists.txt`` lists; a library file left
out there works from a clone and breaks in the extension. ``python Testing/test_cmake_lists.py
--update`` rewrites the two lists from the files under ``DblurDoseLib/``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = ROOT / "CMakeLists.txt"
MODULE = ROOT / "DblurDose" / "CMakeLists.txt"
LISTS = ("DBLURDOSELIB_PYTHON_SCRIPTS", "DBLURDOSELIB_PYTHON_RESOURCES")


def library_files() -> list[str]:
    """Files under DblurDoseLib/ as git sees them (tracked, or new and not ignored); a glob without git."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "DblurDoseLib"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\n")
        files = [f for f in out if f and (ROOT / f).is_file()]
        if files:
            return sorted(files)
    except (OSError, subprocess.CalledProcessError):
        pass
    return sorted(str(p.relative_to(ROOT)).replace("\\", "/") for p in (ROOT / "DblurDoseLib").rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def cmake_list(text: str, name: str) -> list[str]:
    match = re.search(rf"set\(\s*{name}\b(.*?)\)", text, re.S)
    assert match, f"no set({name} ...) in {MODULE.relative_to(ROOT)}"
    return [item for line in match.group(1).splitlines() for item in [line.split("#", 1)[0].strip()] if item]


def cmake_variable(text: str, name: str) -> str:
    match = re.search(rf'set\(\s*{name}\s+"([^"]*)"', text)
    assert match, f"{TOP.name} does not set {name}"
    return match.group(1)


def test_every_library_file_is_installed_with_the_extension():
    text = MODULE.read_text()
    scripts, resources = (cmake_list(text, name) for name in LISTS)
    listed = scripts + resources
    files = library_files()
    missing = sorted(set(files) - set(listed))
    stale = sorted(set(listed) - set(files))
    assert not missing, (f"DblurDose/CMakeLists.txt does not install {missing}; "
                         "run 'python Testing/test_cmake_lists.py --update'")
    assert not stale, f"DblurDose/CMakeLists.txt lists files that do not exist: {stale}"
    assert all(f.endswith(".py") for f in scripts), "only .py files go in DBLURDOSELIB_PYTHON_SCRIPTS"
    assert not any(f.endswith(".py") for f in resources), ".py files go in DBLURDOSELIB_PYTHON_SCRIPTS"
    assert len(listed) == len(set(listed)), "a file is listed twice"


def test_module_files_exist_and_test_is_registered():
    text = MODULE.read_text()
    for name in ("MODULE_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES"):
        for item in cmake_list(text, name):
            path = ROOT / "DblurDose" / item.replace("${MODULE_NAME}", "DblurDose")
            assert path.is_file(), f"DblurDose/CMakeLists.txt lists {item}, which does not exist"
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)", text)
    assert re.search(r"ctkMacroCompilePythonScript\(.*SOURCE_DIR \$\{CMAKE_CURRENT_SOURCE_DIR\}/\.\.", text, re.S)
    assert (ROOT / "DblurDose" / "Testing" / "CMakeLists.txt").is_file()


def test_extension_metadata():
    text = TOP.read_text()
    for name in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                 "EXTENSION_SCREENSHOTURLS"):
        assert cmake_variable(text, name).strip(), f"{name} is empty"
    assert cmake_variable(text, "EXTENSION_CATEGORY") in ("Nuclear Medicine", "Radiotherapy")
    assert cmake_variable(text, "EXTENSION_DEPENDS") == "NA"
    assert re.search(r"^add_subdirectory\(DblurDose\)", text, re.M)
    assert "find_package(Slicer REQUIRED)" in text and "Slicer_EXTENSION_CPACK" in text
    # the icon and screenshots the URLs point to are in the repository
    for url in [cmake_variable(text, "EXTENSION_ICONURL"), *cmake_variable(text, "EXTENSION_SCREENSHOTURLS").split()]:
        relative = re.sub(r"^https://raw\.githubusercontent\.com/[^/]+/[^/]+/[^/]+/", "", url)
        assert (ROOT / relative).is_file(), f"{url} points to {relative}, which is not in the repository"


STUBS = r"""
cmake_minimum_required(VERSION 3.16)
project(DblurDoseStub NONE)
set(BUILD_TESTING ON)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/qt-scripted-modules)
set(LISTING ${CMAKE_BINARY_DIR}/installed.txt)
file(WRITE ${LISTING} "")
function(_check_and_record source_dir)
  foreach(f ${ARGN})
    if(NOT EXISTS ${source_dir}/${f})
      message(FATAL_ERROR "listed file not found: ${source_dir}/${f}")
    endif()
    file(APPEND ${LISTING} "${f}\n")
  endforeach()
endfunction()
function(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(M "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  _check_and_record(${CMAKE_CURRENT_SOURCE_DIR} ${M_SCRIPTS} ${M_RESOURCES})
endfunction()
function(ctkMacroCompilePythonScript)
  cmake_parse_arguments(M "NO_INSTALL_SUBDIR" "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR" "SCRIPTS;RESOURCES" ${ARGN})
  _check_and_record(${M_SOURCE_DIR} ${M_SCRIPTS} ${M_RESOURCES})
endfunction()
function(slicer_add_python_unittest)
  cmake_parse_arguments(M "" "SCRIPT" "" ${ARGN})
  _check_and_record(${CMAKE_CURRENT_SOURCE_DIR} ${M_SCRIPT})
endfunction()
add_subdirectory(@MODULE_DIR@ ${CMAKE_BINARY_DIR}/DblurDose)
"""


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_module_cmakelists_configures_with_stand_in_slicer_macros(tmp_path):
    """CMake itself reads DblurDose/CMakeLists.txt (Slicer's macros replaced by checks)."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "CMakeLists.txt").write_text(STUBS.replace("@MODULE_DIR@", (ROOT / "DblurDose").as_posix()))
    run = subprocess.run(["cmake", "-S", str(source), "-B", str(tmp_path / "build")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    installed = (tmp_path / "build" / "installed.txt").read_text().split()
    assert set(library_files()) <= set(installed)
    assert {"DblurDose.py", "Resources/UI/DblurDose.ui", "Resources/requirements.txt"} <= set(installed)


def update() -> None:
    """Rewrite the two DblurDoseLib lists of DblurDose/CMakeLists.txt from the files on disk."""
    text = MODULE.read_text()
    files = library_files()
    groups = {LISTS[0]: [f for f in files if f.endswith(".py")], LISTS[1]: [f for f in files if not f.endswith(".py")]}
    for name, items in groups.items():
        block = f"set({name}\n" + "".join(f"  {item}\n" for item in items) + "  )"
        text = re.sub(rf"set\(\s*{name}\b.*?\)", lambda _m, b=block: b, text, count=1, flags=re.S)
    MODULE.write_text(text)
    print(f"{MODULE.relative_to(ROOT)}: {len(files)} library files listed")


if __name__ == "__main__":
    if sys.argv[1:] == ["--update"]:
        update()
    else:
        sys.exit("usage: python Testing/test_cmake_lists.py --update")
