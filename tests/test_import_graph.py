"""The package's import graph, read from the source: no cycle, and no module imports a layer above its own.

Layers, bottom to top: the layer core (attention, attn_head, gradcam, loss, head, kernels, model, registry, the
package root) and `_files`; `data/`; `hub/`; `viz`; `predict`; the training application `train/`; the command line
(`cli`, `__main__` modules). Imports inside functions count as much as those at the top of a module.
"""
import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

import ggam_layers

PKG = Path(ggam_layers.__file__).resolve().parent
CORE = {'_trace', '_timm_compat', 'attention', 'attn_head', 'closed_form', 'gradcam', 'loss', 'head', 'kernels',
        '_features', 'model', 'registry', 'spatial_guidance', ''}
RANKS = {'core': 0, '_files': 0, '_lock': 0, 'data': 1, 'hub': 2, 'viz': 3, 'predict': 4, 'train': 5, 'cli': 6,
         '__main__': 6}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts = parts[:-1]
    return '.'.join(['ggam_layers', *parts])


def _modules() -> Dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob('*.py')}


def _resolve(name: str, modules: Dict[str, Path]) -> str:
    """The package module an imported name lives in (`ggam_layers.x.y` or its nearest existing parent)."""
    while name not in modules and '.' in name:
        name = name.rsplit('.', 1)[0]
    return name


def import_graph() -> Dict[str, Set[str]]:
    """module -> the package modules it imports (anywhere in its source)."""
    modules = _modules()
    graph: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        is_pkg = path.name == '__init__.py'
        base = name.split('.') if is_pkg else name.split('.')[:-1]
        deps: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    root = '.'.join(base[:len(base) - node.level + 1])
                    mod = f'{root}.{node.module}' if node.module else root
                else:
                    mod = node.module or ''
                # `from . import registry` names a module; `from .x import y` a name of module x
                targets = [f'{mod}.{a.name}' if f'{mod}.{a.name}' in modules else mod for a in node.names]
            for t in targets:
                if t == 'ggam_layers' or t.startswith('ggam_layers.'):
                    dep = _resolve(t, modules)
                    if dep != name:
                        deps.add(dep)
        graph[name] = deps
    return graph


def layer(module: str) -> str:
    """The layer a module belongs to (every `__main__` is an entry point: the top)."""
    if module.endswith('.__main__'):
        return '__main__'
    first = module.split('.')[1] if '.' in module else ''
    return 'core' if first in CORE else first


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle of `graph` as a list of modules (first == last), or [] if there is none."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(n: str) -> List[str]:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        state[n] = 2
        stack.pop()
        return []

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return []


def test_every_module_has_a_layer():
    graph = import_graph()
    assert 'ggam_layers.train.runner' in graph and 'ggam_layers._files' in graph
    unknown = sorted(m for m in graph if layer(m) not in RANKS)
    assert not unknown, f'modules outside every layer (add them to RANKS): {unknown}'


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert not cycle, 'import cycle: ' + ' -> '.join(cycle)


def test_no_module_imports_a_higher_layer():
    graph = import_graph()
    upward = sorted(f'{m} ({layer(m)}) imports {d} ({layer(d)})' for m, deps in graph.items() for d in deps
                    if RANKS[layer(d)] > RANKS[layer(m)])
    assert not upward, 'upward imports:\n' + '\n'.join(upward)


def test_the_core_and_hub_stay_below_the_application():
    graph = import_graph()
    for m, deps in graph.items():
        if layer(m) in ('core', '_files', '_lock'):
            assert not {layer(d) for d in deps} & {'train', 'data', 'hub', 'viz', 'predict', 'cli'}, (m, deps)
        if layer(m) == 'hub':
            assert not any(layer(d) == 'train' for d in deps), (m, deps)
    assert graph['ggam_layers._files'] == set() and graph['ggam_layers._lock'] == set()


@pytest.mark.parametrize('graph, cycle', [
    ({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}, ['a', 'b', 'c', 'a']),
    ({'a': {'b'}, 'b': {'c'}, 'c': set()}, []),
    ({'a': {'a2'}, 'a2': {'b'}, 'b': {'a2'}}, ['a2', 'b', 'a2']),
])
def test_the_cycle_finder_finds_cycles(graph, cycle):
    assert find_cycle(graph) == cycle


def test_the_graph_reader_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert 'ggam_layers.train.runner' in graph['ggam_layers.train.compare']   # from .runner import train
    assert 'ggam_layers.hub' in graph['ggam_layers.viz']                      # `from . import hub` inside a function
    assert 'ggam_layers._files' in graph['ggam_layers.hub.save']              # from .._files import ...
