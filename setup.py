"""Package layout that pyproject.toml cannot express alone: the top-level ``kernels/``
directory ships as ``sgl_jupyter.kernels`` (DESIGN.md)."""
from setuptools import find_packages, setup

packages = find_packages(include=["sgl_jupyter", "sgl_jupyter.*"])
packages += ["sgl_jupyter.kernels"] + [f"sgl_jupyter.kernels.{p}" for p in find_packages("kernels")]
package_dir = {"sgl_jupyter.kernels": "kernels"}

setup(packages=packages, package_dir=package_dir)
