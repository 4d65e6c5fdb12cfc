"""The model zoo: one file per architecture, each registering itself on import.

Every module in this package is imported, so adding an architecture is adding
a file.
"""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_info.name}")
