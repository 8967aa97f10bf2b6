"""Package layout that pyproject.toml cannot express alone: the top-level ``kernels/`` directory ships as
``sgl_jupyter.kernels`` (DESIGN.md), and the front end in ``labextension/`` is built with node during every
build (wheel, sdist -> wheel, editable) and shipped prebuilt: the JupyterLab extension as data files in
``share/jupyter/labextensions/sgl-jupyter/``, the widget ES modules as package data
(``sgl_jupyter/jupyter/static/``). A machine without Node.js >= 20 gets an error that says so.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools import Command, find_packages, setup
from setuptools.command.build import build

_spec = importlib.util.spec_from_file_location(
    "sgl_frontend_build", Path(__file__).resolve().parent / "labextension" / "frontend_build.py")
frontend = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(frontend)

packages = find_packages(include=["sgl_jupyter", "sgl_jupyter.*"])
packages += ["sgl_jupyter.kernels"] + [f"sgl_jupyter.kernels.{p}" for p in find_packages("kernels")]
package_dir = {"sgl_jupyter.kernels": "kernels"}

# One list object: install_data holds on to it before the front end is built, build_frontend refills it.
DATA_FILES: list = frontend.data_files()


class BuildFrontend(Command):
    """Build labextension/ when its outputs are stale (the first step of `build`)."""

    description = "build the JupyterLab extension and the widget ES modules from labextension/"
    user_options: list = []

    def initialize_options(self) -> None:
        self.editable_mode = False  # set by setuptools' editable_wheel

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        frontend.build()
        DATA_FILES[:] = frontend.data_files()
        if self.editable_mode:
            # editable_wheel asks `dist.has_data()`, which does not exist, so it never installs data_files;
            # install them into the editable wheel ourselves, so `pip install -e .` (scripts/setup.sh) puts
            # the extension in <env>/share/jupyter/labextensions like a wheel install does.
            self.run_command("install_data")

    def get_outputs(self) -> list:
        return []


class BuildWithFrontend(build):
    # Its own step, not inside build_py: editable installs turn errors in a customised build_py into a warning.
    sub_commands = [("build_frontend", None)] + build.sub_commands


setup(packages=packages, package_dir=package_dir, data_files=DATA_FILES,
      cmdclass={"build": BuildWithFrontend, "build_frontend": BuildFrontend})
