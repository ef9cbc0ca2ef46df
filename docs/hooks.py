"""MkDocs hooks: the committed figures from results/ on the pages, and the flag reference from the absl flags.

Nothing here is written by hand into docs/: ``flags.md`` is generated from the
flag definitions at every build (:func:`flag_reference`), and every PNG under
``results/`` is added to the site at the same path, so a page shows
``../results/<study>/<figure>.png`` exactly as the study's command wrote it.
"""

from __future__ import annotations

import glob
import os
import sys

from mkdocs.structure.files import File

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def flag_reference() -> str:
    """Markdown of every flag of ``python -m lottery_tf.main``: name, default, help, who reads it, identity."""
    sys.path.insert(0, ROOT)
    from absl import flags

    from lottery_tf.engine import config
    from lottery_tf.main import flag_groups  # importing it defines the flags

    defined = {f.name: f for f in flags.FLAGS.get_flags_for_module(sys.modules["lottery_tf.main"])}
    lines = [
        "# Flag reference",
        "",
        "Every flag of `python -m lottery_tf.main`, generated from the flag definitions when the site is built "
        "(`docs/hooks.py`), so it cannot drift from the code; the sections are `--help`'s, in its order "
        "(`--help` lists a few common flags first). *Read by*: the component that uses the flag; a "
        "value other than the default where nothing reads it is refused. *Identity*: part of the hash that "
        "names the run folder.",
        "",
    ]
    for key, title, names in flag_groups():
        if key == "invocation":
            lines += [f"## {title}", "", "| flag | default | meaning |", "|---|---|---|"]
            for name in names:
                flag = defined[name]
                lines.append(
                    f"| `--{name}` | {_cell(flag.default_as_str.strip(chr(39)))} | {_cell(flag.help)} |"
                )
            lines.append("")
            continue
        lines += [
            f"## {title}",
            "",
            "| flag | default | read by | identity | meaning |",
            "|---|---|---|---|---|",
        ]
        for name in names:
            setting, flag = config.SETTING[name], defined[name]
            default = flag.default_as_str if flag.default_as_str not in ("''", '""') else ""
            lines.append(
                f"| `--{name}` | {_cell(default.strip(chr(39)))} | {_cell(setting.reader.description)} | "
                f"{'yes' if setting.identity else ''} | {_cell(flag.help)} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def on_files(files, config):
    files.append(File.generated(config, "flags.md", content=flag_reference()))
    for path in sorted(glob.glob(os.path.join(ROOT, "results", "**", "*.png"), recursive=True)):
        relative = os.path.relpath(path, ROOT)
        files.append(File(relative, ROOT, config["site_dir"], config["use_directory_urls"]))
    return files
