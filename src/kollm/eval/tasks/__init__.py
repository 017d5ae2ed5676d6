"""Built-in evaluation tasks. Every module in this package registers its tasks on import, so a
new task file needs no edit here (part B's IFEval, code and judge tasks plug in the same way)."""

import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
