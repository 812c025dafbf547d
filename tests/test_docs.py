"""Every command the README and docs/ show in a code block parses with today's flags: the documentation cannot drift
from the command lines it describes. (The quick start is run verbatim on a fresh clone before each release; this
checks the rest on every test run.)"""
import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shown_commands():
    """(file:line, module, argv) of each `python -m bench.X ...` (or `torchrun ... -m bench.X ...`) in a fenced code
    block; a command holding a placeholder `...` is skipped."""
    for doc in DOCS:
        fenced = False
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            if not fenced or "bench." not in line:
                continue
            tokens = shlex.split(line, comments=True)
            segment: list[str] = []
            for tok in [*tokens, "&&"]:
                if tok in ("&&", ";", "||", "|", "&"):
                    if "-m" in segment:
                        i = segment.index("-m")
                        if i + 1 < len(segment) and re.fullmatch(r"bench\.[a-z_]+", segment[i + 1]) \
                                and "..." not in segment:
                            yield f"{doc.relative_to(ROOT)}:{number}", segment[i + 1], segment[i + 2:]
                    segment = []
                else:
                    segment.append(tok)


COMMANDS = list(shown_commands())


class Parsed(Exception):
    pass


def test_the_docs_show_commands():
    modules = {m for _, m, _ in COMMANDS}
    assert {"bench.run", "bench.tune", "bench.ensemble", "bench.report", "bench.predict", "bench.export",
            "bench.distill", "bench.score"} <= modules


def test_every_relative_link_of_the_docs_exists():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
            if not re.match(r"[a-z]+:", target) and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert broken == []


@pytest.mark.parametrize("where,module,argv", COMMANDS, ids=[w for w, _, _ in COMMANDS])
def test_a_documented_command_parses(where, module, argv, monkeypatch, capsys):
    real = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        raise Parsed(real(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    main = importlib.import_module(module).main
    try:
        main(argv)
    except Parsed:
        return
    except SystemExit as e:
        pytest.fail(f"{where}: `python -m {module} {shlex.join(argv)}` does not parse (exit {e.code}): "
                    f"{capsys.readouterr().err.strip()}")
    pytest.fail(f"{where}: `python -m {module}` returned without parsing its arguments")


def test_the_readme_layout_names_every_module_and_script():
    """README's Layout is the map of the code: every module of bench/'s stage packages, zoo/ and scripts/ is named
    in it (it had fallen behind: columns.py, fastpaths.py, precision.py, engines.py, distill_ablation.sh, ...), and
    every bench/*.py is named as a shared module or as a command."""
    text = (ROOT / "README.md").read_text()
    start = text.index("```\nbench/data/")
    block = text[start:text.index("```", start + 3)]
    words = set(re.findall(r"[\w.]+", block))
    folders = [*sorted(p for p in (ROOT / "bench").iterdir() if (p / "__init__.py").is_file()), ROOT / "zoo",
               ROOT / "scripts"]
    missing = [str(f.relative_to(ROOT)) for d in folders for f in sorted(d.iterdir())
               if f.suffix in (".py", ".sh") and f.name != "__init__.py" and f.name not in words]
    missing += [str(f.relative_to(ROOT)) for f in sorted((ROOT / "bench").glob("*.py"))
                if f.name != "__init__.py" and f.name not in words and f.stem not in words]
    assert not missing, f"README's Layout does not name {missing}"
