"""Bundled filters. Importing this package registers every module in it (and in its
sub-packages, e.g. `filters.guardrails`) with the filter registry."""

import importlib
import pkgutil

for _info in pkgutil.walk_packages(__path__, prefix=__name__ + "."):
    importlib.import_module(_info.name)
