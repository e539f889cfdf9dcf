"""Which packages the wheel ships; pyproject.toml holds everything else.

Every package under ``samtune/`` and ``analysis/``, and the top-level
``search_spaces/`` folder installed as ``samtune.search_spaces`` (its YAML files as
package data).  pyproject.toml's ``packages.find`` cannot put a folder from outside
``samtune/`` inside the ``samtune`` package; a ``packages`` list there would have to
name every subpackage by hand.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["samtune*", "analysis*"]), "samtune.search_spaces"],
    package_dir={"samtune.search_spaces": "search_spaces"},
)
