"""The layout's rules, read from the code's own imports (every import statement, also those inside functions):

- the library (`config.py`, `utils.py`, `metrics.py`, `trainer.py`, `models/`, `datasets/`, `engine/`) has no
  import loop and imports neither a script (`main.py`, `inference.py`, `demo.py`, `hubconf.py`, `tools/`) nor the
  front ends' shared code (`video_inference/`), which imports no script either;
- `models/` and `config.py` import nothing from `datasets/`;
- no dataset module imports another dataset module, and the modules they share import none.
"""
import ast
from pathlib import Path

import pytest

import datasets
from tests.helpers import REPO

LIBRARY_FILES = ('config.py', 'utils.py', 'metrics.py', 'trainer.py')
LIBRARY_PACKAGES = ('models', 'datasets', 'engine')
FRONT_END_PACKAGE = 'video_inference'
SCRIPTS = ('main', 'inference', 'demo', 'hubconf', 'tools')


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix('').parts)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def project_modules():
    paths = [REPO / name for name in LIBRARY_FILES] + [REPO / f'{name}.py' for name in SCRIPTS[:-1]]
    for package in (*LIBRARY_PACKAGES, FRONT_END_PACKAGE, 'tools'):
        paths += sorted((REPO / package).glob('*.py'))
    return {module_name(path): path for path in paths}


def imported_modules(name: str, path: Path, known) -> set:
    """The project modules `name` imports: `from a.b import c` counts as `a.b.c` when that is a module."""
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = package.split('.')[:len(package.split('.')) - node.level + 1]
                base = '.'.join(anchor + ([base] if base else []))
            targets = [f'{base}.{alias.name}' if f'{base}.{alias.name}' in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a module, or `from pkg import function`
                target = target.rpartition('.')[0]
            if target and target != name:
                found.add(target)
    return found


@pytest.fixture(scope='module')
def imports():
    modules = project_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def is_library(name: str) -> bool:
    return name in {Path(f).stem for f in LIBRARY_FILES} or name.split('.')[0] in LIBRARY_PACKAGES


def in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(f'{package}.')


def test_the_import_reader_sees_imports_of_every_kind(imports):
    assert 'engine.checkpoints' in imports['trainer']  # from engine.checkpoints import ...
    assert 'datasets.files' in imports['datasets']  # from .files import ... in a package's __init__
    assert 'models.criterion' in imports['models']  # from models import criterion, inside a function
    assert 'trainer' in imports['main']  # import trainer


def test_the_library_has_no_import_loop(imports):
    library = {name: {t for t in targets if is_library(t)} for name, targets in imports.items() if is_library(name)}

    def reaches(start, goal, seen):
        for target in library[start]:
            if target == goal or (target not in seen and (seen.add(target) or reaches(target, goal, seen))):
                return True
        return False

    loops = sorted(f'{a} -> {b} -> ... -> {a}' for a in library for b in library[a] if reaches(b, a, {b}))
    assert not loops


def test_the_library_imports_no_script_and_no_front_end_code(imports):
    wrong = {name: sorted(t for t in targets if t.split('.')[0] in (*SCRIPTS, FRONT_END_PACKAGE))
             for name, targets in imports.items() if is_library(name)}
    assert not {name: targets for name, targets in wrong.items() if targets}
    front_end = {name: sorted(t for t in targets if t.split('.')[0] in SCRIPTS)
                 for name, targets in imports.items() if in_package(name, FRONT_END_PACKAGE)}
    assert front_end and not {name: targets for name, targets in front_end.items() if targets}


def test_models_and_config_import_nothing_from_datasets(imports):
    importing = {name: sorted(t for t in targets if in_package(t, 'datasets'))
                 for name, targets in imports.items() if in_package(name, 'models') or name == 'config'}
    assert not {name: targets for name, targets in importing.items() if targets}


def dataset_modules() -> set:
    """The modules the registry names (datasets/__init__.py), but the COCO evaluator A2D and JHMDB share, and the
    synthetic generator."""
    entries = datasets._DATASETS.values()
    names = {target.split(':')[0] for entry in entries for target in (entry.build, entry.build_evaluator)
             if isinstance(target, str)} - {'datasets.coco_evaluator'}
    return names | {'datasets.synthetic'}


def test_no_dataset_module_imports_a_sibling(imports):
    modules = dataset_modules()
    assert {'datasets.a2d_sentences', 'datasets.mevis', 'datasets.ref_davis17'} <= modules
    importing = {name: sorted(imports[name] & (modules - {name})) for name in modules}
    assert not {name: targets for name, targets in importing.items() if targets}


def test_the_shared_dataset_modules_import_no_dataset_module(imports):
    modules = dataset_modules()
    shared = [name for name in imports if in_package(name, 'datasets') and name not in modules]
    assert {'datasets.video_expressions', 'datasets.transforms', 'datasets.submission'} <= set(shared)
    importing = {name: sorted(imports[name] & modules) for name in shared}
    assert not {name: targets for name, targets in importing.items() if targets}
