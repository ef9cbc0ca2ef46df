"""What the documentation site renders: the API reference's examples, cross-references and names, code widths.

The fast tests run docs/griffe_docstrings.py (the Griffe extension mkdocs.yml
loads) on docstrings; the slow ones build the site once and read its HTML:
no Sphinx role or doctest prompt left as text, the package's names documented
under their public paths above the internals, roles as links to the objects
they name, and every Python line of every page within the code column that
docs/stylesheets/extra.css sets, redone with the built theme's own numbers.
"""

import glob
import html
import importlib.util
import logging
import os
import re
import sys

import griffe
import launcher
import pytest
import yaml
from conftest import REPO

ROLE_TEXT = re.compile(r":(?:func|class|mod|data|meth|attr|exc|obj):")
PRE = re.compile(r"<pre\b.*?</pre>", re.S)


def _extension():
    spec = importlib.util.spec_from_file_location(
        "griffe_docstrings", os.path.join(REPO, "docs", "griffe_docstrings.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load(path, name, extensions=()):
    loader = griffe.GriffeLoader(
        search_paths=[path], docstring_parser="google", extensions=griffe.load_extensions(*extensions)
    )
    return loader.load(name)


EXTENSION = os.path.join(REPO, "docs", "griffe_docstrings.py")


def test_example_title_with_unindented_doctest_becomes_an_examples_section():
    text = "Adds.\n\nArgs:\n    a: One.\n\nExample:\n\n>>> add(1, 2)  # doctest: +SKIP\n3\n>>> for i in range(2):\n...     i\n"
    rewritten = _extension().examples_as_code(text)
    sections = griffe.Docstring(rewritten, parser="google").parse()
    assert [s.kind.value for s in sections] == ["text", "parameters", "examples"]
    assert [kind.value for kind, _ in sections[-1].value] == ["examples"]
    assert sections[-1].value[0][1] == ">>> add(1, 2)\n3\n>>> for i in range(2):\n...     i"
    # Without the rewrite Griffe keeps the title and the prompts as text (what the site showed as block quotes).
    assert [s.kind.value for s in griffe.Docstring(text, parser="google").parse()] == ["text", "parameters", "text"]


def test_other_doctests_are_fenced_and_literals_escaped():
    ext = _extension()
    text = "Runs.\n\n    >>> run()  # doctest: +ELLIPSIS\n    'ok'\n\nMore text.\n"
    assert ext.examples_as_code(text) == "Runs.\n\n    ```pycon\n    >>> run()\n    'ok'\n    ```\n\nMore text."
    fenced = "Shown:\n\n```python\n>>> kept()  # doctest: +SKIP\n```"
    assert ext.examples_as_code(fenced) == fenced
    assert ext.markdown_literals("Args:\n    rounds: >= 1.\n\nLayout::\n\n    a/b\n") == (
        "Args:\n    rounds: \\>= 1.\n\nLayout:\n\n    a/b"
    )


def test_a_multi_line_return_is_one_item_and_rst_literals_and_names_show():
    ext = _extension()
    text = (
        "Builds.\n\nReturns:\n    The new model, masked with ``masks``,\n    not compiled.\n\n"
        "Raises:\n    ValueError: For a bad seed, or\n        bad masks.\n    KeyError: Never.\n"
    )
    rewritten = ext.returns_as_one_item(text)
    sections = griffe.Docstring(rewritten, parser="google").parse()
    assert [item.description for item in sections[1].value] == ["The new model, masked with ``masks``,\nnot compiled."]
    assert [item.annotation for item in sections[2].value] == ["ValueError", "KeyError"]
    # Without the rewrite Griffe reads the continuation as a second returned value (a row of its own).
    assert len(griffe.Docstring(text, parser="google").parse()[1].value) == 2
    # Items of their own stay apart.
    named = "Returns:\n    model (keras.Model): The model.\n    count (int): How many,\n        at most 3."
    assert ext.returns_as_one_item(named) == named
    raises = (
        "Checks.\n\nRaises:\n    ValueError: For a bad seed,\n    or bad masks.\n    tf.errors.UnavailableError: Gone."
    )
    parsed = griffe.Docstring(ext.returns_as_one_item(raises), parser="google").parse()[1].value
    assert [(r.annotation, r.description) for r in parsed] == [
        ("ValueError", "For a bad seed,\nor bad masks."),
        ("tf.errors.UnavailableError", "Gone."),
    ]
    literals = "Writes ``a.keras``\nand ``<name>/b``; see <name> and\n\n    <root>/``kept``\n\n```text\n<fenced>\n```"
    assert ext.code_literals(literals) == (
        "Writes `a.keras`\nand `<name>/b`; see &lt;name&gt; and\n\n    <root>/``kept``\n\n```text\n<fenced>\n```"
    )


def test_roles_resolve_in_scope_to_public_paths_and_unknown_names_warn(tmp_path, caplog):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text('"""See :mod:`pkg.sub`."""\n')
    (tmp_path / "pkg" / "sub.py").write_text(
        "def helper():\n    pass\n\n\n"
        "class Thing:\n    def go(self):\n        pass\n\n"
        '    def stop(self):\n        """After :meth:`go`, :func:`helper`, :class:`~pkg.sub.Thing` and :func:`nowhere`."""\n'
    )
    with caplog.at_level(logging.WARNING):
        pkg = _load(str(tmp_path), "pkg", [EXTENSION])
    stop = pkg.modules_collection.get_member("pkg.sub.Thing.stop").docstring.value
    optional = '<autoref identifier="{}" optional>`{}`</autoref>'
    assert stop == (
        f"After {optional.format('pkg.sub.Thing.go', 'go')}, {optional.format('pkg.sub.helper', 'helper')}, "
        f"{optional.format('pkg.sub.Thing', 'Thing')} and [`nowhere`][nowhere]."
    )
    assert pkg.docstring.value == f"See {optional.format('pkg.sub', 'pkg.sub')}."
    assert [r.getMessage() for r in caplog.records if "nowhere" in r.getMessage()] == [
        "pkg.sub.Thing.stop: :func:`nowhere` names nothing in pkg (the docstring's cross-reference cannot be resolved)"
    ]

    # In lottery_tf, a short name from a module that the package exports links to the public path.
    lottery = _load(REPO, "lottery_tf", [EXTENSION])
    wrap = lottery.modules_collection.get_member("lottery_tf.core.masking.wrap_model").docstring.value
    assert optional.format("lottery_tf.MaskedLayer", "MaskedLayer") in wrap
    assert not ROLE_TEXT.search(wrap) and "doctest:" not in wrap and "\nExamples:\n    >>> " in wrap


# The built site ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    result = launcher.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _text(fragment):
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def _section(page, anchor):
    """The HTML of one documented object: from its heading to the next heading of its level or above."""
    start = page.index(f'id="{anchor}"')
    level = page.rfind("<h", 0, start)
    depth = int(page[level + 2])
    ends = [m.start() for m in re.finditer(rf"<h[1-{depth}][ >]", page[start:])]
    return page[level : start + ends[0]] if ends else page[level:]


def _public():
    package = _load(REPO, "lottery_tf")
    return package, [str(name) for name in package.exports]


@pytest.mark.slow
def test_no_role_or_prompt_is_left_as_text(site):
    pages = sorted(glob.glob(str(site / "**" / "index.html"), recursive=True))
    assert len(pages) >= 10
    for path in pages:
        page = open(path).read()
        assert not ROLE_TEXT.search(page), (path, ROLE_TEXT.search(page))
        outside_code = PRE.sub("", page)
        assert "&gt;&gt;&gt;" not in outside_code and "<blockquote" not in outside_code, path
        assert "doctest:" not in page, path
    for path in [os.path.join(REPO, "README.md"), *glob.glob(os.path.join(REPO, "docs", "*.md"))]:
        assert not ROLE_TEXT.search(open(path).read()), path


@pytest.mark.slow
def test_the_package_names_come_first_with_their_examples_and_links(site):
    page = open(site / "api" / "index.html").read()
    package, exported = _public()
    assert len(exported) >= 20
    internals = page.index('id="internals"')
    for name in exported:
        section = _section(page, f"lottery_tf.{name}")
        assert page.index(f'id="lottery_tf.{name}"') < internals, name
        heading = _text(section[: section.index("</h")]).split()
        assert heading[0].startswith(f"lottery_tf.{name}"), heading
        source = package.members[name].docstring.value
        # Every doctest of the source is a code block here, prompts and all.
        prompts = [line.strip() for line in source.splitlines() if line.strip().startswith(">>>")]
        blocks = "\n".join(
            _text(b) for b in re.findall(r'<div class="language-pycon highlight">(.*?)</div>', section, re.S)
        )
        assert [line for line in blocks.splitlines() if line.startswith(">>>")] == [
            re.sub(r"\s*# doctest:.*", "", p) for p in prompts
        ], name
        # Every role naming an exported object links to its public heading, whatever path the role wrote.
        for target in re.findall(r":(?:func|class|meth|data):`~?([\w.]+)`", source):
            if target.rsplit(".", 1)[-1] in exported:
                assert f'href="#lottery_tf.{target.rsplit(".", 1)[-1]}"' in section, (name, target)
    assert sum('class="language-pycon highlight"' in _section(page, f"lottery_tf.{n}") for n in exported) >= 10
    # The internals are below, under their own paths; cross-references land on headings of this page.
    assert page.index('id="lottery_tf.core.masking"') > internals
    links = re.findall(r'<a class="autorefs autorefs-internal"[^>]*href="#([^"]+)"', page)
    assert len(links) >= 50
    assert all(f'id="{anchor}"' in page for anchor in links)
    # A role naming an object the site does not document is code (its path as the tooltip), not a link.
    assert re.search(r'<span title="lottery_tf\.[\w.]+"><code>\w+</code></span>', page)


# The functions whose "Returns:" descriptions go on over several lines (each once shown as several rows).
ONE_RETURN = [
    "lottery_tf.reinit_control",
    "lottery_tf.load_data",
    "lottery_tf.load_ticket",
    "lottery_tf.core.litert.storage",
    "lottery_tf.core.litert.decode",
    "lottery_tf.core.litert.compare_weights",
    "lottery_tf.core.pruning.prune_to_density",
    "lottery_tf.core.analysis.evaluation.linear_path",
    "lottery_tf.engine.experiment.run",
    "lottery_tf.engine.experiment.check_levels",
    "lottery_tf.engine.experiment.check_store",
    "lottery_tf.core.pruning.random_masks_like",
    "lottery_tf.core.rewind.install_offset_schedule",
]


def _returns_rows(section):
    """The description of each row of a documented object's Returns table, as text."""
    title = section.find('<span class="doc-section-title">Returns:</span>')
    if title < 0:
        return []
    table = section[title : section.index("</table>", title)]
    return [_text(row).strip() for row in re.findall(r'<tr class="doc-section-item">(.*?)</tr>', table, re.S)]


@pytest.mark.slow
def test_each_return_is_one_row_and_rst_literals_are_code(site):
    page = open(site / "api" / "index.html").read()
    for name in ONE_RETURN:
        rows = _returns_rows(_section(page, name))
        assert len(rows) == 1, (name, rows)
    assert _returns_rows(_section(page, "lottery_tf.reinit_control")) == [
        "The new model, masked in place with masks (pruned weights 0.0),\nnot compiled."
    ]
    # No returned value anywhere reads as the continuation of the one above it (a row starting in lower case).
    for anchor in re.findall(r'id="(lottery_tf[\w.]+)"', page):
        rows = _returns_rows(_section(page, anchor))
        assert not any(row[:1].islower() for row in rows[1:]), (anchor, rows)
    # linear_path's <name> is shown (as code), not swallowed as an HTML tag.
    linear = _section(page, "lottery_tf.core.analysis.evaluation.linear_path")
    assert '<code>{"alphas": [...], "batchnorm_statistics": ..., &lt;name&gt;: {"error": [...],' in linear
    for path in glob.glob(str(site / "**" / "index.html"), recursive=True):
        outside_code = re.sub(r"<code\b.*?</code>", "", PRE.sub("", open(path).read()), flags=re.S)
        assert "``" not in outside_code, (path, outside_code[outside_code.find("``") - 100 :][:200])


def _material_numbers(site):
    """The theme's sizes that decide the code column, read from the built stylesheet."""
    css = open(glob.glob(str(site / "assets" / "stylesheets" / "main.*.min.css"))[0]).read()

    def rem(pattern):
        return float(re.search(pattern, css).group(1))

    return {
        "sidebar": rem(r"\.md-sidebar\{[^}]*?width:([\d.]+)rem"),
        "margin": rem(
            r"\.md-sidebar--primary:not\(\[hidden\]\)~\.md-content>\.md-content__inner[^{]*\{margin-left:([\d.]+)rem"
        ),
        "typeset": rem(r"\.md-typeset\{font-size:([\d.]+)rem"),
        "code": rem(r"\.md-typeset code\{[^}]*?font-size:([\d.]+)em"),
        "padding": rem(r"\.md-typeset pre>code\{[^}]*?padding:[\d.]+em ([\d.]+)em"),
        "root": float(re.search(r"html\{[^}]*?font-size:([\d.]+)%", css).group(1)),
        # (window width in px from which it applies, root font size in %)
        "larger": [
            (float(w) * 16, float(p)) for w, p in re.findall(r"min-width:([\d.]+)em\)\{html\{font-size:([\d.]+)%", css)
        ],
    }


# A monospace character's advance: 0.6em (Roboto Mono, Menlo, DejaVu Sans Mono; Consolas is narrower).
CHARACTER_EM = 0.6
SCROLLBAR_PX = 17
DOCS_LINE_LENGTH = 110  # the pages' Python lines (ruff format --line-length 110): what a 1280 px window holds


@pytest.mark.slow
def test_every_python_line_fits_the_code_column(site):
    theme = _material_numbers(site)
    assert theme["root"] == 125.0 and len(theme["larger"]) == 2  # 20 px; 22 and 24 px from 1600 and 2000 px windows
    grid = float(
        re.search(
            r"\.md-grid\s*\{\s*max-width:\s*([\d.]+)rem",
            open(os.path.join(REPO, "docs", "stylesheets", "extra.css")).read(),
        ).group(1)
    )
    config = yaml.safe_load(open(os.path.join(REPO, "mkdocs.yml")))
    assert "toc.integrate" in config["theme"]["features"]  # one sidebar: the contents are in the navigation
    page = open(site / "api" / "index.html").read()
    assert "md-sidebar--secondary" not in page and "md-sidebar--primary" in page

    python_lines = []
    for path in glob.glob(str(site / "**" / "index.html"), recursive=True):
        text = open(path).read()
        languages = re.findall(r'<div class="([^"]*)highlight"', text)
        assert all(lang.startswith("language-") for lang in languages), (path, languages)  # extra.css wraps non-Python
        for block in re.findall(r'<div class="language-(?:python|pycon) highlight">(.*?)</div>', text, re.S):
            python_lines += [(len(line), os.path.relpath(path, site), line) for line in _text(block).splitlines()]
    assert len(python_lines) > 200

    # A 1280 px window (a common laptop's) holds fewer than ruff's 120: the pages' code is formatted to 110.
    for window, least in ((1280, DOCS_LINE_LENGTH), (1366, 120), (1440, 120), (1920, 120), (2560, 120)):
        root = 16 * max([theme["root"]] + [p for w, p in theme["larger"] if window >= w]) / 100
        code_px = theme["typeset"] * theme["code"] * root
        column = min(window - SCROLLBAR_PX, grid * root) - (theme["sidebar"] + 2 * theme["margin"]) * root
        characters = int((column - 2 * theme["padding"] * code_px) / (CHARACTER_EM * code_px))
        assert characters >= least, (window, characters)
        too_long = [f"{page}: {n} characters: {line.strip()[:60]}" for n, page, line in python_lines if n > characters]
        assert not too_long, f"{window} px window: the code column holds {characters}; format these:\n" + "\n".join(
            too_long
        )
