"""The repository's folders import one another only downward, and never inside a function (issue 17 item 2)."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# A package may import its own modules and the packages of lower layers, never those of its own or a higher layer.
LAYERS = {"modeling_speeder": 0, "metrics": 1, "baselines": 2, "datasets_builder": 3, "trainer": 4, "hub_upload": 5,
          "bench": 5, "scripts": 6}


def project_imports(tree: ast.AST):
    """(node, imported top-level project package, inside a function?) for every absolute import of one."""
    found = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module]
            found.extend((child, name.split(".")[0], in_function) for name in names
                         if name.split(".")[0] in LAYERS)
            visit(child, nested)

    visit(tree, False)
    return found


def test_folders_import_only_lower_layers_and_never_inside_a_function():
    wrong = []
    for package, layer in LAYERS.items():
        for path in sorted((REPO / package).rglob("*.py")):
            for node, imported, in_function in project_imports(ast.parse(path.read_text())):
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                if in_function:
                    wrong.append(f"{where} imports {imported} inside a function")
                elif imported != package and LAYERS[imported] >= layer:
                    wrong.append(f"{where} imports {imported} (layer {LAYERS[imported]}) from layer {layer}")
    assert not wrong, "\n".join(wrong)


def test_the_remote_code_imports_nothing_of_the_repository():
    for path in sorted((REPO / "modeling_speeder").glob("*.py")):
        imported = {name for _, name, _ in project_imports(ast.parse(path.read_text()))}
        assert not imported, f"{path.name} imports {imported}: remote code uses relative imports only"
