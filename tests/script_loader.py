"""Our scripts (scripts/*.py, not a package) loaded as modules, so that tests can call their functions."""
import importlib.util
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / 'scripts'


def load_script(name):
    """scripts/<name>.py as a module, a fresh one per call."""
    spec = importlib.util.spec_from_file_location(f'_script_{name}', SCRIPTS / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
