"""The docs as a reader uses them: marked command blocks run as written, links lead somewhere.

A fenced block preceded by `<!-- doc-test -->` runs (bash), `<!-- doc-test: smoke -->` runs with
each `--config=configs/NAME.py[:ARG]` at its smoke size, and `<!-- doc-test: file=PATH -->` saves
the block as PATH first. A page's blocks run in order in one scratch folder S: S/bigjax is the
repository (the current folder), `/tmp/bigjax` stands for S/tmp, and `pip install` only checks
that what is installed satisfies the files (`--dry-run --no-index`).
"""

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

PAGES = sorted(['README.md', 'experiments/README.md', 'benchmarks/README.md',
                *(str(p.relative_to(REPO)) for p in (REPO / 'docs').glob('*.md'))])
MARKED = re.compile(r'^<!-- doc-test(?::\s*(.*?))? -->\n```(\w*)\n(.*?)^```', re.M | re.S)
FENCE = re.compile(r'^```(\w*)\n(.*?)^```', re.M | re.S)


def marked_blocks(page: str) -> list[tuple[str, str, str]]:
    """(options, language, text) of each marked block of `page`, in order."""
    return [match.groups('') for match in MARKED.finditer((REPO / page).read_text())]


def as_run_here(script: str, options: str, scratch) -> str:
    """A marked bash block as the test runs it (module docstring)."""
    if options == 'smoke':
        script = re.sub(r'--config=(configs/\w+\.py)(?::(\S+))?',
                        lambda m: f'--config={m[1]}:{m[2] + "," if m[2] else ""}smoke', script)
    script = re.sub(r'\bpip install\b', 'pip install --dry-run --no-index', script)
    return script.replace('/tmp/bigjax', str(scratch / 'tmp'))


@pytest.mark.parametrize('page', [p for p in PAGES if marked_blocks(p)])
def test_marked_command_blocks_run_as_written(page, tmp_path):
    (tmp_path / 'bigjax').symlink_to(REPO)
    here = tmp_path / 'bigjax'
    env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # a user's own devices
    env['PATH'] = f'{os.path.dirname(sys.executable)}{os.pathsep}{env["PATH"]}'
    env['PWD'] = str(here)  # so `cd ..` leaves through the link, as from a clone
    blocks = marked_blocks(page)
    for options, _, text in blocks:
        if options.startswith('file='):
            path = tmp_path / options[len('file='):]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for options, language, text in blocks:
        if options.startswith('file='):
            continue
        assert language == 'bash' and options in ('', 'smoke'), (page, options, language)
        script = as_run_here(text, options, tmp_path)
        result = subprocess.run(['bash', '-eo', 'pipefail', '-c', script], cwd=here, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (
            f'{page}: this block failed:\n{text}\n{result.stdout[-2000:]}{result.stderr[-4000:]}')


def test_readme_test_command_is_the_one_ci_runs():
    """README's second quick-start command is what .ci/run runs, exactly."""
    ci_command = (REPO / '.ci' / 'run').read_text().strip().splitlines()[-1]
    assert any(ci_command == text.strip()
               for _, text in FENCE.findall((REPO / 'README.md').read_text())), ci_command


def test_no_command_block_holds_an_unrunnable_form():
    """Bash blocks are commands to paste: no `[--flag=a|b]` alternatives, no OWNER placeholders."""
    for page in PAGES:
        for language, text in FENCE.findall((REPO / page).read_text()):
            if language == 'bash':
                assert not re.search(r'\[--|OWNER|<[A-Z_]+>', text), (page, text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def anchors(path) -> set[str]:
    seen, result = {}, set()
    for heading in re.findall(r'^#{1,6} (.+)$', FENCE.sub('', path.read_text()), re.M):
        base = slug(heading)
        result.add(f'{base}-{seen[base]}' if base in seen else base)
        seen[base] = seen.get(base, 0) + 1
    return result


def test_links_between_pages_lead_to_files_and_headings():
    broken = []
    for page in PAGES:
        path = REPO / page
        text = re.sub(r'`[^`\n]*`', '', FENCE.sub('', path.read_text()))
        for target in re.findall(r'\]\(([^)\s]+)\)', text):
            if re.match(r'[a-z]+:', target):
                continue
            file, _, anchor = target.partition('#')
            linked = (path.parent / file).resolve() if file else path
            if not linked.exists():
                broken.append(f'{page}: {target} (no such file)')
            elif anchor and linked.suffix == '.md' and anchor not in anchors(linked):
                broken.append(f'{page}: {target} (no such heading)')
    assert not broken, '\n'.join(broken)
