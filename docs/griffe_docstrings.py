"""Griffe extension for the API reference: the docstrings' Sphinx roles and doctests, rendered for the site.

The library's docstrings are Keras-style Google docstrings with two Sphinx
habits that Markdown does not read: roles (``:func:`wrap_model```) and an
``Example:`` title followed by a blank line and unindented ``>>>`` lines
(Google sections need an indented body, so Griffe took the title for text and
Markdown took ``>>>`` for nested block quotes). Before the docstrings are
parsed, when the package is loaded, this extension rewrites their text:

* a role becomes a mkdocstrings cross-reference. The name is resolved as
  Python would in the documented object's scope (its members, its module's
  names and imports, its parents), then as a full path, then as a path below
  a parent package (``config.validate``), then as the one object of that name
  in the package. A name the package exports (``lottery_tf.__all__``) links to
  its public path (``lottery_tf.wrap_model``). A resolved object the site does
  not document renders as code (an optional reference); a name that resolves to
  nothing is logged as a warning and left a plain reference, so the strict
  build fails and names it.
* an ``Example:``/``Examples:`` title with an unindented body becomes an
  indented ``Examples:`` section, which Griffe parses into code blocks; any
  other run of ``>>>`` lines is fenced as ``pycon``. Doctest directives
  (``# doctest: +SKIP``) are dropped from what is shown.
* a ``Returns:``/``Yields:``/``Raises:`` description that goes on over
  several lines is one item. The docstrings write it as Google's style guide does, its
  continuation lines at the first line's indent; Griffe's Google parser reads
  each such line as another returned value (a row each). A continuation line
  is indented under its item, unless it starts an item of its own
  (``name (type): ...``).
* reStructuredText's double backticks become Markdown's single ones, and a
  ``<name>`` outside code is escaped, so that it shows as text instead of
  being taken for an HTML tag.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(func|class|mod|data|meth|attr|exc|obj|const):`(~?)\.?([^`]+?)(?:\(\))?`")
SECTION_TITLE = re.compile(r"[A-Z][A-Za-z ]{1,40}:\s*")
EXAMPLES_TITLE = re.compile(r"Examples?:\s*")
DOCTEST_DIRECTIVE = re.compile(r"\s*#\s*doctest:\s*[+-][A-Z_]+(?:\s*,\s*[+-][A-Z_]+)*\s*$")
# A ">" (not a ">>>" prompt) at the start of a line or of an item's description: "rounds: >= 1.".
LEADING_ANGLE = re.compile(r"^(\s*(?:[A-Za-z_*][\w, *]*(?: \([^)]*\))?: )?)>(?!>>)")
RETURNS_TITLE = re.compile(r"(?:Returns|Yields|Raises):\s*")
# A line that starts an item of its own: "name: ...", "name (type): ...", "(type): ...", "errors.Error: ...".
RETURN_ITEM = re.compile(r"(?:[\w.]+\s*)?(?:\([^)]*\)\s*)?:\s")
RST_LITERAL = re.compile(r"(?<!`)``(?!`)((?:(?!``)[^`])+?)(?<!`)``(?!`)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
ANGLE_NAME = re.compile(r"<(/?[A-Za-z_][\w.-]*)>")
PUBLIC_PACKAGE = "lottery_tf"
LOG = griffe.get_logger("griffe_docstrings")


def _is_prompt(line: str) -> bool:
    stripped = line.lstrip()
    return stripped.startswith(">>>") or stripped.startswith("...")


def _without_directive(line: str) -> str:
    return DOCTEST_DIRECTIVE.sub("", line) if _is_prompt(line) else line


def examples_as_code(text: str) -> str:
    """Rewrites a docstring's doctests so that they render as code.

    Args:
        text: A cleaned (dedented) docstring.

    Returns:
        The docstring with every ``Example:``/``Examples:`` title whose body is
        not indented turned into an indented ``Examples:`` section, every other
        run of ``>>>`` lines outside a fence and outside an ``Examples:``
        section fenced as ``pycon``, and doctest directives removed.
    """
    lines = text.splitlines()
    out: list[str] = []
    fence = False
    section = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            fence = not fence
        if fence or line.lstrip().startswith("```"):
            out.append(line)
            i += 1
            continue
        if SECTION_TITLE.fullmatch(line):
            section = line.strip()
        if EXAMPLES_TITLE.fullmatch(line):
            body = i + 1
            while body < len(lines) and not lines[body].strip():
                body += 1
            if body < len(lines) and not lines[body].startswith(" "):
                end = body
                while end < len(lines) and not SECTION_TITLE.fullmatch(lines[end]):
                    end += 1
                while end > body and not lines[end - 1].strip():
                    end -= 1
                out.append("Examples:")
                out += ["    " + _without_directive(row) if row.strip() else "" for row in lines[body:end]]
                out += [row for row in lines[end : end + 1] if not row.strip()] if end < len(lines) else []
                section = "Examples:"
                i = end
                continue
        if line.lstrip().startswith(">>>") and not (section.startswith("Example") and line.startswith(" ")):
            indent = line[: len(line) - len(line.lstrip())]
            end = i
            while end < len(lines) and lines[end].strip() and lines[end].startswith(indent):
                end += 1
            out.append(f"{indent}```pycon")
            out += [_without_directive(row) for row in lines[i:end]]
            out.append(f"{indent}```")
            i = end
            continue
        out.append(_without_directive(line) if section.startswith("Example") else line)
        i += 1
    return "\n".join(out)


def markdown_literals(text: str) -> str:
    """Rewrites the reStructuredText habits Markdown misreads, outside fences and doctests.

    Args:
        text: A cleaned (dedented) docstring.

    Returns:
        The docstring with a ``>`` that starts a line or an item's description
        (``rounds: >= 1.``) escaped, so that it is not read as a block quote,
        and a paragraph's closing ``::`` before an indented literal block
        written as RST shows it (``Layout::`` as ``Layout:``; Markdown already
        shows the indented block as code).
    """
    lines = text.splitlines()
    out: list[str] = []
    fence = False
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fence = not fence
        if fence or line.lstrip().startswith("```") or _is_prompt(line):
            out.append(line)
            continue
        line = LEADING_ANGLE.sub(r"\1\\>", line)
        following = next((row for row in lines[i + 1 :] if row.strip()), "")
        blank_after = i + 1 < len(lines) and not lines[i + 1].strip()
        indent = len(line) - len(line.lstrip())
        if line.rstrip().endswith("::") and blank_after and len(following) - len(following.lstrip()) > indent:
            line = "" if line.strip() == "::" else line.rstrip()[:-1]  # "Layout::" shows "Layout:"
        out.append(line)
    return "\n".join(out)


def returns_as_one_item(text: str) -> str:
    """Indents the continuation lines of every ``Returns:``/``Yields:``/``Raises:`` item under its first line.

    Args:
        text: A cleaned (dedented) docstring.

    Returns:
        The docstring with each line of a ``Returns:``/``Yields:``/``Raises:`` section that
        is at the section's indent, follows a line of the same item (no blank
        line between) and does not start an item of its own (``name: ...``,
        ``name (type): ...``) indented four more spaces, so that Griffe's
        Google parser reads it as the item's continuation, not as a returned
        value of its own.
    """
    lines = text.splitlines()
    out: list[str] = []
    section = False
    base = None
    for line in lines:
        if line.strip() and not line.startswith(" "):
            section = bool(RETURNS_TITLE.fullmatch(line))
            base = None
            out.append(line)
            continue
        if section and line.strip():
            indent = len(line) - len(line.lstrip())
            if base is None:
                base = indent
            elif indent == base and out[-1].strip() and not RETURN_ITEM.match(line.lstrip()):
                line = " " * 4 + line
        out.append(line)
    return "\n".join(out)


def _outside_code(text: str, rewrite, inline: bool = True) -> str:
    """``rewrite`` applied to the parts of ``text`` outside code: fences, doctests, indented blocks, inline code.

    An indented block is a paragraph indented four spaces or more (eight in a
    section, whose items are indented four), which Markdown shows as code.
    Inline code is left only with ``inline``.
    """
    out: list[str] = []
    fence = block = section = False
    paragraph: list[str] = []

    def flush():
        if paragraph:
            joined = "\n".join(paragraph)
            pieces, last = [], 0
            for match in INLINE_CODE.finditer(joined) if inline else ():
                pieces += [rewrite(joined[last : match.start()]), match.group(0)]
                last = match.end()
            out.append("".join(pieces) + rewrite(joined[last:]))
            paragraph.clear()

    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        if not line.strip():
            block = False
        elif not fence and not paragraph and (not out or not out[-1].strip()):
            block = indent >= (8 if section else 4)  # an indented code block starts after a blank line
        if line.strip() and not indent and not fence:
            if SECTION_TITLE.fullmatch(line):
                flush()
            section = bool(SECTION_TITLE.fullmatch(line))
        if line.lstrip().startswith("```"):
            flush()
            fence = not fence
            out.append(line)
        elif fence or block or _is_prompt(line) or not line.strip():
            flush()
            out.append(line)
        else:
            paragraph.append(line)
    flush()
    return "\n".join(out)


def code_literals(text: str) -> str:
    """Rewrites RST literals and angle-bracketed names for Markdown, outside fences and doctests.

    Args:
        text: A cleaned (dedented) docstring.

    Returns:
        The docstring with every reStructuredText literal (two backticks on
        each side) written with one backtick on each side, Markdown's inline
        code (a literal holding a backtick is kept), and every ``<name>``
        outside code escaped as ``&lt;name&gt;``, which Markdown would
        otherwise pass on as an HTML tag the page does not show.
    """
    text = _outside_code(text, lambda part: RST_LITERAL.sub(r"`\1`", part), inline=False)
    return _outside_code(text, lambda part: ANGLE_NAME.sub(r"&lt;\1&gt;", part))


class _Resolver:
    def __init__(self, package: griffe.Module):
        self.package = package
        self.by_name: dict[str, set[str]] = {}
        self.public: dict[str, str] = {}
        for obj in _objects(package):
            self.by_name.setdefault(obj.name, set()).add(obj.path)
        if package.path == PUBLIC_PACKAGE:
            for name in package.exports or ():
                name = name if isinstance(name, str) else getattr(name, "name", str(name))
                if target := self.canonical(f"{PUBLIC_PACKAGE}.{name}"):
                    self.public[target] = f"{PUBLIC_PACKAGE}.{name}"

    def lookup(self, path: str):
        try:
            return self.package.modules_collection.get_member(path)
        except (KeyError, ValueError, AttributeError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None

    def canonical(self, path: str) -> str | None:
        """The path where ``path``'s object is defined, or None if it is not in the loaded package."""
        obj = self.lookup(path)
        if obj is None:
            return None
        try:
            while obj.is_alias:
                obj = obj.final_target
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
        return obj.path

    def resolve(self, scope, name: str) -> str | None:
        """The canonical path of ``name`` as written in ``scope``'s docstring, or None."""
        head, _, rest = name.partition(".")
        candidates = []
        try:
            resolved = scope.resolve(head)
            candidates.append(f"{resolved}.{rest}" if rest else resolved)
        except (griffe.NameResolutionError, AttributeError, KeyError):
            pass
        candidates.append(name)
        parent = scope.module
        while parent is not None:
            candidates.append(f"{parent.path}.{name}")
            parent = parent.parent
        for candidate in candidates:
            if found := self.canonical(candidate):
                return found
        paths = {self.canonical(p) for p in self.by_name.get(name.rsplit(".", 1)[-1], ())}
        paths = {p for p in paths if p and p.endswith("." + name)}
        return paths.pop() if len(paths) == 1 else None

    def reference(self, scope, role: str, short: str, name: str) -> str:
        shown = name.rsplit(".", 1)[-1] if short else name
        target = self.resolve(scope, name)
        if target is None:
            LOG.warning(
                "%s: :%s:`%s` names nothing in %s (the docstring's cross-reference cannot be resolved)",
                scope.path,
                role,
                name,
                self.package.path,
            )
            return f"[`{shown}`][{name}]"
        identifier = self.public.get(target, target)
        return f'<autoref identifier="{identifier}" optional>`{shown}`</autoref>'


def _objects(obj):
    """Every object defined (not imported) in ``obj``, ``obj`` included."""
    seen = set()
    stack = [obj]
    while stack:
        current = stack.pop()
        if current.is_alias or current.path in seen:
            continue
        seen.add(current.path)
        yield current
        stack.extend(current.members.values())


def roles_as_references(text: str, scope, resolver: _Resolver) -> str:
    """Rewrites the Sphinx roles of one docstring as mkdocstrings cross-references (see the module's docstring)."""
    return ROLE.sub(lambda m: resolver.reference(scope, m.group(1), m.group(2), m.group(3).strip()), text)


class SphinxRolesAndDoctests(griffe.Extension):
    """Rewrites every docstring of a loaded package: roles as cross-references, doctests as code."""

    def on_package(self, *, pkg, **kwargs) -> None:
        resolver = _Resolver(pkg)
        for obj in _objects(pkg):
            if obj.docstring is not None and obj.docstring.value:
                text = code_literals(
                    returns_as_one_item(markdown_literals(examples_as_code(obj.docstring.value)))
                )
                obj.docstring.value = roles_as_references(text, obj, resolver)

    # Griffe 1 names the same event on_package_loaded.
    on_package_loaded = on_package
