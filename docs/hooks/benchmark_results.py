"""mkdocs hook: publish ``benchmarks/results`` with the site.

The pages link the results files as ``../benchmarks/results/...``, the path that also works on
GitHub. This hook adds those files to the build under that source path and writes them to
``benchmarks/results/`` in the site, so the links resolve (and ``--strict`` checks them) without
a second copy under ``docs/``; the results' Markdown files become pages of their own.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files, InclusionLevel

RESULTS = "benchmarks/results"


def on_files(files: Files, config) -> Files:
    root = Path(config["docs_dir"]).parent
    for path in sorted((root / RESULTS).rglob("*")):
        if not path.is_file():
            continue
        published = path.relative_to(root).as_posix()
        file = File(
            published,
            src_dir=str(root),
            dest_dir=config["site_dir"],
            use_directory_urls=config["use_directory_urls"],
            inclusion=InclusionLevel.NOT_IN_NAV,
        )
        # Where it is written and served is computed from the repository path; the pages find
        # it by the path relative to docs/ (src_uri), read from where it lies (abs_src_path).
        file.dest_uri = file.dest_uri
        file.url = file.url
        file.abs_src_path = str(path)
        file.src_uri = "../" + published
        files.append(file)
    return files
