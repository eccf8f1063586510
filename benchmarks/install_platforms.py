"""Does a requirements file install on another platform? pip resolves it against the package
index for that platform's wheels (binary only, nothing installed), as a user there would.

pip evaluates environment markers for the machine it runs on, not for --platform, so each
requirement line's marker is evaluated here for the target first (transitive dependencies'
markers are still the host's: a check of wheels, not of every conditional dependency).

python benchmarks/install_platforms.py [--requirements=requirements.txt] [--python=3.11]
    [--platforms='Linux x86-64,Linux aarch64,macOS arm64']
python benchmarks/install_platforms.py --smoke   # the TensorFlow line alone, on each platform
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from packaging.requirements import Requirement

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANYLINUX = [f'manylinux_2_{minor}' for minor in range(39, 16, -1)] + ['manylinux2014']
PLATFORMS = {  # name: (pip's --platform tags; the marker environment)
    'Linux x86-64': ([f'{tag}_x86_64' for tag in MANYLINUX],
                     {'sys_platform': 'linux', 'platform_machine': 'x86_64',
                      'platform_system': 'Linux'}),
    'Linux aarch64': ([f'{tag}_aarch64' for tag in MANYLINUX],
                      {'sys_platform': 'linux', 'platform_machine': 'aarch64',
                       'platform_system': 'Linux'}),
    'macOS arm64': ([f'macosx_{major}_0_arm64' for major in (14, 13, 12, 11)]
                    + ['macosx_11_0_universal2'],
                    {'sys_platform': 'darwin', 'platform_machine': 'arm64',
                     'platform_system': 'Darwin'}),
}


def requirements_for(path: str, environment: dict) -> list[str]:
    """The requirement lines of `path` (and the files its `-r` lines name) whose markers hold in
    `environment`, without their markers and comments."""
    lines = []
    folder = os.path.dirname(os.path.abspath(path))
    with open(path) as file:
        for raw in file:
            line = raw.split(' #')[0].strip()
            if not line or line.startswith('#'):
                continue
            if line.startswith('-r '):
                lines += requirements_for(os.path.join(folder, line[3:].strip()), environment)
                continue
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                requirement.marker = None
                lines.append(str(requirement))
    return lines


def resolve(lines: list[str], tags: list[str], python: str, no_deps: bool) -> tuple[bool, str]:
    """pip's dry-run resolution of `lines` for wheels of `tags` and `python`: (ok, summary). A
    dependency published as source only is built into a wheel here first, as pip would on the
    target; one that is not pure Python then still fails (its wheel is this machine's)."""
    with tempfile.TemporaryDirectory() as folder:
        listed, report, wheels = (os.path.join(folder, name) for name in (
            'requirements.txt', 'report.json', 'wheels'))
        with open(listed, 'w') as file:
            file.write('\n'.join(lines) + '\n')
        command = [sys.executable, '-m', 'pip', 'install', '--dry-run', '--ignore-installed',
                   '--only-binary=:all:', '--implementation=cp', f'--python-version={python}',
                   f'--target={os.path.join(folder, "target")}', f'--report={report}', '-q',
                   f'--find-links={wheels}', *(f'--platform={tag}' for tag in tags),
                   *(['--no-deps'] if no_deps else []), '-r', listed]
        built = []
        while (result := subprocess.run(command, capture_output=True, text=True)).returncode:
            missing = re.search(r'satisfies the requirement (\S+) \(from ', result.stderr)
            if not missing or missing[1] in built or subprocess.run(
                    [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-q', '-w', wheels,
                     missing[1]], capture_output=True).returncode:
                errors = [line for line in result.stderr.splitlines()
                          if line.startswith('ERROR: Could not') or 'No matching' in line]
                return False, ' '.join(errors[:2]) or result.stderr.strip()[-300:]
            built.append(missing[1])
        with open(report) as file:
            installed = json.load(file)['install']
        names = {re.sub(r'[-_.]+', '-', item['metadata']['name'].lower()):
                 item['metadata']['version'] for item in installed}
        shown = ', '.join(f'{name} {names[name]}' for name in ('jaxlib', 'libtpu', 'tensorflow',
                                                                'tensorflow-cpu') if name in names)
        notes = [shown] * bool(shown) + [f'built from source: {", ".join(built)}'] * bool(built)
        return True, f'{len(installed)} packages' + (f' ({"; ".join(notes)})' if notes else '')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--requirements', default='requirements.txt')
    parser.add_argument('--python', default='3.11')
    parser.add_argument('--platforms', default='', help='comma-separated names (default: all): '
                        + ', '.join(PLATFORMS))
    parser.add_argument('--smoke', action='store_true')
    args = parser.parse_args()
    path = os.path.join(REPO, args.requirements)
    print(f'{args.requirements}, CPython {args.python}, binary wheels only'
          f'{" (TensorFlow line, no dependencies)" if args.smoke else ""}')
    failed = False
    for name, (tags, environment) in PLATFORMS.items():
        if args.platforms and name not in args.platforms.split(','):
            continue
        lines = requirements_for(path, {**environment, 'python_version': args.python})
        if args.smoke:
            lines = [line for line in lines
                     if Requirement(line).name in ('tensorflow', 'tensorflow-cpu')]
        start = time.perf_counter()
        ok, summary = resolve(lines, tags, args.python, no_deps=args.smoke)
        failed |= not ok
        seconds = time.perf_counter() - start
        print(f'{name:14s} {"resolves" if ok else "FAILS":8s} {seconds:6.1f} s  {summary}')
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
